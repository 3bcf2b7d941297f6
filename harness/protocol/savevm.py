"""A whole precopy stream of a paused guest, in one call.

Strategy: what QEMU 7.2 writes for `migrate "exec:cat > FILE"` of a stopped guest
(`migration/savevm.c: qemu_savevm_state_header / _setup / _iterate /
_complete_precopy`): header, configuration, the `ram` START with its block list, one PART
carrying every page of every block (blocks in list order, pages ascending; none when there
is no RAM), an END with only EOS, the FULL sections of the devices, EOF and the VM
description.  For `-M none` with `timer` and `globalstate` this reproduces QEMU's files
byte for byte.  The live migration thread (source/) composes the same pieces over time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import devices as std
from .constants import TARGET_PAGE_SIZE, SectionType
from .encoder import StreamEncoder
from .events import RamBlockInfo
from .vmstate import VMStateDescription


@dataclass
class DeviceSave:
    """One device to write: its section id, idstr, instance, description and values."""

    section_id: int
    idstr: str
    vmsd: VMStateDescription
    values: Mapping[str, Any]
    instance_id: int = 0


def none_machine_devices(runstate: str = "prelaunch") -> list[DeviceSave]:
    """`-M none`'s devices with the section ids QEMU 7.2 gives them."""
    ids = std.NONE_MACHINE_SECTION_IDS
    return [
        DeviceSave(ids["timer"], "timer", std.TIMER, std.timer_values()),
        DeviceSave(ids["globalstate"], "globalstate", std.GLOBALSTATE,
                   std.globalstate_values(runstate)),
    ]


@dataclass
class PausedStream:
    machine: str = "none"
    ram: Mapping[str, np.ndarray] = field(default_factory=dict)
    devices: Sequence[DeviceSave] = field(default_factory=none_machine_devices)
    ram_section_id: int = std.NONE_MACHINE_SECTION_IDS["ram"]
    configuration: bool = True
    footers: bool = True
    vmdesc: bool = True
    capabilities: tuple[str, ...] | None = None
    uuid: bytes | None = None

    def encode(self) -> bytes:
        enc = StreamEncoder(footers=self.footers)
        out = bytearray(enc.header())
        if self.configuration:
            out += enc.configuration(self.machine, self.capabilities, self.uuid)
        blocks = [RamBlockInfo(name, int(mem.size)) for name, mem in self.ram.items()]
        sid = self.ram_section_id
        out += enc.ram_start(sid, blocks)
        records = bytearray()
        for name, mem in self.ram.items():
            enc.ram.save_pages(records, name, mem, range(mem.size // TARGET_PAGE_SIZE))
        if records:
            out += enc.ram_section(SectionType.SECTION_PART, sid, records)
        out += enc.ram_section(SectionType.SECTION_END, sid, b"")
        for dev in self.devices:
            out += enc.device(dev.section_id, dev.idstr, dev.instance_id, dev.vmsd, dev.values)
        out += enc.eof()
        if self.vmdesc:
            out += enc.vmdesc()
        return bytes(out)
