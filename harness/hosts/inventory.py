"""The inventory: the hosts a CI run may place scenarios on, in one YAML file.

Strategy: the file is `hosts: {NAME: {agent, address, keys, qemu, workdir}}` -- exactly a
scenario's `hosts:` block -- so it is read with the scenario loader's own bounded YAML
reading (size, depth and alias bounds, duplicate keys, booleans only true/false) and each
host is validated by the scenario model's `Host`: the same keys, the same messages, the
errors naming file, line and field (`InventoryError`, a `ScenarioError`: exit 2).  Only
`hosts:` and an optional `description:` are allowed at the top.  Relative paths
(`keys:`, `qemu:` when it has a `/`, `workdir:`) resolve against the inventory file's
directory, so an inventory and its keys can move together; a bare `qemu:` name stays a
name looked up on the host's PATH.  The hosts keep the file's order: placement's default
(the first two) and the pytest plugin's pairs (h1+h2, h3+h4, ...) follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.scenario import loader
from harness.scenario.loader import Problem, ScenarioError
from harness.scenario.model import Host, Scenario

__all__ = ["Inventory", "InventoryError", "load_inventory", "parse_inventory"]

TOP_KEYS = ("hosts", "description")


class InventoryError(ScenarioError):
    """An invalid inventory file: every problem, each naming file, line and field."""


@dataclass(frozen=True)
class Inventory:
    """The hosts of an inventory file, in the file's order."""

    file: Path  # absolute
    hosts: dict[str, Host]

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    def pairs(self) -> list[tuple[str, str]]:
        """Hosts two by two in file order (h1+h2, h3+h4, ...); an odd last host is unpaired."""
        names = self.names
        return [(names[i], names[i + 1]) for i in range(0, len(names) - 1, 2)]


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory file; `InventoryError` naming what is wrong."""
    file = str(path)
    try:
        text = loader._read(path)  # bounded, refuses FIFOs and devices
    except ScenarioError as err:
        raise InventoryError(err.problems) from None
    return parse_inventory(text, file, Path(path).resolve().parent)


def parse_inventory(text: str, file: str, base: Path) -> Inventory:
    """An inventory given as YAML text; relative paths resolve against `base`."""
    root = _compose(text, file)
    try:
        data = loader._construct(root, file)
    except ScenarioError as err:
        raise InventoryError(err.problems) from None
    problems = _top_level_problems(root, data, file)
    if not isinstance(data.get("hosts"), dict) or not data["hosts"]:
        raise InventoryError(problems)
    try:
        checked = Scenario.model_validate({"name": "inventory", "hosts": data["hosts"]},
                                          by_name=False)
    except ValidationError as err:
        problems += loader._problems(err, root, file)
    if problems:
        raise InventoryError(loader._sorted(problems))
    hosts = {name: _resolved(host, base) for name, host in checked.hosts.items()}
    return Inventory(Path(file).resolve(), hosts)


def _compose(text: str, file: str) -> yaml.MappingNode:
    try:
        return loader._compose(text, file)  # type: ignore[return-value]
    except ScenarioError as err:  # its words for a root that is not a mapping: a scenario's
        problems = [Problem(p.file, p.line, p.column, p.field,
                            p.reason.replace("a scenario file is a mapping of keys (name:, "
                                             "guest:, steps:, ...)", "an inventory is a mapping "
                                             "with hosts:").replace(
                                "a scenario is a mapping with keys such as name:, guest: and "
                                "steps:", "an inventory is a mapping with hosts:"))
                    for p in err.problems]
        raise InventoryError(problems) from None


def _top_level_problems(root: yaml.MappingNode, data: dict[str, Any], file: str
                        ) -> list[Problem]:
    problems = []
    for key, _ in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value not in TOP_KEYS:
            problems.append(loader._at(file, key, key.value, f"unknown key {key.value!r} "
                                       f"(an inventory has: {', '.join(TOP_KEYS)})"))
    hosts = data.get("hosts")
    if "hosts" not in data:
        problems.append(loader._at(file, root, None, "missing required key 'hosts' (hosts: "
                                   "{NAME: {agent: tcp://ADDR:PORT, keys: DIR}, ...})"))
    elif not isinstance(hosts, dict) or not hosts:
        node = next(v for k, v in root.value if getattr(k, "value", None) == "hosts")
        problems.append(loader._at(file, node, "hosts", "expected a non-empty mapping of host "
                                   "names to {agent: ..., keys: ...}"))
    if "description" in data and not isinstance(data["description"], str):
        node = next(v for k, v in root.value if getattr(k, "value", None) == "description")
        problems.append(loader._at(file, node, "description", "expected a string"))
    return problems


def _resolved(host: Host, base: Path) -> Host:
    """Relative paths against the inventory's directory; a bare `qemu:` name stays a name."""
    update: dict[str, Path] = {}
    for key in ("keys", "workdir", "qemu"):
        value: Path | None = getattr(host, key)
        if value is None or value.is_absolute():
            continue
        if key == "qemu" and "/" not in str(value):
            continue  # looked up on the host's PATH
        update[key] = base / value
    return host.model_copy(update=update) if update else host
