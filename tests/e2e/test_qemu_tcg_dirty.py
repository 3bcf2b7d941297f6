"""A QEMU 7.2 fact the fault matrix found, shown without the harness's runner or proxy:
under TCG a precopy migration that goes through several dirty-bitmap syncs loses the
writes to a page the vCPU keeps in its TLB.

The harness's real guest writes its heartbeat and stack page (0x6000) every millisecond;
the page never leaves the vCPU's TLB (the guest runs without paging and never flushes).
After a few syncs at 16 MiB/s, the bandwidth is raised and precopy completes: every page
is equal on both sides except 0x6000, which the destination holds hundreds of ms older
(its heartbeat ticks behind the source's).  This matches the upstream fix of 2024
("cpu_physical_memory_sync_dirty_bitmap() ... forgot to bring the TCG TLB up to date
after clearing some of the dirty memory bitmap bits"), which QEMU 7.2.22 lacks.  When a
QEMU without the bug is installed this test fails: then update the README's matrix
(its **differs** cells) and the scenario descriptions that cite it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from harness.qemu import QemuProcess, pmemsave, wait_migration
from harness.realguest.heartbeat import parse_heartbeat, wait_heartbeat
from harness.realguest.image import HEARTBEAT_GPA, GuestProgram, write_image
from tests.qemu_env import QEMU_MARKS

pytestmark = QEMU_MARKS

MiB = 1 << 20
SYNCS_BEFORE_RAISE = 4


def _command(image: Path) -> list[str]:
    return ["-nodefaults", "-no-user-config", "-display", "none", "-M", "pc", "-accel", "tcg",
            "-m", "64M", "-drive", f"file={image},format=raw,if=ide", "-serial", "null"]


def _syncs(qemu: QemuProcess) -> int:
    return int(qemu.qmp.execute("query-migrate").get("ram", {}).get("dirty-sync-count", 0))


def test_tcg_loses_the_writes_to_a_tlb_resident_page(tmp_path):
    program = GuestProgram(memory=64 * MiB, dirty_rate=32 * MiB, pattern="hotset",
                           hotset=8 * MiB)
    image = write_image(program, tmp_path / "guest.img")
    with QemuProcess([*_command(image), "-incoming", "defer", "-S"], tmp_path,
                     name="dst") as dst, QemuProcess(_command(image), tmp_path,
                                                     name="src") as src:
        wait_heartbeat(src.qmp)
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = dst.qmp.execute("query-migrate")["socket-address"][0]["port"]
        src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 16 * MiB})
        src.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        deadline = time.monotonic() + 60
        while _syncs(src) < SYNCS_BEFORE_RAISE:
            assert time.monotonic() < deadline, "precopy did not reach its 4th sync"
            time.sleep(0.01)
        src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 1024 * MiB})
        assert wait_migration(src.qmp, timeout=60)["status"] == "completed"
        assert wait_migration(dst.qmp, timeout=60)["status"] == "completed"
        for name, qemu in (("src", src), ("dst", dst)):
            pmemsave(qemu.qmp, 0, 64 * MiB, tmp_path / f"{name}.bin")
    a = np.fromfile(tmp_path / "src.bin", dtype=np.uint8).reshape(-1, 4096)
    b = np.fromfile(tmp_path / "dst.bin", dtype=np.uint8).reshape(-1, 4096)
    differing = np.flatnonzero((a != b).any(axis=1)) * 4096
    assert differing.tolist() == [HEARTBEAT_GPA]  # every other page arrived
    page = HEARTBEAT_GPA // 4096
    source = parse_heartbeat(a[page][:32].tobytes())
    destination = parse_heartbeat(b[page][:32].tobytes())
    # the destination's copy is an old one: the source's later writes never reached it
    assert destination.ticks < source.ticks - 50, (source, destination)
