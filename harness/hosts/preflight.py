"""`harness hosts check INVENTORY`: can every host run the catalogue?  A table that says.

Strategy: for each host of the inventory, in order, the runner does what a run would do
first -- connect with the host's keys (CURVE), read the agent's greeting (its harness
version must equal ours), measure the clock offset NTP-style (`AgentConnection`) -- then
asks `agent-preflight` for what only the host can tell (control/agent_preflight.py).  The
catalogue (the scenario files, and the fault matrix's QEMU column as the pytest plugin
runs it) is turned into requirements per scenario (`scenario_needs`: a QEMU binary for
QEMU peers, userfaultfd for a QEMU postcopy destination, /dev/kvm for `accel: kvm`,
CAP_NET_ADMIN for link faults plus tbf for link.bandwidth and netem for link.delay), and
each thing a host lacks is named with the scenarios it blocks.  Exit status as `harness
run`'s: 0 every host can run every scenario, 1 a host lacks something one needs, 3 an
agent could not be reached (and nothing is known to be lacking elsewhere).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import __version__
from harness.control import ControlError
from harness.control import agent_messages as am
from harness.runner.agents import AgentConnection, AgentError
from harness.scenario import load_scenario
from harness.scenario.model import Host, LinkFault, Scenario
from harness.scenario.qemu_peers import with_qemu_peers

from .inventory import Inventory

__all__ = ["HostCheck", "catalogue", "check_hosts", "exit_code", "load_catalogue",
           "print_table", "scenario_needs", "to_json"]

CONNECT_TIMEOUT = 5.0
PREFLIGHT_TIMEOUT = 30.0  # the agent's probes run in a thread, each with its own deadline
SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"
#: requirement -> the agent-preflight fact that says whether the host has it
NEEDS = {"qemu": "qemu", "userfaultfd": "userfaultfd", "kvm": "kvm", "net-admin": "net-admin",
         "tbf": "tbf", "netem": "netem"}


@dataclass
class HostCheck:
    """One host's preflight: reachable, its version, clock, facts, and what it lacks."""

    name: str
    host: Host
    error: str | None = None  # None: reachable
    version: str | None = None
    clock: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    lacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # need -> detail, blocks

    @property
    def reachable(self) -> bool:
        return self.error is None


def catalogue(paths: list[Path]) -> list[tuple[str, Scenario]]:
    """(label, scenario) of every file (a directory: its *.yaml, recursively), and for the
    fault matrix (a `faults` directory) the QEMU column too, as `NAME[qemu]`."""
    items: list[tuple[str, Scenario]] = []
    for path in paths:
        files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        for file in files:
            scenario = load_scenario(file)
            items.append((scenario.name, scenario))
            if file.parent.name == "faults":
                adapted = with_qemu_peers(scenario, frozenset({"source", "destination"}))
                if adapted.scenario is not None:
                    items.append((f"{scenario.name}[qemu]", adapted.scenario))
    return items


def scenario_needs(sc: Scenario) -> set[str]:
    """What a host must offer to run this scenario (keys of NEEDS)."""
    kinds = {sc.source.kind, sc.destination.kind}
    needs = {"qemu"} if "qemu" in kinds else set()
    if sc.destination.kind == "qemu" and sc.postcopy:
        needs.add("userfaultfd")
    if "qemu" in kinds and sc.guest.accel == "kvm":
        needs.add("kvm")
    for step in sc.steps:
        if isinstance(step.fault, LinkFault):
            needs.add("net-admin")
            needs.update({"link.bandwidth": {"tbf"}, "link.delay": {"netem"}}.get(
                step.fault.kind, set()))
    return needs


def check_hosts(inventory: Inventory, items: list[tuple[str, Scenario]],
                timeout: float = CONNECT_TIMEOUT) -> list[HostCheck]:
    checks = [_check_one(name, host, timeout) for name, host in inventory.hosts.items()]
    for check in checks:
        if check.reachable:
            check.lacks = _lacks(check, items)
    return checks


