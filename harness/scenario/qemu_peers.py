"""`--peers qemu`: the same scenario with a real QEMU on one side or both.

Strategy: a scenario written for the harness's own peers is rewritten, as data, into the
one a user would write for real QEMU peers, then validated again by the model, so every
rule of the file format still holds.  What the rewrite changes is said in `notes` (they
reach the report); what cannot apply to a QEMU peer makes the cell not applicable, with
the reason (`why_not`), never a silently different test:

- the chosen sides become `kind: qemu`; a QEMU source on `machine: none` runs `pc` (a
  harness source cannot send a real machine's device state, so a QEMU destination alone
  keeps `none`);
- on a real machine the real guest (harness/realguest) replaces the simulated one: its
  memory is the scenario's (whole MiB, at least 16 MiB), its workload the scenario's
  dirty rate and pattern; fill, content, devices and named blocks describe the simulated
  guest and are dropped (a `blocker` device cannot apply: a real machine has none);
- in postcopy the destination's real guest runs before its memory can be read, so
  `memory: identical` becomes `consistent`;
- transports a QEMU 7.2 peer does not have (`file:`, F3) or that the runner cannot hand
  to QEMU (`fd:`), and peers placed on agent hosts, cannot apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .model import Scenario
from .names import PEER_NAMES, QEMU_MACHINE, REAL_MACHINE

MIB = 1 << 20
MIN_REAL_MEMORY = 16 * MIB
DEFAULT_REAL_MACHINE = "pc"


@dataclass
class Adapted:
    """A scenario rewritten for QEMU peers, or why it cannot be."""

    scenario: Scenario | None
    notes: list[str] = field(default_factory=list)
    why_not: str | None = None


def parse_peers(text: str) -> frozenset[str]:
    """`qemu` (both sides), `source=qemu`, `destination=qemu` or both, comma-separated."""
    if text.strip() == "qemu":
        return frozenset(PEER_NAMES)
    roles: set[str] = set()
    for part in text.split(","):
        role, _, kind = part.strip().partition("=")
        if role not in PEER_NAMES or kind != "qemu":
            raise ValueError(f"--peers {text!r}: expected qemu, source=qemu or "
                             "destination=qemu (comma-separated)")
        roles.add(role)
    return frozenset(roles)


def with_qemu_peers(scenario: Scenario, roles: frozenset[str]) -> Adapted:
    data = scenario.model_dump(mode="json", by_alias=True, exclude_unset=True)
    notes: list[str] = []
    why_not = _not_applicable(scenario, roles)
    if why_not is not None:
        return Adapted(None, why_not=why_not)
    for role in sorted(roles):
        if getattr(scenario, role).kind != "qemu":
            data[role] = {"kind": "qemu"}
            notes.append(f"{role}: a real QEMU")
    kinds = {role: "qemu" if role in roles else getattr(scenario, role).kind
             for role in PEER_NAMES}
    if kinds["source"] == "qemu":
        _real_guest(scenario, data, notes)
        if scenario.postcopy and scenario.expect.memory == "identical" and \
                kinds["destination"] == "qemu":
            data["expect"]["memory"] = "consistent"
            notes.append("expect.memory identical -> consistent: in postcopy the real "
                         "guest runs on the destination before the check")
    try:
        adapted = Scenario.model_validate(data, context={
            "source_file": scenario.source_file})
    except ValidationError as err:
        words = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors()[:3])
        return Adapted(None, why_not=f"not applicable to QEMU peers: {words}")
    return Adapted(adapted, notes)


def _not_applicable(scenario: Scenario, roles: frozenset[str]) -> str | None:
    scheme = scenario.transport.scheme
    if scheme == "file":
        return "not applicable to QEMU peers: QEMU 7.2 has no file: migration URI"
    if scheme == "fd":
        return ("not applicable to QEMU peers: the runner hands fd: sockets to its own "
                "peers on their command line, which QEMU does not take")
    for role in roles:
        if getattr(scenario, role).host is not None:
            return (f"not applicable to QEMU peers: the {role} runs on host "
                    f"{getattr(scenario, role).host}, and QEMU peers run beside the runner")
    if "source" in roles and "blocker" in scenario.guest.devices:
        return ("not applicable to QEMU peers: the blocker device belongs to the simulated "
                "guest; a real machine has no device that blocks migration")
    return None


def _real_guest(scenario: Scenario, data: dict[str, Any], notes: list[str]) -> None:
    guest = data.setdefault("guest", {})
    if scenario.guest.machine == QEMU_MACHINE:
        guest["machine"] = DEFAULT_REAL_MACHINE
        notes.append(f"guest.machine none -> {DEFAULT_REAL_MACHINE}, running the "
                     "harness's own x86 guest")
    elif REAL_MACHINE.fullmatch(scenario.guest.machine) is None:
        return  # the model names the problem
    dropped = [key for key in ("fill", "content", "devices", "blocks") if key in guest]
    for key in dropped:
        del guest[key]
    memory = scenario.guest.total_memory
    real = max(MIN_REAL_MEMORY, -(-memory // MIB) * MIB)
    guest["memory"] = real
    if real != memory or "blocks" in dropped:
        notes.append(f"guest memory {memory} bytes -> {real >> 20} MiB (QEMU's -m)")
    if dropped:
        notes.append(f"dropped {', '.join(dropped)}: the simulated guest's; the real guest "
                     "writes its own pages")


__all__ = ["Adapted", "parse_peers", "with_qemu_peers"]
