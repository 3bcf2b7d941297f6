"""The proxy on the postcopy-preempt channel, between two real QEMU 7.2 (`-M none`, 16 MiB).

The source's RAM holds random pages (`-device loader`); both sides have postcopy-ram and
postcopy-preempt; the source migrates to an in-process `Proxy(preempt=True)` that forwards
to the destination, switches to postcopy at once with a 64 KiB/s push, and HMP `xp` on the
destination reads pages the push has not reached: each read is a page request, and QEMU's
source sends the page on its second connection as a bare RAM record ("ram" names the
block: 8 + 1 + 3 + 4096 = 4108 bytes).  What is checked is what QEMU does:

- a net.reset armed on the 3rd RAM_PAGE of the preempt channel acts exactly at the end
  of that record (offset 3 x 4108), on that connection alone; QEMU pauses both sides;
  migrate-recover then `migrate resume=true` open a new main and a new preempt connection
  through the proxy, in that order, and the migration completes with the source's memory;
- a net.corrupt armed on the preempt channel changes one byte of the next page's payload
  there, and QEMU places that page with exactly that byte changed (no checksum);
- a recording (`record=`) keeps the preempt channel in stream.preempt.bin, and
  `harness analyze` reads it with the main stream: the requested pages, at the addresses
  read, EOS last, and the RAM of both files together is the source's, byte for byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.analyze import analyze_file
from harness.faults.proxy import Proxy
from harness.qemu import QemuProcess, read_phys
from tests.qemu_env import COMMON, QEMU_MARKS, USERFAULTFD_MARK

pytestmark = [*QEMU_MARKS, USERFAULTFD_MARK]
MiB = 1 << 20
SIZE = 16 * MiB
WAIT = 30.0
RECORD = 8 + 1 + len("ram") + 4096  # a PAGE record naming its block, on the preempt channel
CAPS = [{"capability": name, "state": True}
        for name in ("postcopy-ram", "postcopy-preempt", "events")]
#: pages far ahead of a 64 KiB/s push (it starts at the bottom of RAM)
TOUCHED = [0xF00000, 0xE01000, 0xD02000, 0xC03000]


def _until(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _status(qemu: QemuProcess) -> str:
    return str(qemu.qmp.execute("query-migrate").get("status"))


def _xp(qemu: QemuProcess, addr: int) -> bytes:
    out = qemu.qmp.hmp(f"xp /8xb {addr:#x}")
    return bytes(int(tok, 16) for tok in out.split(":", 1)[1].split())


@dataclass
class Pair:
    src: QemuProcess
    dst: QemuProcess
    proxy: Proxy
    image: np.ndarray
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [data for event, data in self.events if event == name]

    def finish(self, tmp_path: Path) -> None:
        """Let the push go, wait for both ends, compare the destination's RAM."""
        self.src.qmp.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 1 << 30})
        _until(lambda: _status(self.src) in ("completed", "failed"), "the source's end")
        assert _status(self.src) == "completed", self.src.qmp.execute("query-migrate")
        _until(lambda: _status(self.dst) == "completed", "the destination completed")
        dump = np.frombuffer(read_phys(self.dst.qmp, 0, SIZE, tmp_path), dtype=np.uint8)
        assert np.array_equal(dump, self.image), "the destination's RAM differs"


@contextmanager
def qemu_pair(tmp_path: Path, record: Path | None = None) -> Iterator[Pair]:
    """Two QEMUs in postcopy with preempt, through the proxy; all closed and reaped."""
    image = np.frombuffer(np.random.default_rng(15).bytes(SIZE), dtype=np.uint8)
    (tmp_path / "ram.bin").write_bytes(image.tobytes())
    src = QemuProcess([*COMMON, "-device", f"loader,file={tmp_path / 'ram.bin'},addr=0x0"],
                      tmp_path, name="src")
    dst = QemuProcess([*COMMON, "-incoming", "defer"], tmp_path, name="dst")
    proxy: Proxy | None = None
    try:
        src.start()
        dst.start()
        for qemu in (src, dst):  # the destination before migrate-incoming (P1)
            qemu.qmp.execute("migrate-set-capabilities", {"capabilities": CAPS})
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = dst.qmp.execute("query-migrate")["socket-address"][0]["port"]
        pair = Pair(src, dst, None, image)  # type: ignore[arg-type]

        def emit(name: str, data: dict[str, Any]) -> None:
            with pair.lock:
                pair.events.append((name, data))

        proxy = pair.proxy = Proxy("tcp:127.0.0.1:0", f"tcp:127.0.0.1:{port}", seed=15,
                                   emit=emit, record=record, preempt=True)
        proxy.start()
        src.qmp.execute("migrate-set-parameters", {"max-bandwidth": MiB,
                                                   "max-postcopy-bandwidth": 64 * 1024})
        src.qmp.execute("migrate", {"uri": proxy.address})
        _until(lambda: _status(src) == "active", "the source active")
        src.qmp.execute("migrate-start-postcopy")
        _until(lambda: _status(dst) == "postcopy-active", "the destination in postcopy")
        yield pair
    finally:
        for qemu in (src, dst):
            qemu.close()
        if proxy is not None:
            proxy.close()


def _sessions(pair: Pair) -> list[tuple[int, str]]:
    return [(s["n"], s["channel"]) for s in pair.named("SESSION") if s["event"] == "accepted"]


