"""The guest's devices, as vmstate sections.

Strategy: each device is a `GuestDevice`: QEMU's SaveStateEntry facts (idstr, instance
id, section id, `VMStateDescription`, `.unmigratable`) plus `save(guest) -> values` and
`load(guest, values)` mapping the guest's live state to and from the plain value dicts
`harness.protocol.vmstate` encodes.  Section ids are those QEMU 7.2 `-M none` hands out
(timer 0, ram 2, globalstate 4), then cpu 5 and blocker 6.

- `timer` (softmmu/cpu-timers.c: vmstate_timers): the guest's two clock offsets.
- `globalstate` (migration/global_state.c): the runstate stored by
  `global_state_store()` -- or the current one when none was stored -- saved as QEMU
  saves it; loading records it as the guest's `incoming_runstate`, which the
  destination acts on when the migration completes (QEMU's
  process_incoming_migration_bh; see `Guest.finish_incoming`).
- `cpu`: a stand-in vCPU whose registers live in the control words of guest memory:
  the workload advances them once per batch (tsc = batches, rip = hash of the page
  writes so far, regs rotate), so saving reads them -- the guest must be paused for a
  consistent snapshot -- and loading writes them, so a destination workload continues
  from them.  Subsection `cpu/harness` carries the page-write count when non-zero.
- `blocker`: `.unmigratable = 1`: while it exists, no migration may start
  (migration/savevm.c: qemu_savevm_state_blocked); saving it raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from harness.protocol.devices import GLOBALSTATE, TIMER, globalstate_values, runstate_of
from harness.protocol.errors import LocalProtocolError
from harness.protocol.vmstate import INT64, UINT64, DeviceDescription, Field, VMStateDescription

from .memory import GuestMemory
from .workload import Ctl

__all__ = ["BLOCKER", "CPU", "GLOBALSTATE", "SECTION_IDS", "TIMER", "GuestDevice",
           "MigrationBlockedError", "make_devices"]

SECTION_IDS = {"timer": 0, "ram": 2, "globalstate": 4, "cpu": 5, "blocker": 6}
CPU_REGS = 16


def _harness_needed(values: Mapping[str, Any]) -> bool:
    return int(values.get("cpu/harness", {}).get("writes", 0)) > 0


CPU_HARNESS = VMStateDescription("cpu/harness", 1, minimum_version_id=1,
                                 fields=(Field("writes", UINT64),), needed=_harness_needed)

CPU = VMStateDescription(
    "cpu", 1, minimum_version_id=1,
    fields=(Field("regs", UINT64, count=CPU_REGS), Field("rip", UINT64),
            Field("rflags", UINT64), Field("tsc", INT64)),
    subsections=(CPU_HARNESS,),
)

BLOCKER = VMStateDescription("blocker", 1, minimum_version_id=1)


class MigrationBlockedError(LocalProtocolError):
    """A device forbids migration (QEMU: "State blocked by non-migratable device")."""


class DeviceHost(Protocol):
    """What devices need of a guest (implemented by `Guest`)."""

    runstate: str
    stored_runstate: str | None
    incoming_runstate: str | None
    timer: dict[str, int]
    memory: GuestMemory


@dataclass
class GuestDevice:
    """One device: SaveStateEntry facts plus how its values map to the guest."""

    idstr: str
    vmsd: VMStateDescription
    section_id: int
    instance_id: int = 0
    unmigratable: bool = False

    def save(self, guest: DeviceHost) -> dict[str, Any]:
        raise NotImplementedError

    def load(self, guest: DeviceHost, values: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def description(self) -> DeviceDescription:
        return DeviceDescription(self.idstr, self.instance_id, self.vmsd)


class TimerDevice(GuestDevice):
    def save(self, guest: DeviceHost) -> dict[str, Any]:
        return {"cpu_ticks_offset": int(guest.timer.get("cpu_ticks_offset", 0)),
                "cpu_clock_offset": int(guest.timer.get("cpu_clock_offset", 0))}

    def load(self, guest: DeviceHost, values: Mapping[str, Any]) -> None:
        guest.timer = {"cpu_ticks_offset": int(values["cpu_ticks_offset"]),
                       "cpu_clock_offset": int(values.get("cpu_clock_offset", 0))}


class GlobalStateDevice(GuestDevice):
    def save(self, guest: DeviceHost) -> dict[str, Any]:
        stored = guest.stored_runstate
        return globalstate_values(stored if stored is not None else guest.runstate)

    def load(self, guest: DeviceHost, values: Mapping[str, Any]) -> None:
        guest.incoming_runstate = runstate_of(values)


class CpuDevice(GuestDevice):
    def save(self, guest: DeviceHost) -> dict[str, Any]:
        words = guest.memory.control.view(np.uint64)
        return {"regs": [int(r) for r in words[Ctl.REGS:Ctl.REGS + CPU_REGS]],
                "rip": int(words[Ctl.RIP]), "rflags": int(words[Ctl.RFLAGS]),
                "tsc": int(guest.memory.control[Ctl.TSC]),
                "cpu/harness": {"writes": int(words[Ctl.PAGES_WRITTEN_TOTAL])}}

    def load(self, guest: DeviceHost, values: Mapping[str, Any]) -> None:
        words = guest.memory.control.view(np.uint64)
        regs = [int(r) for r in values["regs"]]
        if len(regs) != CPU_REGS:
            raise ValueError(f"cpu: {len(regs)} registers, expected {CPU_REGS}")
        words[Ctl.REGS:Ctl.REGS + CPU_REGS] = np.array(regs, dtype=np.uint64)
        words[Ctl.RIP] = int(values["rip"])
        words[Ctl.RFLAGS] = int(values["rflags"])
        guest.memory.control[Ctl.TSC] = int(values["tsc"])
        writes = int(values.get("cpu/harness", {}).get("writes", 0))
        words[Ctl.PAGES_WRITTEN_TOTAL] = writes


class BlockerDevice(GuestDevice):
    def save(self, guest: DeviceHost) -> dict[str, Any]:
        raise MigrationBlockedError(f"State blocked by non-migratable device '{self.idstr}'",
                                    qemu=True)

    def load(self, guest: DeviceHost, values: Mapping[str, Any]) -> None:
        raise MigrationBlockedError(f"State blocked by non-migratable device '{self.idstr}'",
                                    qemu=True)


def _timer() -> GuestDevice:
    return TimerDevice("timer", TIMER, SECTION_IDS["timer"])


def _globalstate() -> GuestDevice:
    return GlobalStateDevice("globalstate", GLOBALSTATE, SECTION_IDS["globalstate"])


def _cpu() -> GuestDevice:
    return CpuDevice("cpu", CPU, SECTION_IDS["cpu"])


def _blocker() -> GuestDevice:
    return BlockerDevice("blocker", BLOCKER, SECTION_IDS["blocker"], unmigratable=True)


KNOWN_DEVICES = {"timer": _timer, "globalstate": _globalstate, "cpu": _cpu,
                 "blocker": _blocker}


def make_devices(names: list[str]) -> list[GuestDevice]:
    """Devices by name, in the order given (each at most once)."""
    unknown = [n for n in names if n not in KNOWN_DEVICES]
    if unknown:
        raise ValueError(f"unknown device {unknown[0]!r}; known devices: "
                         f"{', '.join(KNOWN_DEVICES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"device listed twice in {names}")
    return [KNOWN_DEVICES[n]() for n in names]
