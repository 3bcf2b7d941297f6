"""The vmstate descriptions of QEMU 7.2 devices every machine migrates.

Strategy: facts, not code: field lists, versions and `needed` rules of
`migration/savevm.c: vmstate_configuration` (and its subsections),
`softmmu/cpu-timers.c: vmstate_timers` and `migration/global_state.c:
vmstate_globalstate`, written as `VMStateDescription`s.  Checked against the `-M none`
streams in `../shared/qemu-vectors/precopy`, whose VM description trailer these
descriptions reproduce byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .constants import RUN_STATES
from .vmstate import (
    BUFFER,
    CAPABILITY,
    INT64,
    UINT32,
    UNUSED_BUFFER,
    DeviceDescription,
    Field,
    Values,
    VMStateDescription,
)

CONFIGURATION = VMStateDescription(
    "configuration", 1,
    fields=(Field("len", UINT32), Field("name", BUFFER, size_from="len")),
    subsections=(
        VMStateDescription("configuration/target-page-bits", 1,
                           fields=(Field("target_page_bits", UINT32),)),
        VMStateDescription("configuration/capabilities", 1,
                           fields=(Field("caps_count", UINT32),
                                   Field("capabilities", CAPABILITY, count_from="caps_count"))),
        VMStateDescription("configuration/uuid", 1, fields=(Field("uuid", BUFFER, size=16),)),
    ),
)

TIMER = VMStateDescription(
    "timer", 2, minimum_version_id=1,
    fields=(
        Field("cpu_ticks_offset", INT64),
        Field("unused", UNUSED_BUFFER, size=8),
        Field("cpu_clock_offset", INT64, version_id=2),
    ),
)

RUNSTATE_SIZE = 100  # migration/global_state.c: GlobalState.runstate[100]


def _globalstate_post_load(values: Values, version: int) -> None:
    # QEMU 7.2 terminates the name at its last byte, then parses it as a RunState
    name = bytes(values["runstate"])[:RUNSTATE_SIZE - 1].split(b"\0", 1)[0].decode("latin-1")
    if name not in RUN_STATES:
        raise ValueError(f"invalid parameter value: {name}")


GLOBALSTATE = VMStateDescription(
    "globalstate", 1, minimum_version_id=1,
    fields=(Field("size", UINT32), Field("runstate", BUFFER, size=RUNSTATE_SIZE)),
    post_load=_globalstate_post_load,
)


def globalstate_values(runstate: str) -> dict[str, Any]:
    """globalstate as QEMU stores it: strlen+1, then the NUL-padded 100-byte name."""
    raw = runstate.encode()
    return {"size": len(raw) + 1, "runstate": raw.ljust(RUNSTATE_SIZE, b"\0")}


def runstate_of(values: Mapping[str, Any]) -> str:
    return bytes(values["runstate"]).split(b"\0", 1)[0].decode("latin-1")


def timer_values(ticks_offset: int = 0, clock_offset: int = 0) -> dict[str, Any]:
    return {"cpu_ticks_offset": ticks_offset, "cpu_clock_offset": clock_offset}


def configuration_values(machine: str, capabilities: tuple[str, ...] | None = None,
                         uuid: bytes | None = None,
                         target_page_bits: int | None = None) -> dict[str, Any]:
    name = machine.encode()
    values: dict[str, Any] = {"len": len(name), "name": name}
    if target_page_bits is not None:
        values["configuration/target-page-bits"] = {"target_page_bits": target_page_bits}
    if capabilities:
        values["configuration/capabilities"] = {"caps_count": len(capabilities),
                                                "capabilities": list(capabilities)}
    if uuid is not None:
        values["configuration/uuid"] = {"uuid": bytes(uuid)}
    return values


#: The devices of QEMU 7.2 `-M none` with their section ids: timer 0, ram 2, globalstate 4
#: (ids are handed out at registration; the destination does not care which are used).
NONE_MACHINE_SECTION_IDS = {"timer": 0, "ram": 2, "globalstate": 4}


def standard_devices() -> list[DeviceDescription]:
    """Devices any harness destination knows (the `-M none` set)."""
    return [DeviceDescription("timer", 0, TIMER), DeviceDescription("globalstate", 0, GLOBALSTATE)]
