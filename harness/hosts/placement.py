"""Placing a scenario on an inventory's hosts: `harness run --hosts INVENTORY [--place ...]`.

Strategy: a pure function of data, `place(scenario, inventory, placement) -> Scenario`,
done before anything starts: the scenario is dumped, given the inventory's hosts and its
peers' (and the proxy's) `host:`, and validated again by the model, so every rule of the
file format holds for the placed scenario too (a link fault's `host:` must name a host
that exists after placement).  Nothing is silently overridden: a scenario host with the
inventory's name must equal it field by field, and a peer the scenario already places
stays where it is unless `--place` says the same; each conflict is a problem naming both
files (or the option) and the field, raised together as a `PlacementError` (exit 2).
Without `--place`, an unplaced role takes the first inventory host the other role does
not hold (h1 the source, h2 the destination); one host takes both.  The proxy is placed
only when asked (`proxy=HOST` or the scenario's `proxy.host`); else the model's default
holds (the destination's host).  `placement_record` is what the report says of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.scenario import loader
from harness.scenario.loader import Problem, ScenarioError
from harness.scenario.model import Host, Scenario

from .inventory import Inventory

__all__ = ["PLACE_ROLES", "PlacementError", "across_hosts_skip", "parse_place", "place",
           "place_each", "placement_record", "record_placement"]

PLACE_ROLES = ("source", "destination", "proxy")
PEER_ROLES = ("source", "destination")
HOST_FIELDS = ("agent", "address", "keys", "qemu", "workdir")


class PlacementError(ScenarioError):
    """A scenario that cannot be placed as asked; each problem names what conflicts."""


def parse_place(text: str) -> dict[str, str]:
    """`source=H,destination=H[,proxy=H]` -> {role: host}; ValueError naming the part."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        role, sep, host = part.partition("=")
        role, host = role.strip(), host.strip()
        if not sep or not role or not host:
            raise ValueError(f"--place {text!r}: {part!r} is not ROLE=HOST (expected "
                             "source=HOST,destination=HOST[,proxy=HOST])")
        if role not in PLACE_ROLES:
            raise ValueError(f"--place {text!r}: unknown role {role!r} (roles: "
                             f"{', '.join(PLACE_ROLES)})")
        if role in out:
            raise ValueError(f"--place {text!r}: {role} is given twice ({role}={out[role]} "
                             f"and {role}={host})")
        out[role] = host
    return out


def place(scenario: Scenario, inventory: Inventory,
          placement: Mapping[str, str] | None = None) -> Scenario:
    """The scenario with its peers (and proxy) on the inventory's hosts."""
    placement = dict(placement or {})
    file = str(scenario.source_file or scenario.name)
    hosts, problems = _merged_hosts(scenario, inventory, file)
    problems += _unknown_hosts(placement, inventory, hosts)
    roles, role_problems = _roles(scenario, inventory, placement, file)
    problems += role_problems
    if problems:
        raise PlacementError(problems)
    data = scenario.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data["hosts"] = {name: host.model_dump(mode="json", by_alias=True, exclude_none=True)
                     for name, host in hosts.items()}
    for role in PLACE_ROLES:
        if roles.get(role) is not None:
            data[role] = {**data.get(role, {}), "host": roles[role]}
    try:
        return Scenario.model_validate(data, by_name=False,
                                       context={"source_file": scenario.source_file})
    except ValidationError as err:
        raise PlacementError(_validation_problems(err, scenario, inventory)) from None


def placement_record(scenario: Scenario, inventory: Inventory | None,
                     proxy_ran: bool) -> dict[str, Any]:
    """The report's `placement`: where each peer ran (and the proxy, when one ran)."""
    out: dict[str, Any] = {role: getattr(scenario, role).host for role in PEER_ROLES}
    if proxy_ran:
        out["proxy"] = scenario.proxy.host or scenario.destination.host
    if inventory is not None:
        out["inventory"] = str(inventory.file)
    return out


def _unknown_hosts(placement: dict[str, str], inventory: Inventory,
                   hosts: dict[str, Host]) -> list[Problem]:
    """--place names a host of the inventory (or of the scenario's own hosts:)."""
    known = ", ".join(hosts)
    return [Problem(str(inventory.file), None, None, None, f"--place {role}={host}: {host!r} "
                    f"is not a host of this inventory (hosts: {known})")
            for role, host in placement.items() if host not in hosts]


