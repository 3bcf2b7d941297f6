"""XBZRLE and compressed pages against a real QEMU 7.2, both ways.

Strategy: (1) a harness source with a hot-set workload, `xbzrle` and `compress` on both
sides (QEMU 7.2's rule: compressed pages in the first round, XBZRLE deltas after it),
migrates to a real `qemu-system-x86_64 -M none -incoming defer`; the runner compares
QEMU's memory (pmemsave) with the source's.  (2) A real QEMU source with `compress`
migrates to a harness destination, which inflates its pages with its decompress
threads.  (3) XBZRLE from a real QEMU: `-M none` has no CPU to dirty memory between
passes, so the source is a paused `-M microvm` whose RAM the test rewrites through the
qtest protocol while the migration runs (`pause-before-switchover` holds the end, so
nothing is written after the last sync); the stream goes to a file and is loaded by the
harness's loader (the one its destination runs -- microvm's devices are beyond the
harness destination's own), which must give QEMU's memory, and every XBZRLE record
QEMU wrote must be byte for byte what the harness encoder writes for the same pages.
"""

from __future__ import annotations

import socket
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from harness.protocol import RamPages, StreamDecoder, xbzrle
from harness.protocol.constants import RamFlag
from harness.qemu import QemuProcess, pmemsave, wait_migration
from tests.e2e.test_scenarios import run
from tests.qemu_env import QEMU_MARKS

pytestmark = [*QEMU_MARKS]

PAGE = 4096
MiB = 1 << 20

TO_QEMU = """
name: xbzrle-compress-to-qemu
seed: 5
timeout: 60s
guest:
  memory: 16MiB
  fill: 0.25
  content: compressible
  workload: {dirty-rate: 16MiB/s, pattern: hotset, hotset: 4MiB}
  devices: [timer, globalstate]
destination: {kind: qemu}
transport: tcp
capabilities: {xbzrle: true, compress: true}
parameters: {max-bandwidth: 8MiB, downtime-limit: 20, xbzrle-cache-size: 8MiB,
             compress-threads: 2, decompress-threads: 2}
steps:
  - {name: give-up, on: {pass: 6}, do: {migrate-set-parameters: {downtime-limit: 2000}}}
expect: {source: completed, destination: completed, memory: identical,
         guest-runs-on: destination}
"""

FROM_QEMU = """
name: compressed-from-qemu
seed: 6
timeout: 60s
guest:
  memory: 16MiB
  fill: 0.5
  content: compressible
  devices: [timer, globalstate]
source: {kind: qemu}
transport: tcp
capabilities: {compress: true}
parameters: {compress-threads: 2, decompress-threads: 3}
expect: {source: completed, destination: completed, memory: identical,
         guest-runs-on: destination}
"""


def _run_one(tmp_path: Path, text: str, *extra: str) -> dict[str, Any]:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    code, report, output = run(path, tmp=tmp_path, extra=extra)
    assert code == 0, output
    [sc] = report["scenarios"]
    assert sc["verdict"] == "pass", sc["reason"]
    assert {i["name"]: i["ok"] for i in sc["invariants"]}["memory-identical"] is True
    return sc


def test_real_qemu_destination_loads_our_xbzrle_and_compressed_pages(tmp_path):
    sc = _run_one(tmp_path, TO_QEMU)
    stats = sc["stats"]  # our source's: the records it framed went to QEMU
    assert stats["compression"]["pages"] > 0, stats
    assert stats["xbzrle-cache"]["pages"] > 0, stats
    assert sc["destination"]["status"] == "completed"


def test_harness_destination_inflates_a_real_qemu_sources_pages(tmp_path):
    sc = _run_one(tmp_path, FROM_QEMU, "--record")
    assert sc["stats"]["compression"]["pages"] > 0, sc["stats"]  # QEMU's own counters
    kinds = _record_kinds((Path(sc["workdir"]) / "stream.fwd.bin").read_bytes())
    assert kinds.get(int(RamFlag.COMPRESS_PAGE), 0) > 0, kinds


def _record_kinds(data: bytes) -> dict[int, int]:
    decoder = StreamDecoder(ram="discard", skip_unknown_devices=True)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    counts: dict[int, int] = {}
    for event in decoder.events():
        if isinstance(event, RamPages):
            for kind in event.kinds.tolist():
                counts[kind] = counts.get(kind, 0) + 1
    return counts


# ---------------------------------------------------------------------------- QEMU's XBZRLE
MICROVM = ["-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
           "-M", "microvm", "-m", "16", "-S"]
