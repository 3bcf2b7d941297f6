"""Per-peer settings, `--peers harness`, and the oracle of QEMU 7.2's findings, without
processes: what each peer gets, what is refused (file:line:field), how a scenario for
QEMU peers is rewritten for the harness's, and what completed-means-delivered and the
hang namer say about given evidence."""

from __future__ import annotations

import numpy as np
import pytest

from harness.invariants.base import Evidence, Expectations
from harness.invariants.delivered import CompletedMeansDelivered
from harness.runner.hang import blocked_in
from harness.runner.result import PeerOutcome
from harness.scenario import ScenarioError, load_scenario, parse_scenario
from harness.scenario.harness_peers import parse_peer_kinds, with_peers
from tests.conftest import REPO

FINDINGS = REPO / "scenarios" / "qemu-7.2" / "findings"

PER_PEER = """\
name: per-peer
source: {kind: qemu, parameters: {multifd-channels: 3, max-bandwidth: 1MiB}}
destination: {kind: qemu, capabilities: {multifd: false}}
capabilities: {multifd: true, return-path: true}
parameters: {multifd-channels: 2, downtime-limit: 100}
"""


def test_each_peer_gets_the_scenarios_settings_with_its_own_over_them():
    sc = parse_scenario(PER_PEER)
    assert sc.parameters_of("source") == {"multifd-channels": 3, "max-bandwidth": 1 << 20,
                                          "downtime-limit": 100}
    assert sc.parameters_of("destination") == {"multifd-channels": 2, "downtime-limit": 100}
    assert sc.capabilities_of("source") == {"multifd": True, "return-path": True}
    assert sc.capabilities_of("destination") == {"multifd": False, "return-path": True}
    assert sc.qmp_capabilities("destination") == [
        {"capability": "multifd", "state": False},
        {"capability": "return-path", "state": True}]


@pytest.mark.parametrize("peer, where, words", [
    ("{kind: qemu, parameters: {multifd-channels: 0}}", ("3:53: source.parameters."
     "multifd-channels"), "multifd-channels expects a value between 1 and 255, got 0"),
    ("{kind: qemu, capabilities: {multifd: true, bogus: true}}", ("3:52: source.capabilities."
     "bogus"), "'bogus' is not a migration capability"),
    ("{kind: qemu, capabilities: {postcopy-ram: true}}", ("3:37: source.capabilities."
     "postcopy-ram"), "postcopy-ram applies to both peers: set it in the scenario's"),
    ("{kind: harness, parameters: {announce-rounds: 3}}", ("3:55: source.parameters."
     "announce-rounds"), "announce-rounds is not implemented by the harness peer (only its default 5) (source.kind: harness"),
])
def test_a_peers_own_settings_are_checked_where_they_are_written(peer, where, words):
    text = f"name: bad\ndestination: {{kind: qemu}}\nsource: {peer}\n"
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, file="bad.yaml")
    assert f"bad.yaml:{where}: {words}" in str(err.value)


def test_peer_kinds_parse_and_refuse_in_one_line():
    assert parse_peer_kinds("harness") == {"source": "harness", "destination": "harness"}
    assert parse_peer_kinds("source=qemu,destination=harness") == {
        "source": "qemu", "destination": "harness"}
    with pytest.raises(ValueError, match="--peers 'source=kvm': expected qemu, harness"):
        parse_peer_kinds("source=kvm")


def test_a_finding_rewritten_for_harness_peers_keeps_each_peers_own_settings():
    adapted = with_peers(load_scenario(FINDINGS / "multifd-channels-3-to-2.yaml"),
                         parse_peer_kinds("harness"))
    assert adapted.why_not is None and adapted.scenario is not None
    sc = adapted.scenario
    assert (sc.source.kind, sc.destination.kind) == ("harness", "harness")
    assert sc.parameters_of("source")["multifd-channels"] == 3
    assert sc.parameters_of("destination")["multifd-channels"] == 2
    assert adapted.notes == ["destination: the harness's own peer",
                             "source: the harness's own peer"]


def _evidence(src: str, dst: str, error: str | None = None,
              differ: int = 0, exit_code: int | None = None) -> Evidence:
    ev = Evidence(Expectations(delivered=True), PeerOutcome(kind="qemu", status=src),
                  PeerOutcome(kind="qemu", status=dst, error=error, exit_code=exit_code))
    if dst == "completed" and exit_code is None:
        pages = np.arange(8, dtype=np.uint64)
        moved = pages.copy()
        moved[:differ] += 100
        ev.source_digests, ev.destination_digests = {"ram": pages}, {"ram": moved}
    return ev


@pytest.mark.parametrize("evidence, ok, detail", [
    (_evidence("completed", "completed"), True, "both completed, every page delivered"),
    (_evidence("failed", "failed"), True, "the source ended failed: it claims no delivery"),
    (_evidence("completed", "failed", "load of migration failed"), False,
     ("the source reports completed, but the destination ended failed (load of migration "
     "failed)")),
    (_evidence("completed", "completed", differ=3), False, ("the source reports completed, "
     "but on the destination ram: 3 pages differ (first at 0x0, 0x1000, 0x2000)")),
    (_evidence("completed", "completed", "exited with status -6", exit_code=-6), False,
     ("the source reports completed, but the destination, completed, then died (exited "
     "with status -6)")),  # multifd + postcopy-ram: QEMU 7.2 aborts in yank at the end
])
def test_completed_means_delivered(evidence, ok, detail):
    inv = CompletedMeansDelivered()
    assert inv.applies(evidence)
    result = inv.check(evidence)
    assert (result.ok, result.detail) == (ok, detail)
    assert not inv.applies(Evidence(Expectations(), evidence.source, evidence.destination))


def test_blocked_in_names_the_main_threads_system_call():
    stacks = ("thread 7 qemu: S (sleeping), waiting in wait_woken\n"
              "    [<0>] tcp_recvmsg+0xaf/0x220\n    [<0>] __sys_recvmsg+0x9d/0x100\n"
              "thread 8 qemu: S (sleeping), waiting in futex_do_wait\n"
              "    [<0>] __x64_sys_futex+0x12d/0x230")
    assert blocked_in(stacks, 7) == "recvmsg() (wait_woken)"
    assert blocked_in(stacks, 8) == "futex() (futex_do_wait)"
    assert blocked_in(stacks, 9) == "an unknown place (its main thread is not in the stacks)"
