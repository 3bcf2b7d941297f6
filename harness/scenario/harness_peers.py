"""`--peers harness`: the same scenario with the harness's own peers where it names QEMU.

Strategy: the mirror of qemu_peers.py, for the differential matrix -- a scenario written
for real QEMU peers (scenarios/qemu-7.2/: QEMU 7.2's silent losses and hangs) is
rewritten, as data, into the one a user would write for the harness's peers, and
validated again by the model, so every rule of the file format still holds (a setting
the harness peer refuses makes the cell not applicable, with the model's one-line
reason).  The peer's own `capabilities:` and `parameters:` are kept: they are what the
scenario tests.  What the rewrite changes is said in `notes`:

- the chosen sides become `kind: harness`; their QEMU-only `args:` and `binary:` go;
- a real machine (pc, q35...) becomes the simulated guest (`machine: none`, the same
  memory) and `memory: consistent` becomes `identical`: the harness peers move RAM and
  their own devices, not a real machine's;
- `--peers` as a whole: `harness`, `qemu`, or per side `source=qemu,destination=harness`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .model import Scenario
from .names import PEER_NAMES, QEMU_MACHINE
from .qemu_peers import Adapted, with_qemu_peers

KINDS = ("qemu", "harness")


def parse_peer_kinds(text: str) -> dict[str, str]:
    """`qemu` or `harness` (both sides), or `ROLE=KIND` comma-separated: role -> kind."""
    if text.strip() in KINDS:
        return {role: text.strip() for role in PEER_NAMES}
    kinds: dict[str, str] = {}
    for part in text.split(","):
        role, _, kind = part.strip().partition("=")
        if role not in PEER_NAMES or kind not in KINDS or role in kinds:
            raise ValueError(f"--peers {text!r}: expected qemu, harness, or ROLE=KIND "
                             "comma-separated (ROLE source or destination, KIND qemu or "
                             "harness)")
        kinds[role] = kind
    return kinds


def with_peers(scenario: Scenario, kinds: Mapping[str, str]) -> Adapted:
    """`scenario` with each role of `kinds` run by that kind of peer."""
    harness = frozenset(role for role, kind in kinds.items() if kind == "harness")
    qemu = frozenset(role for role, kind in kinds.items() if kind == "qemu")
    first = with_harness_peers(scenario, harness) if harness else Adapted(scenario)
    if first.scenario is None or not qemu:
        return first
    second = with_qemu_peers(first.scenario, qemu)
    return Adapted(second.scenario, first.notes + second.notes, second.why_not)


def with_harness_peers(scenario: Scenario, roles: frozenset[str]) -> Adapted:
    data = scenario.model_dump(mode="json", by_alias=True, exclude_unset=True)
    notes: list[str] = []
    for role in sorted(roles):
        spec = getattr(scenario, role)
        if spec.kind == "harness":
            continue
        if spec.host is not None:
            return Adapted(None, why_not=f"not applicable to harness peers: the {role} runs "
                           f"on host {spec.host}")
        own = {key: value for key, value in data.get(role, {}).items()
               if key in ("capabilities", "parameters")}
        data[role] = {"kind": "harness", **own}
        notes.append(f"{role}: the harness's own peer")
    if scenario.guest.real_machine:
        _simulated_guest(scenario, data, notes)
    try:
        adapted = Scenario.model_validate(data, context={
            "source_file": scenario.source_file})
    except ValidationError as err:
        words = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors()[:3])
        return Adapted(None, why_not=f"not applicable to harness peers: {words}")
    return Adapted(adapted, notes)


def _simulated_guest(scenario: Scenario, data: dict[str, Any], notes: list[str]) -> None:
    guest = data.setdefault("guest", {})
    guest["machine"] = QEMU_MACHINE
    guest.pop("accel", None)
    notes.append(f"guest.machine {scenario.guest.machine} -> {QEMU_MACHINE}: the harness "
                 "peers migrate the simulated guest")
    expect = data.get("expect", {})
    if expect.get("memory") == "consistent":
        expect["memory"] = "identical"
        notes.append("expect.memory consistent -> identical (the simulated guest)")


__all__ = ["KINDS", "parse_peer_kinds", "with_harness_peers", "with_peers"]
