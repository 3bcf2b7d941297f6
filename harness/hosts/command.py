"""The command line of hosts: `harness hosts check`, and `harness run --hosts/--place`.

Strategy: thin shells, as in harness/cli.py (which mounts `hosts_app` as `harness hosts`):
the work is in inventory.py, placement.py and preflight.py; here errors become one line on
stderr and DESIGN.md's exit codes (2 bad input, 3 an agent out of reach), never a
traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from .inventory import Inventory

__all__ = ["hosts_app", "hosts_options"]

hosts_app = typer.Typer(help="The hosts of an inventory file: `harness hosts check "
                             "INVENTORY` says whether each can run the scenarios.")


@hosts_app.callback()
def _hosts() -> None:
    """The hosts of an inventory file (hosts: {NAME: {agent, keys, qemu, workdir}})."""


@hosts_app.command("check")
def check(
    inventory: Annotated[Path, typer.Argument(metavar="INVENTORY", help=(
        "The inventory file (YAML: hosts: {NAME: {agent: tcp://ADDR:PORT, keys: DIR, "
        "qemu: PATH, workdir: DIR}})."))],
    json_path: Annotated[Path | None, typer.Option("--json", metavar="FILE",
                                                   help="Write the checks as JSON.")] = None,
    scenarios: Annotated[list[Path] | None, typer.Option(
        "--scenarios", metavar="DIR|FILE", help=(
            "The scenarios the hosts must run (repeatable; default: the shipped "
            "scenarios/, the fault matrix's QEMU column included)."))] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="SECONDS", help="How long to wait for each agent.")] = 5.0,
) -> None:
    """Preflight each host: agent reachable with its keys, harness version, clock offset,
    cores and free memory, /dev/kvm, userfaultfd, QEMU and its version, the tbf and netem
    qdiscs.  What a host lacks is named with the scenarios it blocks.

    Exit status: 0 every host can run every scenario; 1 a host lacks what a scenario
    needs; 2 bad input; 3 an agent could not be reached."""
    from rich.console import Console

    from harness.scenario.loader import ScenarioError

    from . import preflight
    from .inventory import load_inventory

    if json_path is not None and not json_path.resolve().parent.is_dir():
        raise _fail(2, f"--json {json_path}: no such directory {json_path.resolve().parent}")
    try:
        inv = load_inventory(inventory)
        items = preflight.load_catalogue(scenarios)
    except ScenarioError as err:
        raise _fail(2, str(err))
    checks = preflight.check_hosts(inv, items, timeout)
    code = preflight.exit_code(checks)
    preflight.print_table(checks, Console(width=200) if not Console().is_terminal
                          else Console())
    if json_path is not None:
        json_path.write_text(json.dumps(preflight.to_json(inv, checks, code), indent=1))
    raise typer.Exit(code)


def hosts_options(hosts: Path | None, place: str | None
                  ) -> tuple[Inventory | None, dict[str, str] | None]:
    """`harness run --hosts INVENTORY [--place ...]`: ValueError or InventoryError."""
    if place is not None and hosts is None:
        raise ValueError(f"--place {place}: needs --hosts INVENTORY (the hosts it names are "
                         "the inventory's)")
    if hosts is None:
        return None, None
    from .inventory import load_inventory
    from .placement import parse_place

    return load_inventory(hosts), parse_place(place) if place is not None else None


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(f"harness hosts check: {message}", err=True)
    return typer.Exit(code)
