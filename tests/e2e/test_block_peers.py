"""Block migration between two harness peers driven by hand (QMP-shaped commands):
`migrate` with `blk` turns it on for that migration only (B1), and a destination without
a drive of the same name fails with QEMU 7.2's words (B5)."""

from __future__ import annotations

import time
from pathlib import Path

from harness.guest.disks import DiskSpec, write_image
from tests.e2e.test_migration_settings import _status, pair


def test_blk_needs_the_drive_on_the_destination_and_lasts_one_migration(tmp_path: Path):
    image = tmp_path / "d0.img"
    write_image(image, DiskSpec("d0", 4 << 20, 1.0), seed=5)
    with pair(tmp_path, [f"--drive=id=d0,file={image}"]) as (src, dst, uri):
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri, "blk": True})
        info = _status(dst, {"failed", "completed"})
        assert info["status"] == "failed"
        assert "Error unknown block device d0" in info["error-desc"]
        assert "error while loading state section id 1(block)" in info["error-desc"]
        assert _status(src, {"failed", "completed"})["status"] == "failed"
        # migrate_fd_cleanup turns them off after the status went failed: wait for it
        deadline = time.monotonic() + 10
        while _block_settings(src) != (False, False):
            assert time.monotonic() < deadline, _block_settings(src)
            time.sleep(0.02)


def _block_settings(peer) -> tuple[bool, bool]:  # type: ignore[no-untyped-def]
    caps = {c["capability"]: c["state"] for c in peer.execute("query-migrate-capabilities")}
    return caps["block"], peer.execute("query-migrate-parameters")["block-incremental"]
