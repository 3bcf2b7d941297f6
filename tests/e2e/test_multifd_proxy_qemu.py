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
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.qemu_env import QEMU_MARKS

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
