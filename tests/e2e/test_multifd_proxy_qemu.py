"""multifd through the proxy between two real QEMU 7.2: the shipped fault scenarios of
scenarios/qemu-7.2/multifd-{reset-channel,blackhole-channel,corrupt-header}.yaml, run as a
user runs them (`harness run FILE --json OUT`).

Each is a QEMU -> QEMU precopy with 2 multifd channels (-M none, 16 MiB) and one fault on
one multifd channel, named by its MultifdInit id.  What is checked is what QEMU 7.2 does
and what the oracle makes of it: the destination hangs in `active` with QMP dead (its main
thread waits in multifd_recv_sync_main for a SYNC that never comes), the verdict is fail
naming peer-responsive at the deadline, the source ends as the description says, the fault
is in the report on the channel it names, and the proxy put every connection where QEMU
expects it (main first, then the two channels, each named by its init).

And a clean run through an in-process `Proxy(multifd=2)` with zlib: QEMU completes with the
source's RAM, `query-proxy` counts per channel the packets, pages and one SYNC packet per
RAM section (as many as the main stream's RAM EOS markers), and the recording (stream.fwd.bin + stream.multifd-ID.bin) read by
`harness analyze` gives the source's RAM byte for byte; a `{frame: MULTIFD_PACKET, channel:
multifd-1, count: 2}` trigger fires exactly at the end of that channel's second packet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.analyze import analyze_file
from harness.faults.proxy import Proxy
from harness.protocol.multifd import HEADER_SIZE, INIT_SIZE, PacketHeader
from harness.qemu import QemuProcess, read_phys
from tests.conftest import REPO
from tests.qemu_env import COMMON, QEMU_MARKS

pytestmark = QEMU_MARKS

HANG = ("peer-responsive: the destination (qemu) stopped answering QMP in status active "
        "(no reply to query-status within 1 s at the 5 s deadline; its main thread is "
        "blocked in futex()")
#: scenario file -> (source's final status, the fault's kind, its channel)
CASES = {
    "multifd-reset-channel": ("failed", "net.reset", "multifd-1"),
    "multifd-blackhole-channel": ("completed", "net.blackhole", "multifd-0"),
    "multifd-corrupt-header": ("completed", "net.corrupt", "multifd-0"),
}


def harness_run(name: str, tmp_path) -> tuple[dict, list[dict]]:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", f"scenarios/qemu-7.2/{name}.yaml", "--json",
         str(out)], capture_output=True, text=True, timeout=90, cwd=REPO, check=False,
        env={**os.environ, "HARNESS_WORKDIR": str(tmp_path / "work")})
    assert proc.returncode == 1, proc.stdout + proc.stderr  # verdict fail, by design
    [sc] = json.loads(out.read_text())["scenarios"]
    with open(sc["events"], encoding="utf-8") as log:
        events = [json.loads(line) for line in log]
    return sc, events


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_fault_on_one_multifd_channel_hangs_the_qemu_destination(name, tmp_path):
    source_status, kind, channel = CASES[name]
    sc, events = harness_run(name, tmp_path)
    assert sc["verdict"] == "fail"
    assert sc["reason"].startswith(HANG), sc["reason"]
    assert sc["reason"].endswith(f"the source {source_status}; killed and reaped")
    assert sc["source"]["status"] == source_status
    assert sc["destination"]["status"] == "active"
    [fault] = sc["faults"]  # the fault, in the report, on the channel it names
    assert (fault["kind"], fault["target"], fault["detail"]["flow"]) == (
        kind, f"proxy {channel}", channel)
    if kind == "net.corrupt":  # byte 1 of the first packet's header: the magic
        detail = fault["detail"]
        assert (detail["frame"], detail["detail"]["offset"], detail["detail"]["old"]) == (
            "MULTIFD_PACKET", 64 + 1, 0x22)
    sessions = [e["data"] for e in events if e["name"] == "SESSION"]
    accepted = [(s["n"], s["channel"]) for s in sessions if s["event"] == "accepted"]
    assert accepted == [(1, "main"), (2, "multifd"), (3, "multifd")]
    named = sorted((s["channel"], s["main"]) for s in sessions if s["event"] == "identified")
    assert named == [("multifd-0", 1), ("multifd-1", 1)]


def _status(qemu: QemuProcess) -> str:
    return str(qemu.qmp.execute("query-migrate").get("status"))


def test_a_recorded_zlib_multifd_run_is_counted_and_analysed(tmp_path):
    size = 16 << 20
    rng = np.random.default_rng(16)
    image = np.zeros(size, np.uint8)
    image[: size // 2] = np.frombuffer(rng.bytes(size // 2), np.uint8)  # half zero pages
    (tmp_path / "ram.bin").write_bytes(image.tobytes())
    record = tmp_path / "rec"
    record.mkdir()
    src = QemuProcess([*COMMON, "-device", f"loader,file={tmp_path / 'ram.bin'},addr=0x0"],
                      tmp_path, name="src")
    dst = QemuProcess([*COMMON, "-incoming", "defer"], tmp_path, name="dst")
    proxy = None
    try:
        src.start()
        dst.start()
        for qemu in (src, dst):  # before migrate-incoming (M3)
            qemu.qmp.execute("migrate-set-capabilities",
                             {"capabilities": [{"capability": "multifd", "state": True}]})
            qemu.qmp.execute("migrate-set-parameters", {"multifd-channels": 2,
                                                        "multifd-compression": "zlib"})
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = dst.qmp.execute("query-migrate")["socket-address"][0]["port"]
        proxy = Proxy("tcp:127.0.0.1:0", f"tcp:127.0.0.1:{port}", record=record, multifd=2)
        proxy.start()
        proxy.arm("slow", {"frame": "MULTIFD_PACKET", "channel": "multifd-1", "count": 2},
                  {"kind": "net.delay", "channel": "multifd-1", "delay": 0.01,
                   "duration": 0.1})
        src.qmp.execute("migrate", {"uri": proxy.address})
        deadline = time.monotonic() + 30
        while _status(src) not in ("completed", "failed") or _status(dst) != "completed":
            assert time.monotonic() < deadline, (_status(src), _status(dst))
            time.sleep(0.02)
        assert _status(src) == "completed"
        dump = np.frombuffer(read_phys(dst.qmp, 0, size, tmp_path), dtype=np.uint8)
        assert np.array_equal(dump, image)
        query = proxy.query()
    finally:
        for qemu in (src, dst):
            qemu.close()
        if proxy is not None:
            proxy.close()
    channels = query["multifd"]["list"]
    sections = query["frames"]["main"]["RAM_EOS"]  # setup, each iteration, complete (M10)
    assert sorted(channels) == ["multifd-0", "multifd-1"] and sections >= 3
    assert all(c["connections"] == 1 and c["syncs"] == sections for c in channels.values())
    assert sum(c["pages"] for c in channels.values()) == size // 2 // 4096  # non-zero ones
    for flow in channels:  # a compressed payload is smaller than its pages
        assert query["bytes"][flow]["forwarded"] == query["bytes"][flow]["received"]
        assert query["frames"][flow]["MULTIFD_INIT"] == 1
    [fired] = query["fired"]  # at the end of channel 1's second packet, as recorded
    data = (record / "stream.multifd-1.bin").read_bytes()
    end = INIT_SIZE
    for _ in range(2):
        end += HEADER_SIZE + PacketHeader.unpack(data[end:end + HEADER_SIZE]).payload_size
    assert (fired["fired"]["channel"], fired["fired"]["frame"], fired["fired"]["offset"]) == (
        "multifd-1", "MULTIFD_PACKET", end)
    assert [(f["flow"], f["kind"]) for f in query["faults"]] == [("multifd-1", "net.delay")]
    analysis = analyze_file(record / "stream.fwd.bin", multifd=sorted(
        record.glob("stream.multifd-*.bin")))
    assert np.array_equal(analysis.ram["ram"][:size], image)
    summary = analysis.to_json()["multifd"]
    assert [c["compression"] for c in summary["channels"]] == ["zlib", "zlib"]
    assert (summary["syncs"], summary["ram-sections"]) == (2 * sections, sections)
