"""A guest shaped like a real QEMU machine (pc, q35): its RAM blocks and device sections.

Strategy: a destination that takes a real pc/q35 QEMU's stream must have the machine's
RAM blocks (pc.ram, pc.bios, the fw_cfg ROM blobs ...) and know every device section the
stream carries, exactly as QEMU's loader would.  The machine's facts come from a layout
(`harness.qemu.layout.MachineLayout`: machine name, blocks with their used lengths, the
device descriptions of its VM description trailer); `layout_guest_spec` turns them into a
`GuestSpec`.  The harness models none of these devices: each becomes a `StoredDevice`,
whose section is decoded field by field (the layout's description) and whose values are
kept, per device, in `Guest.device_state` -- except `timer` and `globalstate`, which act
as the harness's own do (clock offsets, the runstate to resume in).

RAM block names are QEMU idstrs ("/rom@etc/acpi/tables", "0000:00:02.0/vga.vram"): they
never become paths here -- the guest's shared-memory segment is named by the harness
(`memory.py`) -- and a layout's names are checked against a whitelist all the same.
Resizable blocks (QEMU's RAM_RESIZEABLE: the fw_cfg ROM blobs) get memory for their
maximum length, so that a load may announce another used length up to it, as
`softmmu/physmem.c: qemu_ram_resize` allows; the maxima are the layout's when it has
them, else the ones measured on QEMU 7.2.22 (`info ramblock`, pc and q35, -m 64).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.protocol.vmstate import DeviceDescription

from .devices import GlobalStateDevice, GuestDevice, TimerDevice
from .memory import PAGE_SIZE, BlockSpec

__all__ = ["KNOWN_MAX_LENGTHS", "MAX_LAYOUT_BYTES", "StoredDevice", "check_block_name",
           "layout_devices", "layout_guest_spec", "load_layout", "spec_from_layout"]

#: `info ramblock` "Total" of QEMU 7.2.22's resizable blocks (pc and q35, -nodefaults)
KNOWN_MAX_LENGTHS = {"/rom@etc/acpi/tables": 0x200000, "/rom@etc/table-loader": 0x10000,
                     "/rom@etc/acpi/rsdp": 0x1000}
#: a layout file larger than this is refused unread (a pc layout is about 0.1 MB)
MAX_LAYOUT_BYTES = 16 << 20
_BLOCK_NAME = re.compile(r"[A-Za-z0-9._:@/+,\[\]-]{1,255}")


def check_block_name(name: str) -> str:
    """A RAM block idstr from a layout: 1-255 characters out of letters, digits and
    `._:@/+,[]-` (what QEMU's idstrs are made of); ValueError otherwise."""
    if not isinstance(name, str) or not _BLOCK_NAME.fullmatch(name):
        raise ValueError(f"RAM block name {name!r}: expected 1-255 characters out of "
                         f"letters, digits and ._:@/+,[]-")
    return name


class StoredDevice(GuestDevice):
    """A device the harness does not model: its loaded values are kept as they came."""

    def load(self, guest: Any, values: Mapping[str, Any]) -> None:
        guest.device_state[(self.idstr, self.instance_id)] = dict(values)

    def save(self, guest: Any) -> dict[str, Any]:
        state = guest.device_state.get((self.idstr, self.instance_id))
        if state is None:
            raise ValueError(f"device '{self.idstr}' {self.instance_id}: nothing loaded to save")
        return dict(state)


class _StoredTimer(TimerDevice):
    def load(self, guest: Any, values: Mapping[str, Any]) -> None:
        super().load(guest, values)
        guest.device_state[(self.idstr, self.instance_id)] = dict(values)


class _StoredGlobalState(GlobalStateDevice):
    def load(self, guest: Any, values: Mapping[str, Any]) -> None:
        super().load(guest, values)
        guest.device_state[(self.idstr, self.instance_id)] = dict(values)


_ACTING = {"timer": _StoredTimer, "globalstate": _StoredGlobalState}


def layout_devices(descriptions: Iterable[DeviceDescription]) -> list[GuestDevice]:
    """One device per described section (section ids in order: a destination's own ids
    do not matter, QEMU maps the stream's ids to its handlers by idstr and instance)."""
    out: list[GuestDevice] = []
    seen: set[tuple[str, int]] = set()
    for section_id, desc in enumerate(descriptions):
        key = (desc.idstr, desc.instance_id)
        if key in seen:
            raise ValueError(f"device '{desc.idstr}' instance {desc.instance_id} is "
                             f"described twice")
        seen.add(key)
        kind = _ACTING.get(desc.idstr if desc.instance_id == 0 else "", StoredDevice)
        out.append(kind(desc.idstr, desc.vmsd, section_id, desc.instance_id))
    return out


def layout_guest_spec(base: Any, machine: str, blocks: Iterable[tuple[str, int]],
                      devices: Iterable[DeviceDescription],
                      max_lengths: Mapping[str, int] | None = None) -> Any:
    """`base` (a GuestSpec: seed, workload ...) with the machine's name, RAM blocks and
    devices.  A block is resizable when its maximum (`max_lengths`, else
    KNOWN_MAX_LENGTHS) exceeds its used length: it is allocated at the maximum."""
    if not isinstance(machine, str) or not machine or len(machine.encode()) > 255:
        raise ValueError(f"machine name {machine!r}: expected 1-255 bytes")
    maxima = {**KNOWN_MAX_LENGTHS, **dict(max_lengths or {})}
    specs: list[BlockSpec] = []
    used: dict[str, int] = {}
    for name, length in blocks:
        check_block_name(name)
        length = int(length)
        if length <= 0 or length % PAGE_SIZE:
            raise ValueError(f"RAM block '{name}': used length {length:#x} is not a positive "
                             f"multiple of {PAGE_SIZE:#x}")
        top = max(int(maxima.get(name, length)), length)
        specs.append(BlockSpec(name, -(-top // PAGE_SIZE) * PAGE_SIZE))
        if top > length:
            used[name] = length
    described = tuple(devices)
    layout_devices(described)  # checks: no device twice
    return replace(base, machine=machine, blocks=specs, described=described,
                   used_lengths=used, fill=0.0)


def load_layout(path: Path) -> Any:
    """A `MachineLayout` from a JSON file (`--layout FILE`), size-bounded; ValueError
    naming the file when it cannot be read or is not a layout."""
    from harness.qemu.layout import MachineLayout

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LAYOUT_BYTES + 1)
    except OSError as err:
        raise ValueError(f"--layout {path}: {err.strerror or err}") from None
    if len(data) > MAX_LAYOUT_BYTES:
        raise ValueError(f"--layout {path}: larger than {MAX_LAYOUT_BYTES} bytes")
    try:
        return MachineLayout.from_json(json.loads(data))
    except (KeyError, TypeError, ValueError, RecursionError) as err:
        raise ValueError(f"--layout {path}: not a machine layout: {err}") from None


def spec_from_layout(base: Any, layout: Any) -> Any:
    """`layout_guest_spec` for a `MachineLayout` (its `max_lengths`, if it has any)."""
    return layout_guest_spec(base, layout.machine, layout.blocks, layout.devices(),
                             getattr(layout, "max_lengths", None))
