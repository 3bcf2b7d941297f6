"""A real pc / q35 QEMU as a QemuPeer: every RAM block read, migrated, continued.

Strategy: each test starts real `qemu-system-x86_64` machines (TCG, -nodefaults) through
`QemuPeer`, with the harness's real guest (harness.realguest) on its boot disk where the
memory must be non-trivial, and reads their RAM with `QemuPeer.snapshot()` (a migration
stream decoded by harness.protocol; pmemsave of what guest-physical space maps when the
QEMU is in postmigrate).  The assertions are against facts that hold independently of
that code: fact F38's block list and sizes, SeaBIOS's own file, the "RSD PTR " signature
QEMU puts at the start of the RSDP, pmemsave's bytes (F32), the other peer's digests,
the guest's own heartbeat.  Every QEMU is closed on every path by the `peers` fixture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.qemu import pmemsave, read_phys, wait_migration
from harness.qemu.machine import machine_list
from harness.realguest.image import GuestProgram
from harness.runner.peers import QemuPeer
from tests.qemu_env import QEMU_MARKS

pytestmark = [*QEMU_MARKS]

MiB = 1 << 20
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
ROMS = [("/rom@etc/acpi/tables", 0x20000), ("pc.bios", 0x40000), ("pc.rom", 0x20000),
        ("/rom@etc/table-loader", 0x1000), ("/rom@etc/acpi/rsdp", 0x1000)]
NOT_MAPPED = ["/rom@etc/acpi/tables", "pc.rom", "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"]
SWEEP = 0x100000  # the guest's first swept page (u32@0 is its generation)

Start = Callable[..., QemuPeer]


def f38(memory: int) -> list[tuple[str, int]]:
    """Fact F38: the RAM blocks of pc and q35 with -nodefaults, in stream order."""
    return [("pc.ram", memory), *ROMS]


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Start]:
    started: list[QemuPeer] = []

    def start(role: str = "source", **kw: Any) -> QemuPeer:
        peer = QemuPeer(role, tmp_path, **kw)
        started.append(peer)
        peer.start()
        return peer

    try:
        yield start
    finally:
        for peer in started:
            peer.close()


def wait_booted(peer: QemuPeer, timeout: float = 10.0) -> None:
    """Until the guest wrote 'S' (its init pass is over, it sweeps) and a bit more."""
    deadline = time.monotonic() + timeout
    while "S" not in peer.serial_text():
        assert time.monotonic() < deadline, f"no 'S' on serial: {peer.serial_text()!r}"
        assert peer.alive(), peer.stderr_tail()
        time.sleep(0.01)
    time.sleep(0.2)


def generation(peer: QemuPeer) -> int:
    raw = read_phys(peer._qemu.qmp, SWEEP, 4, peer.workdir)
    return int.from_bytes(raw, "little")


def guest(memory: int) -> GuestProgram:
    return GuestProgram(memory=memory, dirty_rate=256 * MiB)


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_a_snapshot_lists_every_block_of_fact_f38(peers: Start, machine: str) -> None:
    peer = peers(machine=machine, memory=64 * MiB, paused=True)
    blocks = peer.snapshot()
    assert [(name, mem.size) for name, mem in blocks.items()] == f38(64 * MiB)
    assert all(mem.dtype == np.uint8 for mem in blocks.values())
    assert blocks["/rom@etc/acpi/rsdp"][:8].tobytes() == b"RSD PTR ", \
        "the fw_cfg ROM (not in guest-physical space) was read"
    if SEABIOS.exists():
        assert blocks["pc.bios"].tobytes() == SEABIOS.read_bytes()
    assert peer.runstate() == "postmigrate"
    assert not [e for e in peer.poll_events() if e.name.startswith("MIGRATION")], \
        "the snapshot's own migration events are not the run's"
    facts = peer.facts()
    assert facts["machine"] == machine_list()[machine]
    assert facts["kvm-enabled"] is False and facts["accel"] == "tcg"
    assert facts["qemu-version"].split()[0].count(".") == 2
    assert f"-M {machine}" in facts["command-line"]
    assert facts["snapshot"]["blocks"] == [name for name, _ in f38(64 * MiB)]


def test_pc_ram_equals_pmemsave_and_cont_works_after(peers: Start) -> None:
    memory = 256 * MiB
    peer = peers(machine="pc", memory=memory, program=guest(memory))
    wait_booted(peer)
    peer.execute("stop")
    blocks = peer.snapshot()
    first = peer.last_snapshot
    assert first is not None and first.runstate_before == "paused"
    dump = peer.workdir / "pmem.bin"
    started = time.monotonic()
    pmemsave(peer._qemu.qmp, 0, memory, dump)
    pmem_seconds = time.monotonic() - started
    pmem = np.fromfile(dump, dtype=np.uint8)
    assert np.array_equal(pmem, blocks["pc.ram"]), "F32: pmemsave(0, RAM) is pc.ram"
    assert generation(peer) >= 1 and blocks["pc.ram"][SWEEP:SWEEP + 4].view(np.uint32)[0] >= 1
    print(f"snapshot {first.seconds:.3f} s ({first.stream_bytes} stream bytes), "
          f"pmemsave {pmem_seconds:.3f} s")

    again = peer.snapshot()  # postmigrate now: QEMU refuses a migration, pmemsave reads
    assert list(again) == ["pc.ram", "pc.bios"]
    assert np.array_equal(again["pc.ram"], blocks["pc.ram"])
    assert np.array_equal(again["pc.bios"], blocks["pc.bios"])
    notes = "\n".join(peer.last_snapshot.notes)
    assert "Can't migrate the vm that was paused due to previous migration" in notes
    for name in NOT_MAPPED:
        assert f"{name}: left out, not mapped in guest-physical space" in notes

    before = generation(peer)
    peer.execute("cont")
    assert peer.runstate() == "running"
    deadline = time.monotonic() + 5
    while generation(peer) == before:
        assert time.monotonic() < deadline, "the guest did not run on after cont"
        time.sleep(0.05)


def test_precopy_pc_to_pc_gives_equal_digests(peers: Start) -> None:
    memory = 128 * MiB
    src = peers("source", machine="pc", memory=memory, program=guest(memory))
    dst = peers("destination", machine="pc", memory=memory, program=guest(memory),
                paused=True)
    assert src.image == dst.image, "one host: the destination opens the source's image"
    wait_booted(src)
    dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    port = dst.execute("query-migrate")["socket-address"][0]["port"]
    src.execute("migrate-set-parameters", {"max-bandwidth": 0, "downtime-limit": 2000})
    src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    assert wait_migration(src._qemu.qmp, timeout=30)["status"] == "completed"
    assert wait_migration(dst._qemu.qmp, timeout=30)["status"] == "completed"

    theirs = dst.digests(at_incoming=True)
    assert theirs is not None
    assert [(name, d.size * 4096) for name, d in theirs.items()] == f38(memory)
    ours = src.digests()  # postmigrate: what guest-physical space maps
    assert ours is not None and list(ours) == ["pc.ram", "pc.bios"]
    for name, digests in ours.items():
        differ = np.flatnonzero(digests != theirs[name])
        assert differ.size == 0, f"{name}: pages {differ[:8]} differ"
    assert np.count_nonzero(ours["pc.ram"] != ours["pc.ram"][0]) > 1000, "the guest wrote"
    assert src.last_snapshot is not None
    assert set(NOT_MAPPED) <= {n.split(":")[0] for n in src.last_snapshot.notes}


def test_the_heartbeat_advances_on_a_running_source(peers: Start) -> None:
    pytest.importorskip("harness.realguest.heartbeat",
                        reason="harness.realguest.heartbeat is not in yet (task A)")
    memory = 64 * MiB
    none = peers(memory=16 * MiB, paused=True)
    assert none.heartbeat() is None, "-M none has no guest"
    src = peers(machine="pc", memory=memory, program=GuestProgram(memory, 64 * MiB))
    wait_booted(src)
    first = src.heartbeat()
    assert first is not None
    deadline = time.monotonic() + 5
    while (now := src.heartbeat()).ticks <= first.ticks + 50 or \
            now.pages_written <= first.pages_written:
        assert time.monotonic() < deadline, f"heartbeat stuck at {now}"
        time.sleep(0.05)