def _check_one(name: str, host: Host, timeout: float) -> HostCheck:
    check = HostCheck(name, host)
    conn: AgentConnection | None = None
    try:
        conn = AgentConnection(name, host, f"preflight-{int(time.time())}")
        greeting = conn._greeting(timeout)
        if greeting.role != am.AGENT_ROLE:
            raise AgentError(f"{host.agent} is not an agent (it greets as {greeting.role!r})")
        check.version = greeting.version
        check.clock = conn.measure_clock(4).to_json()
        qemu = str(host.qemu) if host.qemu is not None else None
        check.facts = dict(conn.request(am.Preflight(qemu), timeout=PREFLIGHT_TIMEOUT))
    except (AgentError, ControlError) as err:
        text = str(err)
        check.error = text if name in text else f"agent {name} at {host.agent}: {text}"
    finally:
        if conn is not None:
            conn.client.close()
    return check


def _lacks(check: HostCheck, items: list[tuple[str, Scenario]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    labels = [label for label, _ in items]
    if check.version != __version__:
        out["harness-version"] = {"detail": f"the agent runs harness {check.version}, the "
                                  f"runner {__version__}", "blocks": labels}
    for need, fact in NEEDS.items():
        have = check.facts.get(fact) or {}
        if have.get("ok"):
            continue
        blocks = [label for label, sc in items if need in scenario_needs(sc)]
        out[need] = {"detail": have.get("detail", "not reported by the agent"),
                     "blocks": blocks}
    return out


def exit_code(checks: list[HostCheck]) -> int:
    if any(need.get("blocks") for c in checks for need in c.lacks.values()):
        return 1
    return 3 if any(not c.reachable for c in checks) else 0


def to_json(inventory: Inventory, checks: list[HostCheck], code: int) -> dict[str, Any]:
    return {"inventory": str(inventory.file), "runner-version": __version__, "exit": code,
            "hosts": {c.name: {"agent": c.host.agent, "reachable": c.reachable,
                               "error": c.error, "version": c.version, "clock": c.clock,
                               "facts": c.facts, "lacks": c.lacks} for c in checks}}


def _mark(fact: dict[str, Any] | None) -> str:
    if not fact:
        return "?"
    return "yes" if fact.get("ok") else "NO"


def print_table(checks: list[HostCheck], console: Console) -> None:
    table = Table(title="harness hosts check", title_justify="left")
    for column in ("host", "agent", "version", "clock offset", "cores", "free memory",
                   "kvm", "userfaultfd", "qemu", "tbf", "netem", "net-admin"):
        table.add_column(column)
    for c in checks:
        if not c.reachable:
            table.add_row(c.name, c.host.agent, "unreachable", *[""] * 9)
            continue
        f = c.facts
        qemu = f.get("qemu") or {}
        clock = c.clock or {}
        table.add_row(
            c.name, c.host.agent, c.version or "?",
            f"{clock.get('offset', 0) * 1e3:+.1f} ms (rtt {clock.get('rtt', 0) * 1e3:.1f})",
            str(f.get("cores", "?")), f"{f.get('memory-available', 0) / 2**30:.1f} GiB",
            _mark(f.get("kvm")), _mark(f.get("userfaultfd")),
            qemu.get("version") or "NO", _mark(f.get("tbf")), _mark(f.get("netem")),
            _mark(f.get("net-admin")))
    console.print(table)
    for c in checks:
        if not c.reachable:
            console.print(f"host {c.name}: unreachable: {c.error}", markup=False,
                          soft_wrap=True)
        for need, what in c.lacks.items():
            blocks = what["blocks"]
            shown = ", ".join(blocks[:12]) + (f", ... ({len(blocks)} in all)"
                                              if len(blocks) > 12 else "")
            console.print(f"host {c.name} lacks {need} ({what['detail']}): "
                          + (f"blocks {shown}" if blocks else "no scenario of the catalogue "
                             "needs it"), markup=False, soft_wrap=True)


def load_catalogue(paths: list[Path] | None) -> list[tuple[str, Scenario]]:
    """The scenarios to check against: the given files/directories, else the shipped ones."""
    if not paths:
        paths = [SHIPPED] if SHIPPED.is_dir() else []
    return catalogue(paths)  # ScenarioError for a bad file: exit 2
