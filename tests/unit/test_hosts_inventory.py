"""The inventory file and placing scenarios on its hosts (harness/hosts): pure, no sockets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.hosts.inventory import InventoryError, load_inventory
from harness.hosts.placement import (
    PlacementError,
    across_hosts_skip,
    parse_place,
    place,
    place_each,
)
from harness.hosts.preflight import catalogue, scenario_needs
from harness.scenario import load_scenario, parse_scenario
from harness.scenario.qemu_peers import with_qemu_peers

REPO = Path(__file__).resolve().parents[2]
PRECOPY = REPO / "scenarios" / "precopy.yaml"
INVENTORY = """\
description: two lab hosts
hosts:
  h1: {agent: "tcp://10.0.0.1:7340", keys: keys, workdir: runs, qemu: qemu-system-x86_64}
  h2: {agent: "tcp://10.0.0.2:7340", qemu: bin/qemu}
  h3: {agent: "tcp://10.0.0.3:7340", keys: /etc/harness/keys}
"""


def _inventory(tmp_path: Path, text: str = INVENTORY):
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return load_inventory(path)


def _problems(err: pytest.ExceptionInfo) -> str:
    return str(err.value)


def test_an_inventory_keeps_the_file_order_and_resolves_relative_paths(tmp_path):
    inv = _inventory(tmp_path)
    assert inv.names == ["h1", "h2", "h3"]
    assert inv.pairs() == [("h1", "h2")]  # h3 has no partner
    assert inv.hosts["h1"].keys == tmp_path / "keys"
    assert inv.hosts["h1"].workdir == tmp_path / "runs"
    assert str(inv.hosts["h1"].qemu) == "qemu-system-x86_64"  # a name: the host's PATH
    assert inv.hosts["h2"].qemu == tmp_path / "bin" / "qemu"
    assert inv.hosts["h3"].keys == Path("/etc/harness/keys")
    assert inv.hosts["h2"].peer_address == "10.0.0.2"


@pytest.mark.parametrize(("text", "where", "words"), [
    ("hosts: {}\n", ":1:8: hosts:", "non-empty mapping"),
    ("hosts:\n  a: {agent: nope}\n", ":2:14: hosts.a.agent:", "not an agent endpoint"),
    ("hosts:\n  a: {agent: 'tcp://x:1', bogus: 1}\n", ":2:27: hosts.a.bogus:",
     "unknown key 'bogus'"),
    ("hosts:\n  a: {agent: 'tcp://x:1'}\npairs: 2\n", ":3:1: pairs:", "unknown key 'pairs'"),
    ("hosts:\n  a: {agent: 'tcp://x:1'}\n  a: {agent: 'tcp://y:1'}\n", ":3:3: hosts.a:",
     "duplicate key 'a'"),
    ("- a\n", ":1:1:", "an inventory is a mapping with hosts:"),
    ("", ":1:1:", "the file is empty: an inventory"),
    ("description: x\n", ":1:1:", "missing required key 'hosts'"),
    ("hosts: [\n", ":", "invalid YAML"),
])
def test_an_invalid_inventory_names_file_line_and_field(tmp_path, text, where, words):
    with pytest.raises(InventoryError) as err:
        _inventory(tmp_path, text)
    message = _problems(err)
    assert message.startswith(str(tmp_path / "inventory.yaml") + where), message
    assert words in message


def test_a_missing_inventory_says_so(tmp_path):
    with pytest.raises(InventoryError, match="no such file"):
        load_inventory(tmp_path / "absent.yaml")


def test_without_place_the_first_two_hosts_take_source_and_destination(tmp_path):
    placed = place(load_scenario(PRECOPY), _inventory(tmp_path))
    assert (placed.source.host, placed.destination.host) == ("h1", "h2")
    assert placed.proxy.host is None  # the model's default: the destination's host
    assert list(placed.hosts) == ["h1", "h2", "h3"]
    assert placed.source_file == PRECOPY
    assert across_hosts_skip(placed) is None


def test_place_chooses_each_role_and_one_host_may_take_both(tmp_path):
    inv = _inventory(tmp_path)
    placed = place(load_scenario(PRECOPY), inv,
                   parse_place("source=h3, destination=h1, proxy=h1"))
    assert (placed.source.host, placed.destination.host, placed.proxy.host) == \
        ("h3", "h1", "h1")
    only_source = place(load_scenario(PRECOPY), inv, {"source": "h2"})
    assert (only_source.source.host, only_source.destination.host) == ("h2", "h1")
    one = _inventory(tmp_path, "hosts:\n  solo: {agent: 'tcp://10.0.0.9:1'}\n")
    placed = place(load_scenario(PRECOPY), one)
    assert (placed.source.host, placed.destination.host) == ("solo", "solo")


@pytest.mark.parametrize(("text", "words"), [
    ("source=h1,nowhere=h2", "unknown role 'nowhere'"),
    ("source=h1,source=h2", "source is given twice (source=h1 and source=h2)"),
    ("source", "'source' is not ROLE=HOST"),
    ("source=", "'source=' is not ROLE=HOST"),
])
def test_a_bad_place_option_names_the_part(text, words):
    with pytest.raises(ValueError, match="--place") as err:
        parse_place(text)
    assert words in str(err.value)


def test_an_unknown_host_in_place_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(PlacementError) as err:
        place(load_scenario(PRECOPY), _inventory(tmp_path), {"destination": "h9"})
    assert "--place destination=h9: 'h9' is not a host of this inventory (hosts: h1, h2, " \
           "h3)" in str(err.value)


def _own_hosts(tmp_path: Path, host_a: str, body: str = "") -> object:
    path = tmp_path / "own.yaml"
    path.write_text(f"hosts:\n  h1: {host_a}\n  lab: {{agent: 'tcp://10.9.9.9:1'}}\n{body}")
    return load_scenario(path)


def test_a_scenario_host_equal_to_the_inventorys_is_fine_and_its_own_hosts_stay(tmp_path):
    inv = _inventory(tmp_path)
    scenario = _own_hosts(tmp_path, f"{{agent: 'tcp://10.0.0.1:7340', keys: {tmp_path}/keys, "
                                    f"workdir: {tmp_path}/runs, qemu: qemu-system-x86_64}}")
    placed = place(scenario, inv)
    assert placed.hosts["lab"].agent == "tcp://10.9.9.9:1"
    assert placed.hosts["h1"] == inv.hosts["h1"]


def test_a_scenario_host_that_differs_names_both_files_and_the_field(tmp_path):
    inv = _inventory(tmp_path)
    scenario = _own_hosts(tmp_path, "{agent: 'tcp://10.0.0.1:9999'}")
    with pytest.raises(PlacementError) as err:
        place(scenario, inv)
    text = str(err.value)
    assert f"{tmp_path}/own.yaml: hosts.h1.agent: host h1 is also in the inventory " \
           f"{tmp_path}/inventory.yaml with agent: tcp://10.0.0.1:7340, here " \
           "tcp://10.0.0.1:9999" in text
    assert "hosts.h1.keys" in text  # every field that differs


def test_a_scenario_that_places_its_peers_keeps_them_and_a_contrary_place_is_an_error(
        tmp_path):
    inv = _inventory(tmp_path)
    scenario = _own_hosts(tmp_path, "{agent: 'tcp://10.0.0.1:7340'}",
                          "source: {host: lab}\ndestination: {host: lab}\n")
    inv.hosts["h1"] = scenario.hosts["h1"]  # equal: only the peers' hosts are at stake
    assert place(scenario, inv).source.host == "lab"  # no --place: the scenario's own
    assert place(scenario, inv, {"source": "lab"}).destination.host == "lab"
    with pytest.raises(PlacementError) as err:
        place(scenario, inv, {"source": "h2"})
    assert "source.host: the scenario places the source on host lab, but --place says " \
           "source=h2" in str(err.value)
    assert str(tmp_path / "own.yaml") in str(err.value)
    assert str(tmp_path / "inventory.yaml") in str(err.value)


def test_a_link_fault_host_must_exist_after_placement(tmp_path):
    inv = _inventory(tmp_path)
    good = tmp_path / "link.yaml"
    good.write_text("hosts: {h2: {agent: 'tcp://10.0.0.2:7340', qemu: bin/qemu}}\nsteps:\n"
                    "  - on: {pass: 1}\n    fault: {kind: link.down, host: h2, duration: 1s}\n")
    inv.hosts["h2"] = load_scenario(good).hosts["h2"]  # the scenario's, relative to cwd
    placed = place(load_scenario(good), inv)
    assert placed.steps[0].fault.host == "h2"
    assert (placed.source.host, placed.destination.host) == ("h1", "h2")
    bad = parse_scenario("name: x\nhosts: {a: {agent: 'tcp://1.2.3.4:1'}}\nsteps:\n"
                         "  - on: {pass: 1}\n    fault: {kind: link.down, host: a}\n")
    moved = bad.model_copy(update={"hosts": {}})  # a scenario whose host is gone
    with pytest.raises(PlacementError) as err:
        place(moved, inv)
    assert "steps[0].fault.host" in str(err.value) and "'a' is not one of the hosts" in \
        str(err.value)


def test_place_each_reports_every_scenarios_problems_at_once(tmp_path):
    inv = _inventory(tmp_path)
    with pytest.raises(PlacementError) as err:
        place_each([load_scenario(PRECOPY)] * 2, inv, {"source": "zz"})
    assert len(err.value.problems) == 2


def test_placement_composes_with_qemu_peers(tmp_path):
    inv = _inventory(tmp_path)
    adapted = with_qemu_peers(load_scenario(PRECOPY), frozenset({"source", "destination"}))
    assert adapted.scenario is not None
    placed = place(adapted.scenario, inv, {"source": "h2", "destination": "h3"})
    assert (placed.source.kind, placed.destination.kind) == ("qemu", "qemu")
    assert (placed.source.host, placed.destination.host) == ("h2", "h3")
    assert placed.guest.machine == adapted.scenario.guest.machine


def test_a_unix_transport_cannot_run_across_hosts(tmp_path):
    placed = place(load_scenario(REPO / "scenarios" / "precopy-unix.yaml"),
                   _inventory(tmp_path))
    assert "cannot run across hosts: transport: unix" in across_hosts_skip(placed)


def test_scenario_needs_names_what_a_host_must_offer():
    items = dict(catalogue([REPO / "scenarios"]))
    assert scenario_needs(items["precopy"]) == set()
    assert scenario_needs(items["postcopy-qemu-destination"]) == {"qemu", "userfaultfd"}
    assert scenario_needs(items["precopy-qemu-source"]) == {"qemu"}
    assert scenario_needs(items["multihost-postcopy"]) == {"net-admin", "tbf"}
    assert "precopy-kill-source-pass[qemu]" in items  # the fault matrix's QEMU column
    assert "qemu" in scenario_needs(items["precopy-kill-source-pass[qemu]"])


def test_pairs_are_taken_exclusively_and_a_full_house_names_who_holds_them(tmp_path):
    import time

    from harness.hosts.pairs import NoFreePair, host_pair, lock_dir

    inv = _inventory(tmp_path, "hosts:\n" + "".join(
        f"  h{i}: {{agent: 'tcp://10.0.0.{i}:1'}}\n" for i in range(1, 5)))
    with host_pair(inv, 1, root=tmp_path) as first, host_pair(inv, 1, root=tmp_path) as second:
        assert {first, second} == {("h1", "h2"), ("h3", "h4")}
        started = time.monotonic()
        with pytest.raises(NoFreePair) as err, host_pair(inv, 0.3, root=tmp_path):
            pass
        assert time.monotonic() - started >= 0.3
        assert f"h1+h2 (pid {os.getpid()}), h3+h4 (pid {os.getpid()})" in str(err.value)
    with host_pair(inv, 0, root=tmp_path) as again:  # released at the end of the block
        assert again == ("h1", "h2")
    assert (lock_dir(inv, tmp_path).stat().st_mode & 0o777) == 0o700
