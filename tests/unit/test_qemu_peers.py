"""`--peers qemu` and the scenario rules for real machines (harness/scenario/qemu_peers.py,
model.py): what a rewrite changes, what cannot apply, and what a file may not say."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.scenario import ScenarioError, load_scenario, parse_scenario
from harness.scenario.qemu_peers import parse_peers, with_qemu_peers

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "roles"), [
    ("qemu", {"source", "destination"}), ("source=qemu", {"source"}),
    ("destination=qemu", {"destination"}),
    ("source=qemu,destination=qemu", {"source", "destination"})])
def test_peers_option_names_the_sides(text, roles):
    assert parse_peers(text) == roles


@pytest.mark.parametrize("text", ["", "harness", "source=harness", "src=qemu", "qemu,qemu"])
def test_a_wrong_peers_option_is_refused(text):
    with pytest.raises(ValueError, match="expected qemu, source=qemu or destination=qemu"):
        parse_peers(text)


def test_precopy_runs_on_pc_with_the_real_guest():
    sc = load_scenario(REPO / "scenarios/precopy.yaml")
    adapted = with_qemu_peers(sc, parse_peers("qemu"))
    assert adapted.why_not is None and adapted.scenario is not None
    new = adapted.scenario
    assert (new.source.kind, new.destination.kind) == ("qemu", "qemu")
    assert new.guest.machine == "pc" and new.guest.real_machine
    assert new.guest.workload == sc.guest.workload
    assert new.expect == sc.expect and new.steps == sc.steps
    assert any("dropped" in note and "fill" in note for note in adapted.notes)


def test_postcopy_identical_becomes_consistent_with_a_qemu_destination():
    sc = load_scenario(REPO / "scenarios/postcopy.yaml")
    assert sc.expect.memory == "identical"
    both = with_qemu_peers(sc, parse_peers("qemu")).scenario
    assert both is not None and both.expect.memory == "consistent"
    source_only = with_qemu_peers(sc, parse_peers("source=qemu")).scenario
    assert source_only is not None and source_only.expect.memory == "identical"
    assert source_only.destination.kind == "harness" and source_only.guest.machine == "pc"


def test_a_qemu_destination_alone_keeps_machine_none():
    sc = parse_scenario("name: d\n")
    new = with_qemu_peers(sc, parse_peers("destination=qemu")).scenario
    assert new is not None and new.guest.machine == "none"
    assert (new.source.kind, new.destination.kind) == ("harness", "qemu")


def test_a_rule_the_rewrite_breaks_is_named():
    """precopy.yaml's guest has a cpu device, which a QEMU -M none destination lacks."""
    sc = load_scenario(REPO / "scenarios/precopy.yaml")
    adapted = with_qemu_peers(sc, parse_peers("destination=qemu"))
    assert adapted.scenario is None and adapted.why_not is not None
    assert adapted.why_not.startswith("not applicable to QEMU peers: guest.devices[2]: ")
    assert adapted.why_not.endswith("not cpu") and "pydantic" not in adapted.why_not


@pytest.mark.parametrize(("file", "reason"), [
    ("scenarios/precopy-blocker.yaml", "blocker device"),
    ("scenarios/multihost-postcopy.yaml", "runs on host")])
def test_what_cannot_apply_says_why(file, reason):
    adapted = with_qemu_peers(load_scenario(REPO / file), parse_peers("qemu"))
    assert adapted.scenario is None
    assert adapted.why_not is not None and reason in adapted.why_not


def test_a_file_transport_cannot_apply():
    sc = parse_scenario("name: f\ntransport: {uri: 'file:/tmp/x.bin'}\n")
    adapted = with_qemu_peers(sc, parse_peers("qemu"))
    assert adapted.why_not is not None and "no file: migration URI" in adapted.why_not


def test_every_shipped_fault_scenario_rewrites_or_says_why():
    for path in sorted((REPO / "scenarios/faults").glob("*.yaml")):
        adapted = with_qemu_peers(load_scenario(path), parse_peers("qemu"))
        assert (adapted.scenario is None) == (adapted.why_not is not None), path.name


QEMU_PC = "name: r\nguest: {machine: pc, memory: 64MiB%s}\nsource: {kind: qemu}\n" \
          "destination: {kind: qemu}\n"


@pytest.mark.parametrize(("text", "where", "words"), [
    (QEMU_PC % ", fill: 0.2", "guest.fill", "describes the simulated guest"),
    (QEMU_PC % ", devices: [timer, globalstate, cpu]", "guest.devices",
     "has the machine's own devices"),
    (("name: r\nguest: {machine: pc, blocks: [{name: pc.ram, size: 64MiB}]}\n"
     "source: {kind: qemu}\ndestination: {kind: qemu}\n"), "guest.blocks",
     "its RAM blocks are the machine's own"),
    (QEMU_PC.replace("64MiB", "8MiB") % "", "guest.memory", "at least 16MiB"),
    (("name: r\nguest: {machine: q35, memory: 64MiB}\ndestination: {kind: qemu}\n"
      "capabilities: {postcopy-ram: true}\n"), "capabilities.postcopy-ram",
     ("replays the device state of a paused QEMU (precopy, peers beside the runner); "
      "postcopy with --replay-devices is not implemented by the harness peer")),
    (QEMU_PC % ", disks: [{name: d0, size: 16MiB}]", "guest.disks",
     "implemented for a harness source to a QEMU destination only"),
    (QEMU_PC % "" + "capabilities: {postcopy-ram: true}\nexpect: {memory: identical}\n",
     "expect.memory", "use memory: consistent"),
    ("name: r\nexpect: {memory: consistent}\n", "expect.memory",
     "both peers must be kind: qemu on a real machine"),
    ("name: r\nguest: {accel: kvm}\nsource: {kind: qemu}\n", "guest.accel",
     "accel: kvm applies to a real machine"),
])
def test_real_machine_rules(text, where, words):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, file="x.yaml")
    assert where in str(caught.value) and words in str(caught.value)


def test_a_real_machine_scenario_is_valid():
    sc = parse_scenario(QEMU_PC % ", accel: tcg, workload: {dirty-rate: 4MiB/s}" +
                        "capabilities: {postcopy-ram: true}\nexpect: {memory: consistent}\n")
    assert sc.guest.real_machine and sc.guest.accel == "tcg"
    assert not parse_scenario("name: r\n").guest.real_machine
    replay = parse_scenario("name: r\nguest: {machine: pc, memory: 16MiB, disks: [{name: d0, "
                            "size: 16MiB}]}\ndestination: {kind: qemu}\n"
                            "capabilities: {block: true}\n")  # harness/qemu/replay.py
    assert replay.source.kind == "harness" and replay.guest.disks[0].name == "d0"
