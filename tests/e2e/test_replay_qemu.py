"""A harness source migrates to a QEMU 7.2 `pc` destination by replaying the device state
of a paused QEMU of the destination's own command line (harness/qemu/replay.py).

By hand (`harness source --replay-devices`), plain precopy without disks: both sides
complete, every RAM block the destination loaded (pc.ram: the harness guest's seeded
pages; the ROMs as captured) equals the harness source's, and the destination stays
paused (the captured globalstate says prelaunch: the guest runs nowhere).  Through the
runner, scenarios/block-harness-to-qemu.yaml: block migration of a 16 MiB raw drive on
virtio-blk-pci, its image equal sector for sector, the RAM identical."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from harness.guest.content import page_digests
from harness.qemu import QemuProcess, wait_migration
from harness.qemu.replay import capture_paused, load_replay
from harness.qemu.snapshot import snapshot
from harness.runner.peers import HarnessPeer
from tests import shared_runs
from tests.conftest import REPO
from tests.qemu_env import QEMU_MARKS

pytestmark = QEMU_MARKS

MiB = 1 << 20


def _destination_args() -> list[str]:
    return ["-nodefaults", "-no-user-config", "-display", "none", "-M", "pc", "-accel", "tcg",
            "-m", "16M", "-incoming", "defer", "-S"]


def _wait_status(peer: HarnessPeer, want: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = peer.execute("query-migrate").get("status", "none")
        if status in want or time.monotonic() >= deadline:
            return str(status)
        time.sleep(0.05)


def test_precopy_harness_source_to_qemu_pc(tmp_path: Path) -> None:
    args = _destination_args()
    captured = capture_paused(None, args, tmp_path / "paused.bin", tmp_path)
    replay = load_replay(captured)
    assert replay.machine == "pc-i440fx-7.2" and replay.runstate == "prelaunch"
    assert "globalstate/0" in replay.devices and "cpu/0" in replay.devices
    guest = {"machine": "pc", "seed": 31, "fill": 0.5,
             "blocks": [{"name": "ram", "size": 16 * MiB}]}
    dst = QemuProcess(args, tmp_path, name="destination")
    src = HarnessPeer("source", tmp_path, guest, ["--replay-devices", str(captured)])
    sock = tmp_path / "mig.sock"
    try:
        dst.start(timeout=20)
        src.start()
        dst.qmp.execute("migrate-incoming", {"uri": f"unix:{sock}"}, timeout=10)
        src.execute("migrate", {"uri": f"unix:{sock}"})
        assert _wait_status(src, {"completed", "failed"}, 60) == "completed"
        info = wait_migration(dst.qmp, timeout=30)
        assert info.get("status") == "completed", (info, dst.stderr_text()[-600:])
        assert dst.qmp.execute("query-status", timeout=10)["status"] == "prelaunch"
        loaded = snapshot(dst.qmp, timeout=60).blocks
        source = src.digests()
        assert source is not None and set(loaded) == set(source)
        for name, data in loaded.items():
            assert np.array_equal(page_digests(data), source[name]), name
        assert np.count_nonzero(loaded["pc.ram"]) > 4 * MiB  # the seeded pages, fill 0.5
        assert loaded["pc.bios"][-16:].any()  # SeaBIOS's reset vector, as captured
    finally:
        src.close()
        dst.close()
    assert not src.alive()


@pytest.mark.timeout(300)
def test_block_harness_to_qemu_scenario() -> None:
    """The shipped scenario, from the session's one run of it (tests/shared_runs.py)."""
    done = shared_runs.local_run(REPO / "scenarios" / "block-harness-to-qemu.yaml", 240)
    sc = done.scenario()
    assert done.code == 0 and sc["verdict"] == "pass", done.output
    ok = {i["name"]: i["detail"] for i in sc["invariants"] if i["ok"]}
    assert ok["disks-identical"] == "every sector of d0 equal on both sides"
    assert ok["memory-identical"] == "all 4226 pages equal"  # pc.ram 4096 + the ROMs' 130
    assert "destination prelaunch" in ok["guest-runs-on"]
    block = sc["stats"]["x-block"]  # the 16 chunks, and those the guest rewrote again
    assert block["chunks"] + block["zero-chunks"] == 16 + block["dirty-chunks"]
    [replay] = [t["data"] for t in sc["timeline"] if t["name"] == "device-replay"]
    assert replay["machine"] == "pc-i440fx-7.2" and replay["runstate"] == "prelaunch"
    assert sc["destination"]["kind"] == "qemu" and sc["faults"] == []