def test_a_reset_on_the_third_preempt_page_pauses_qemu_and_recovery_reopens_both(tmp_path):
    with qemu_pair(tmp_path) as pair:
        pair.proxy.arm("cut", {"frame": "RAM_PAGE", "channel": "preempt", "count": 3},
                       {"kind": "net.reset", "channel": "preempt"})
        for addr in TOUCHED[:3]:  # each read waits for its page: the third is the cut
            assert _xp(pair.dst, addr) == pair.image[addr:addr + 8].tobytes()
        _until(lambda: _status(pair.src) == "postcopy-paused", "the source paused")
        _until(lambda: _status(pair.dst) == "postcopy-paused", "the destination paused")

        [wire] = pair.named("WIRE")
        assert (wire["channel"], wire["frame"], wire["count"]) == ("preempt", "RAM_PAGE", 3)
        [fault] = pair.named("FAULT")
        assert (fault["kind"], fault["flow"], fault["offset"]) == ("net.reset", "preempt",
                                                                   3 * RECORD)
        assert fault["session"] == 2 and _sessions(pair) == [(1, "main"), (2, "preempt")]
        closed = {s["n"]: s["reason"] for s in pair.named("SESSION") if s["event"] == "closed"}
        assert closed[2] == "net.reset (cut)"

        pair.dst.qmp.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
        [address] = pair.dst.qmp.execute("query-migrate")["socket-address"]
        pair.proxy.set_target(f"tcp:127.0.0.1:{address['port']}")
        pair.src.qmp.execute("migrate", {"uri": pair.proxy.address, "resume": True})
        _until(lambda: _status(pair.src) == "postcopy-active", "the source resumed")
        assert _xp(pair.dst, TOUCHED[3]) == pair.image[TOUCHED[3]:TOUCHED[3] + 8].tobytes()
        assert _sessions(pair) == [(1, "main"), (2, "preempt"), (3, "main"), (4, "preempt")]
        pair.finish(tmp_path)
        sessions = {s["n"]: s for s in pair.proxy.query()["sessions"]["list"]}
        assert sessions[4]["main"] == 3 and sessions[3]["preempt"] == 4
        assert sessions[4]["forwarded"]["preempt"] >= RECORD + 8  # a page, then EOS


def test_a_recorded_preempt_channel_is_analysed_with_its_main_stream(tmp_path):
    record = tmp_path / "rec"
    record.mkdir()
    with qemu_pair(tmp_path, record) as pair:
        for addr in TOUCHED:
            assert _xp(pair.dst, addr) == pair.image[addr:addr + 8].tobytes()
        pair.finish(tmp_path)
        _until(lambda: pair.proxy.query()["sessions"]["active"] == 0, "both sessions closed")
        stats = pair.proxy.query()
        pair.proxy.close()  # the recording's files are complete
    assert stats["frames"]["preempt"] == {"RAM_EOS": 1, "RAM_PAGE": len(TOUCHED)}
    preempt_bytes = stats["bytes"]["preempt"]
    assert preempt_bytes["received"] == preempt_bytes["forwarded"]
    # each record names its block, or continues the one before it (QEMU 7.2 sends that too
    # when two requested pages follow each other on the channel): 4 bytes ("\x03ram") less
    short = len(TOUCHED) * RECORD + 8 - preempt_bytes["received"]
    assert short % 4 == 0 and 0 <= short // 4 < len(TOUCHED), preempt_bytes
    capture = record / "stream.preempt.bin"
    assert capture.stat().st_size == preempt_bytes["forwarded"]

    analysis = analyze_file(record / "stream.fwd.bin", record / "stream.rp.bin",
                            preempt=capture)
    pre = analysis.preempt
    assert pre is not None
    assert pre["blocks"]["ram"]["offsets"] == TOUCHED
    assert (pre["records"], pre["blocks"]["ram"]["normal"]) == (len(TOUCHED), len(TOUCHED))
    assert pre["eos"] == [capture.stat().st_size - 8] and pre["trailing"] == 0
    # the pages only the preempt channel carried complete the main stream's RAM
    assert np.array_equal(analysis.ram["ram"], pair.image)
    requested = [m["start"] for m in analysis.return_path or []
                 if m["name"] in ("REQ_PAGES", "REQ_PAGES_ID")]
    assert requested == TOUCHED


def test_a_corrupted_preempt_page_loads_with_that_one_byte_changed(tmp_path):
    """QEMU's format has no checksum: the page is placed with the byte the proxy changed."""
    with qemu_pair(tmp_path) as pair:
        pair.proxy.arm("flip", None, {"kind": "net.corrupt", "channel": "preempt"})
        addr = TOUCHED[0]
        _xp(pair.dst, addr)
        [fault] = pair.named("FAULT")
        detail = fault["detail"]
        assert (fault["flow"], fault["frame"], detail["page"]) == ("preempt", "RAM_PAGE",
                                                                   f"ram@0x{addr:x}")
        assert detail["frame-start"] == 0 and detail["where"] == "payload"
        at = addr + detail["offset"] - (RECORD - 4096)  # the payload follows the header
        assert pair.image[at] == detail["old"] != detail["new"]
        pair.src.qmp.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 1 << 30})
        _until(lambda: _status(pair.dst) == "completed", "the destination completed")
        dump = np.frombuffer(read_phys(pair.dst.qmp, 0, SIZE, tmp_path), dtype=np.uint8)
        assert np.flatnonzero(dump != pair.image).tolist() == [at]
        assert dump[at] == detail["new"]
