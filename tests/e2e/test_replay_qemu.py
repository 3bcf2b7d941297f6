"""A harness source migrates to a QEMU 7.2 `pc` destination by replaying the device state
of a paused QEMU of the destination's own command line (harness/qemu/replay.py).

With a 16 MiB raw drive on virtio-blk-pci and block migration: the migration completes
on both sides, the destination's image equals the source's sector for sector, every
RAM block the destination loaded (pc.ram: the harness guest's seeded pages; the ROMs as
captured) equals the harness source's, and the destination stays paused (the captured
globalstate says prelaunch: the guest runs nowhere)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from harness.guest.content import page_digests
from harness.guest.disks import DiskSpec, compare_images, write_image
from harness.qemu import QemuProcess, wait_migration
from harness.qemu.replay import capture_paused, load_replay
from harness.qemu.snapshot import snapshot
from harness.runner.peers import HarnessPeer
from tests.qemu_env import QEMU_MARKS

pytestmark = QEMU_MARKS

MiB = 1 << 20


def _destination_args(image: Path) -> list[str]:
    return ["-nodefaults", "-no-user-config", "-display", "none", "-M", "pc", "-accel", "tcg",
            "-m", "16M", "-device", "virtio-blk-pci,drive=d0",
            "-drive", f"file={image},format=raw,if=none,id=d0", "-incoming", "defer", "-S"]


def _wait_status(peer: HarnessPeer, want: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = peer.execute("query-migrate").get("status", "none")
        if status in want or time.monotonic() >= deadline:
            return str(status)
        time.sleep(0.05)


def test_block_migration_harness_source_to_qemu_pc(tmp_path: Path) -> None:
    src_img, dst_img = tmp_path / "d0.source.img", tmp_path / "d0.destination.img"
    write_image(src_img, DiskSpec("d0", 16 * MiB, 0.5), 31)
    write_image(dst_img, DiskSpec("d0", 16 * MiB, 0.0), None)
    args = _destination_args(dst_img)
    captured = capture_paused(None, args, tmp_path / "paused.bin", tmp_path)
    replay = load_replay(captured)
    assert replay.machine == "pc-i440fx-7.2" and replay.runstate == "prelaunch"
    assert "0000:00:02.0/virtio-blk/0" in replay.devices
    guest = {"machine": "pc", "seed": 31, "fill": 0.5,
             "blocks": [{"name": "ram", "size": 16 * MiB}]}
    dst = QemuProcess(args, tmp_path, name="destination")
    src = HarnessPeer("source", tmp_path, guest, ["--replay-devices", str(captured),
                                                   "--drive", f"id=d0,file={src_img}"])
    sock = tmp_path / "mig.sock"
    try:
        dst.start(timeout=20)
        src.start()
        dst.qmp.execute("migrate-incoming", {"uri": f"unix:{sock}"}, timeout=10)
        src.execute("migrate", {"uri": f"unix:{sock}", "blk": True})
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
    finally:
        src.close()
        dst.close()
    assert not src.alive()
    assert compare_images(src_img, dst_img) is None  # after QEMU quit: its writes flushed
