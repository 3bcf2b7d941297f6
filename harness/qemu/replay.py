"""A paused QEMU's device state, captured once and replayed by a harness source.

Strategy: a QEMU destination on a real machine (pc, q35) loads a stream only when it
carries that machine's RAM blocks and every one of its device sections; the harness
models none of those devices.  So the runner starts the destination's own command line
paused (`-S`, no -incoming, disks behind -snapshot: `layout.probe_args`), migrates it to
`exec:cat > FILE` (`capture_paused`, the same probe as harness/qemu/layout.py's) and
hands the file to the harness source (`harness source --replay-devices FILE`).
`load_replay` decodes it with the codec, framed by its own VM description trailer, and
keeps what the source must send as QEMU wrote it:

- the configuration's machine name (pc-i440fx-7.2 ...: migration/savevm.c
  vmstate_configuration refuses any other) and the ram section's block list with each
  block's used length (migration/ram.c: ram_load_precopy RAM_SAVE_FLAG_MEM_SIZE checks
  every idstr and length);
- the content of every block other than the guest RAM (`pc.ram`): the BIOS, option ROM
  and fw_cfg blobs (ACPI tables, table-loader, RSDP), which the source sends as captured;
- the bytes of every device section (QEMU_VM_SECTION_FULL, header to footer) and the
  trailer.  The harness source sends them verbatim after its own iterable sections
  (block, ram) and before EOF.  Section ids need no renumbering: QEMU's loader looks a
  FULL section's handler up by idstr and instance (migration/savevm.c:
  qemu_loadvm_section_start_full) and checks the footer against the header's id only,
  and the captured ids (timer 0, ram 2, devices from 4) never collide with the harness's
  block (1) and ram (2) ids, which are QEMU's own; `load_replay` checks that.

The captured globalstate says `prelaunch`, so the destination stays paused after the
load (migration/migration.c: process_incoming_migration_bh sets the received runstate):
its guest runs nowhere, and its memory and disks can be read as the load left them.
Everything read is bounded (file size, block sizes) and validated (the stream must decode
exactly, the device sections must be contiguous FULL sections up to EOF).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.protocol import RemoteProtocolError, SectionType, StreamDecoder
from harness.protocol.block import BLOCK_SECTION_ID
from harness.protocol.events import (
    Configuration,
    DeviceState,
    EndOfStream,
    RamMemSize,
    SectionFooter,
    SectionHeader,
    VmDescription,
)

from .launch import QemuProcess, find_qemu
from .layout import LayoutError, find_trailer, load_vmdesc, probe_args
from .qmp import QMPError, wait_migration

__all__ = ["GUEST_RAM", "MAX_REPLAY_BYTES", "DeviceReplay", "ReplayError", "capture_paused",
           "load_replay", "replay_guest_spec"]

GUEST_RAM = "pc.ram"  # the block the harness guest's pages go in (pc and q35 alike)
MAX_REPLAY_BYTES = 64 << 20  # a paused pc -m 16 stream is 0.4 MB (zero pages: 9 bytes each)
MAX_ROM_BYTES = 64 << 20  # all blocks but the guest RAM (pc: 0.5 MiB)
RAM_SECTION_ID = 2  # source/migration.py: OutgoingMigration.ram_section_id


class ReplayError(LayoutError):
    """A capture that cannot be replayed (says why)."""


@dataclass(frozen=True)
class DeviceReplay:
    """What a harness source replays of a paused QEMU (see the strategy)."""

    machine: str
    blocks: tuple[tuple[str, int], ...]  # idstr, used length, in QEMU's order
    roms: Mapping[str, bytes]  # every block but GUEST_RAM, its used length as captured
    device_sections: bytes  # the FULL sections, verbatim, up to (not with) EOF
    trailer: bytes  # the QEMU_VM_VMDESCRIPTION record (0x06, be32 length, JSON)
    devices: tuple[str, ...]  # "idstr/instance" of each section, for reports
    runstate: str  # what the captured globalstate says

    def summary(self) -> dict[str, Any]:
        return {"machine": self.machine, "devices": len(self.devices),
                "device-bytes": len(self.device_sections), "runstate": self.runstate,
                "blocks": [name for name, _ in self.blocks]}


def load_replay(path: Path) -> DeviceReplay:
    """The replay of a captured paused stream (`capture_paused`'s file); ReplayError
    naming the file when it is not one."""
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(MAX_REPLAY_BYTES + 1)
    except OSError as err:
        raise ReplayError(f"--replay-devices {path}: {err.strerror or err}") from None
    if len(data) > MAX_REPLAY_BYTES:
        raise ReplayError(f"--replay-devices {path}: larger than {MAX_REPLAY_BYTES} bytes")
    try:
        return replay_from_bytes(data)
    except (LayoutError, RemoteProtocolError) as err:
        raise ReplayError(f"--replay-devices {path}: {err}") from None


def replay_from_bytes(data: bytes) -> DeviceReplay:
    trailer_json = find_trailer(data)
    if trailer_json is None:
        raise ReplayError("not a precopy stream with a VM description trailer")
    vmdesc = load_vmdesc(trailer_json)
    from harness.protocol.vmstate import devices_from_vmdesc

    decoder = StreamDecoder(devices=devices_from_vmdesc(vmdesc))
    decoder.receive_data(data)
    decoder.receive_data(b"")
    events = list(decoder.events())
    machine = next((ev.machine for ev in events if isinstance(ev, Configuration)), "")
    sizes = next((ev.blocks for ev in events if isinstance(ev, RamMemSize)), ())
    blocks = tuple((b.idstr, b.used_length) for b in sizes)
    eof = next((ev.offset for ev in events if isinstance(ev, EndOfStream)), None)
    if not machine or not blocks or eof is None or \
            not any(isinstance(ev, VmDescription) for ev in events):
        raise ReplayError("the stream lacks a configuration, a RAM block list, EOF or its "
                          "VM description")
    start, devices, runstate = _device_sections(events, eof)
    roms = _roms(decoder.ram, blocks)
    return DeviceReplay(machine, blocks, roms, bytes(data[start:eof]), bytes(data[eof + 1:]),
                        devices, runstate)


def _device_sections(events: list[Any], eof: int) -> tuple[int, tuple[str, ...], str]:
    """Where the FULL sections start; their names; the globalstate's runstate.  They must
    follow each other up to EOF, with ids other than the harness's block and ram."""
    full = [ev for ev in events if isinstance(ev, SectionHeader)
            and ev.type == SectionType.SECTION_FULL]
    if not full:
        raise ReplayError("the stream has no device section")
    start = full[0].offset
    tail = [ev for ev in events if start <= ev.offset < eof]
    allowed = (SectionHeader, DeviceState, SectionFooter)
    stray = [ev for ev in tail if not isinstance(ev, allowed) or
             (isinstance(ev, SectionHeader) and ev.type != SectionType.SECTION_FULL)]
    if stray or len(full) != sum(isinstance(ev, SectionHeader) for ev in tail):
        raise ReplayError("the device sections are not contiguous up to EOF")
    clash = [ev.idstr for ev in full if ev.section_id in (BLOCK_SECTION_ID, RAM_SECTION_ID)]
    if clash:
        raise ReplayError(f"device section '{clash[0]}' uses section id of block or ram")
    state = next((ev.state for ev in tail if isinstance(ev, DeviceState)
                  and ev.idstr == "globalstate"), None)
    runstate = _runstate(state)
    return start, tuple(f"{ev.idstr}/{ev.instance_id}" for ev in full), runstate


def _runstate(state: Mapping[str, Any] | None) -> str:
    if not state:
        return "unknown"
    from harness.protocol.devices import runstate_of

    try:
        return str(runstate_of(state))
    except (KeyError, TypeError, ValueError):
        return "unknown"


def _roms(ram: Mapping[str, np.ndarray], blocks: tuple[tuple[str, int], ...]
          ) -> dict[str, bytes]:
    names = [name for name, _ in blocks]
    if GUEST_RAM not in names:
        raise ReplayError(f"no RAM block {GUEST_RAM!r} for the guest's pages (blocks: "
                          f"{', '.join(names)})")
    roms = {name: bytes(ram[name][:length]) for name, length in blocks if name != GUEST_RAM}
    if sum(len(v) for v in roms.values()) > MAX_ROM_BYTES:
        raise ReplayError(f"the blocks besides {GUEST_RAM} exceed {MAX_ROM_BYTES} bytes")
    return roms


def replay_guest_spec(base: Any, replay: DeviceReplay) -> Any:
    """`base` (a GuestSpec: seed, fill, workload) shaped as the captured machine: its
    name and RAM blocks, no device of its own (the captured sections replace them)."""
    from harness.guest.machine import layout_guest_spec

    shaped = layout_guest_spec(base, replay.machine, replay.blocks, ())
    return replace(shaped, fill=base.fill)


def install(guest: Any, replay: DeviceReplay) -> None:
    """Write the captured blocks into `guest` (a source's, before it runs) and give it the
    device sections its migration sends (`guest.device_replay`)."""
    for name, content in replay.roms.items():
        mem = guest.ram[name]
        mem[:len(content)] = np.frombuffer(content, dtype=np.uint8)
    guest.device_replay = replay


# --------------------------------------------------------------------------- capture


def capture_paused(binary: str | None, args: list[str], target: Path, workdir: Path,
                   timeout: float = 30) -> Path:
    """Start `binary args` paused as layout's probe does and migrate it to `target`."""
    binary = binary or find_qemu()
    if binary is None:
        raise ReplayError("no QEMU binary (set HARNESS_QEMU or install qemu-system-x86_64)")
    if "'" in str(target):
        raise ReplayError(f"cannot quote {target} for exec:")
    deadline = time.monotonic() + timeout
    probe_dir = Path(tempfile.mkdtemp(prefix="replay-probe-", dir=workdir))
    qemu = QemuProcess(probe_args(args), probe_dir, name="replay-probe", binary=binary)
    try:
        qemu.start(timeout=timeout)
        qemu.qmp.execute("migrate", {"uri": f"exec:cat > '{target}'"}, timeout=timeout)
        info = wait_migration(qemu.qmp, timeout=max(0.1, deadline - time.monotonic()))
        if info.get("status") != "completed":
            raise ReplayError(f"capture: migration {info.get('status')}: "
                              f"{info.get('error-desc', '')}")
        _wait_trailer(target, deadline)
    except QMPError as err:
        raise ReplayError(f"capture: {err}; QEMU stderr: {qemu.stderr_text()[-400:]!r}") \
            from None
    finally:
        qemu.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(probe_dir)
    return target


def _wait_trailer(target: Path, deadline: float) -> None:
    """`cat` may still be writing when QEMU reports completed."""
    while True:
        with contextlib.suppress(OSError):
            if find_trailer(target.read_bytes()[-(MAX_REPLAY_BYTES):]) is not None:
                return
        if time.monotonic() >= deadline:
            raise ReplayError(f"capture: {target} has no VM description trailer")
        time.sleep(0.01)