def _merged_hosts(scenario: Scenario, inventory: Inventory, file: str
                  ) -> tuple[dict[str, Host], list[Problem]]:
    """The inventory's hosts, then the scenario's own; a name in both must be equal."""
    hosts = dict(inventory.hosts)
    problems = []
    for name, own in scenario.hosts.items():
        theirs = inventory.hosts.get(name)
        if theirs is None:
            hosts[name] = own
            continue
        for key in HOST_FIELDS:
            mine, other = _comparable(getattr(own, key)), _comparable(getattr(theirs, key))
            if mine != other:
                problems.append(Problem(file, None, None, f"hosts.{name}.{key}", (
                    f"host {name} is also in the inventory {inventory.file} with {key}: "
                    f"{other if other is not None else '(not given)'}, here "
                    f"{mine if mine is not None else '(not given)'}: make them equal or "
                    f"rename one")))
    return hosts, problems


def _comparable(value: Any) -> str | None:
    if isinstance(value, Path):
        return str(value.resolve()) if "/" in str(value) else str(value)
    return value


def _roles(scenario: Scenario, inventory: Inventory, placement: dict[str, str], file: str
           ) -> tuple[dict[str, str | None], list[Problem]]:
    roles: dict[str, str | None] = {}
    problems = []
    for role in PLACE_ROLES:
        own = getattr(scenario, role).host
        wanted = placement.get(role)
        if own is not None and wanted is not None and own != wanted:
            problems.append(Problem(file, None, None, f"{role}.host", (
                f"the scenario places the {role} on host {own}, but --place says "
                f"{role}={wanted} (inventory {inventory.file}): drop one of them")))
        roles[role] = own or wanted
    for role in PEER_ROLES:  # unplaced peers: the first hosts the other role does not hold
        if roles[role] is None:
            other = roles["destination" if role == "source" else "source"]
            free = [name for name in inventory.names if name != other]
            roles[role] = free[0] if free else inventory.names[0]
    return roles, problems


def _validation_problems(err: ValidationError, scenario: Scenario, inventory: Inventory
                         ) -> list[Problem]:
    """The placed scenario's problems, on the scenario file's lines when it has one."""
    file = str(scenario.source_file or scenario.name)
    suffix = f" (after placing it on the hosts of {inventory.file})"
    root = None
    if scenario.source_file is not None:
        try:
            root = loader._compose(loader._read(scenario.source_file), file)
        except ScenarioError:
            root = None
    if root is not None:
        return [Problem(p.file, p.line, p.column, p.field, p.reason + suffix)
                for p in loader._sorted(loader._problems(err, root, file))]
    return [Problem(file, None, None, ".".join(str(x) for x in e["loc"]) or None,
                    str(e["msg"]).removeprefix("Value error, ") + suffix)
            for e in err.errors()]


def place_each(scenarios: list[Scenario], inventory: Inventory,
               placement: Mapping[str, str] | None) -> list[Scenario]:
    """Every scenario placed, in order; one PlacementError with all their problems."""
    placed: list[Scenario] = []
    problems: list[Problem] = []
    for scenario in scenarios:
        try:
            placed.append(place(scenario, inventory, placement))
        except PlacementError as err:
            problems += err.problems
            placed.append(scenario)
    if problems:
        raise PlacementError(problems)
    return placed


def across_hosts_skip(scenario: Scenario) -> str | None:
    """Why a placed scenario cannot run across hosts at all (a unix: transport, ...): the
    runner's own placement rules, said before anything starts (verdict skip)."""
    from harness.runner.agent_pool import placement_problems

    problems = placement_problems(scenario)
    return "cannot run across hosts: " + "; ".join(problems) if problems else None


def record_placement(result: Any, scenario: Scenario, inventory: Inventory | None) -> None:
    """The report's `placement` (where each peer and the proxy ran) and each host's
    `roles`, on a `ScenarioResult` whose peers ran on hosts."""
    if scenario.source.host is None and scenario.destination.host is None:
        return
    proxy_ran = any(t.peer == "proxy" and t.name == "started" for t in result.timeline)
    result.placement = placement_record(scenario, inventory, proxy_ran)
    for name, host in result.hosts.items():
        host["roles"] = [role for role in PLACE_ROLES if result.placement.get(role) == name]