HOT = 0x200000  # 64 pages rewritten while the migration runs
BIOS = (0xA0000, 0x100000)  # pmemsave reads the BIOS there, not the RAM under it


class QTest:
    """QEMU's qtest text protocol on a unix socket: `writeq ADDR VALUE` -> OK."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")

    def __call__(self, command: str) -> None:
        self.file.write(command.encode() + b"\n")
        self.file.flush()
        reply = self.file.readline()
        assert reply.startswith(b"OK"), (command, reply)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _migrate_while_writing(qmp: Any, qtest: QTest, stream: Path) -> dict[str, Any]:
    qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": c, "state": True} for c in ("xbzrle", "pause-before-switchover")]})
    qmp.execute("migrate-set-parameters", {"max-bandwidth": MiB, "downtime-limit": 1})
    qtest("memset 0x400000 0x100000 0x5a")  # a bulk pass longer than one 100 ms window
    qmp.execute("migrate", {"uri": f"exec:cat > {stream}"})
    deadline = time.monotonic() + 30
    n = 0
    while qmp.execute("query-migrate")["status"] in ("setup", "active"):
        assert time.monotonic() < deadline, "QEMU's migration never reached its end"
        for _ in range(64):  # a different word of each hot page, each round
            qtest(f"writeq {HOT + n % 64 * PAGE + 8 * (n // 64 % 512):#x} "
                  f"{n * 0x9E3779B97F4A7C15 % (1 << 64):#x}")
            n += 1
    assert qmp.execute("query-migrate")["status"] == "pre-switchover"
    qmp.execute("migrate-continue", {"state": "pre-switchover"})  # the last sync is next
    return wait_migration(qmp)


def test_qemu_xbzrle_records_are_ours_byte_for_byte(tmp_path):
    sock, stream, dump = tmp_path / "qtest.sock", tmp_path / "s.bin", tmp_path / "mem.bin"
    qemu = QemuProcess([*MICROVM, "-qtest", f"unix:{sock},server=on,wait=off",
                        "-qtest-log", "/dev/null"], tmp_path, name="microvm")
    try:
        qemu.start()
        qtest = QTest(sock)
        try:
            info = _migrate_while_writing(qemu.qmp, qtest, stream)
        finally:
            qtest.close()
        assert info["status"] == "completed", info
        assert info["xbzrle-cache"]["pages"] > 0, info
        pmemsave(qemu.qmp, 0, 16 * MiB, dump)
    finally:
        qemu.close()
    data = stream.read_bytes()
    checked = _check_every_delta(data)
    assert checked > 0, "QEMU sent no XBZRLE record"
    decoder = StreamDecoder(skip_unknown_devices=True)  # the destination's loader
    decoder.receive_data(data)
    decoder.receive_data(b"")
    decoder.events()
    ram = decoder.ram["microvm.ram"].copy()
    guest = np.fromfile(dump, dtype=np.uint8)
    ram[BIOS[0]:BIOS[1]] = guest[BIOS[0]:BIOS[1]]
    bad = np.flatnonzero((ram.reshape(-1, PAGE) != guest.reshape(-1, PAGE)).any(axis=1))
    assert bad.size == 0, f"pages differing from QEMU's memory: {bad[:8].tolist()}"


def _check_every_delta(data: bytes) -> int:
    """Replay the page records in stream order; each XBZRLE delta must be what our
    encoders make of the page before and after it.  Returns the deltas checked."""
    decoder = StreamDecoder(ram="discard", skip_unknown_devices=True)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    pages: dict[tuple[str, int], bytes] = {}
    checked = 0
    for event in decoder.events():
        if not isinstance(event, RamPages):
            continue
        assert event.spans is not None
        for addr, kind, (_, start, end) in zip(event.offsets.tolist(), event.kinds.tolist(),
                                               event.spans.tolist()):
            key, body = (event.block, addr), data[start:end]
            if kind == RamFlag.ZERO:
                pages[key] = bytes([body[0]]) * PAGE
            elif kind == RamFlag.PAGE:
                pages[key] = body
            elif kind == RamFlag.COMPRESS_PAGE:
                pages[key] = zlib.decompress(body[4:])
            elif kind == RamFlag.XBZRLE:
                delta = body[3:3 + int.from_bytes(body[1:3], "big")]
                new = bytearray(pages[key])
                xbzrle.decode(delta, new)
                old = np.frombuffer(pages[key], np.uint8)[None]
                assert xbzrle.encode_pages(old, np.frombuffer(bytes(new), np.uint8)[None]) \
                    == [delta], f"{key}: QEMU's delta {delta.hex()}"
                pages[key] = bytes(new)
                checked += 1
    return checked

