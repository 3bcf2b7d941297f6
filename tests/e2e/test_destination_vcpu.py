"""The destination's vCPU process exists before the guest runs there (as QEMU's vCPU
threads do before vm_start), so that starting a process is no part of the downtime.

Strategy: real peer processes (`python -m harness source|destination`); while the
migration is still in precopy, the destination peer must already have its workload
child, paused (runstate still inmigrate) -- spawned at the incoming migration's start,
or at ADVISE with postcopy (its fault fds exist only then).  After the switchover the
same process runs the guest.  Every process is reaped, also when the test fails.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil
import pytest

from harness.runner.peers import HarnessPeer, short_dir
from tests.e2e.harness_pair import harness_pair

MiB = 1 << 20
WAIT = 60.0
GUEST = {"machine": "none", "seed": 9, "fill": 0.5, "blocks": [{"name": "ram", "size": 32 * MiB}],
         "devices": ["timer", "globalstate", "cpu"],
         "workload": {"dirty_rate": 8 * MiB, "pattern": "uniform", "hotset": 0, "seed": 9}}


def _status(peer: HarnessPeer, want: set[str]) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        status = (peer.execute("query-migrate") or {}).get("status")
        if status in want:
            return str(status)
        assert time.monotonic() < deadline, f"{peer.role} still {status}"
        time.sleep(0.01)


def _workload_of(peer: HarnessPeer) -> psutil.Process | None:
    assert peer.pid is not None
    for child in psutil.Process(peer.pid).children():
        if any("harness.guest.workload" in part for part in child.cmdline()):
            return child
    return None


@pytest.mark.parametrize("postcopy", [False, True], ids=["precopy", "postcopy"])
def test_the_destination_vcpu_process_exists_before_the_guest_runs_there(tmp_path, postcopy):
    sockdir = short_dir("mhv")
    try:
        _vcpu_before_the_guest_runs(tmp_path, postcopy, sockdir)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def _vcpu_before_the_guest_runs(tmp_path: Path, postcopy: bool, sockdir: Path) -> None:
    with harness_pair(tmp_path, GUEST) as (src, dst):
        caps = [{"capability": "postcopy-ram", "state": postcopy}]
        for peer in (src, dst):
            peer.execute("migrate-set-capabilities", {"capabilities": caps})
        # precopy cannot converge on its own: whatever starts the guest is the test's doing
        src.execute("migrate-set-parameters", {"max-bandwidth": 4 * MiB, "downtime-limit": 1})
        uri = f"unix:{sockdir}/m.sock"
        dst.execute("migrate-incoming", {"uri": uri})
        assert _workload_of(dst) is None  # nothing before a migration comes in
        src.execute("migrate", {"uri": uri})
        _status(dst, {"active"})
        deadline = time.monotonic() + WAIT
        while (early := _workload_of(dst)) is None:
            assert time.monotonic() < deadline, "no workload process on the destination"
            time.sleep(0.01)
        assert dst.runstate() == "inmigrate"
        assert _status(src, {"active", "completed"}) == "active"  # still in precopy
        if postcopy:
            src.execute("migrate-start-postcopy")
        else:
            src.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40,
                                                   "downtime-limit": 300})
        for peer in (src, dst):
            assert _status(peer, {"completed", "failed"}) == "completed"
        assert dst.runstate() == "running"
        running = _workload_of(dst)
        assert running is not None and running.pid == early.pid
