"""QEMU's status tables and the capability/parameter checks, without any process."""

from __future__ import annotations

import pytest

from harness.invariants import Evidence, check_all
from harness.invariants.base import Expectations
from harness.migration.config import MIGRATION_ACTIVE, ConfigError, MigrationConfig
from harness.migration.status import (
    IllegalTransition,
    MigrationStatus,
    destination_machine,
    source_machine,
)
from harness.runner.result import PeerOutcome

S = MigrationStatus


def test_source_goes_through_qemus_precopy_path_and_records_it():
    m = source_machine()
    seen = []
    m.on_change(lambda t: seen.append((t.old, t.new)))
    assert m.set(S.NONE, S.SETUP) and m.set(S.SETUP, S.ACTIVE) and m.set(S.ACTIVE, S.COMPLETED)
    assert seen == [(S.NONE, S.SETUP), (S.SETUP, S.ACTIVE), (S.ACTIVE, S.COMPLETED)]
    assert m.set(S.COMPLETED, S.SETUP)  # a new migrate after the last one ended


def test_transition_from_a_state_we_left_does_nothing():
    m = source_machine()
    m.set(S.NONE, S.SETUP)
    assert m.set(S.NONE, S.SETUP) is False  # compare-and-swap, as migrate_set_state
    assert m.status is S.SETUP and len(m.history) == 1


@pytest.mark.parametrize("old,new", [(S.SETUP, S.COMPLETED), (S.CANCELLED, S.ACTIVE),
                                     (S.ACTIVE, S.CANCELLED)])
def test_illegal_source_transitions_raise_with_one_message(old, new):
    m = source_machine()
    m._status = old
    with pytest.raises(IllegalTransition, match=f"^source: illegal migration status "
                                                f"transition {old} -> {new}$"):
        m.set(old, new)


def test_destination_never_cancels():
    m = destination_machine()
    m.set(S.NONE, S.SETUP)
    m.set(S.SETUP, S.ACTIVE)
    with pytest.raises(IllegalTransition):
        m.set(S.ACTIVE, S.CANCELLING)


def test_parameters_are_checked_with_qemus_words():
    c = MigrationConfig.default()
    with pytest.raises(ConfigError, match=r"^Parameter 'downtime_limit' expects an integer in "
                                          r"the range of 0 to \(2000 \* 1000\) ms$"):
        c.set_parameters({"downtime-limit": 2000 * 1000 + 1}, running=False)
    with pytest.raises(ConfigError, match="^Parameter 'compress_level' expects a value "
                                          "between 0 and 9$"):
        c.set_parameters({"compress-level": 10}, running=False)
    with pytest.raises(ConfigError, match="xbzrle_cache_size' expects a power of two"):
        c.set_parameters({"xbzrle-cache-size": 5000}, running=False)
    with pytest.raises(ConfigError, match="^Parameter 'no-such' is unexpected$"):
        c.set_parameters({"no-such": 1}, running=False)
    assert c.param("downtime-limit") == 300  # nothing applied by a refused call
    c.set_parameters({"downtime-limit": 50, "max-bandwidth": 1 << 30}, running=False)
    assert (c.param("downtime-limit"), c.param("max-bandwidth")) == (50, 1 << 30)


def test_capabilities_but_not_parameters_are_refused_while_running():
    """QEMU refuses migrate-set-capabilities during a migration; parameters it takes."""
    c = MigrationConfig.default()
    c.set_parameters({"max-bandwidth": 1, "compress-threads": 4}, running=True)
    assert c.param("compress-threads") == 4
    with pytest.raises(ConfigError, match=f"^{MIGRATION_ACTIVE}$"):
        c.set_capabilities([{"capability": "events", "state": True}], running=True)


def test_capability_combinations_qemu_refuses():
    c = MigrationConfig.default()
    with pytest.raises(ConfigError, match="^Postcopy is not compatible with ignore-shared$"):
        c.set_capabilities([{"capability": "postcopy-ram", "state": True},
                            {"capability": "x-ignore-shared", "state": True}], running=False)
    with pytest.raises(ConfigError, match="does not accept value 'telepathy'"):
        c.set_capabilities([{"capability": "telepathy", "state": True}], running=False)
    assert not c.cap("postcopy-ram")


def _evidence(**expect) -> Evidence:
    src = PeerOutcome(status="completed", runstate="postmigrate",
                      statuses=["setup", "active", "completed"])
    dst = PeerOutcome(status="completed", runstate="running",
                      statuses=["setup", "active", "completed"])
    return Evidence(Expectations(**expect), src, dst)


def test_invariants_report_what_they_compared():
    import numpy as np

    ev = _evidence(memory="identical", guest_runs_on="destination", source="completed")
    ev.source_digests = {"ram": np.arange(8, dtype=np.uint64)}
    ev.destination_digests = {"ram": np.arange(8, dtype=np.uint64)}
    ev.source_mismatched = {"ram": 0}
    results = {r.name: r for r in check_all(ev)}
    assert all(r.ok for r in results.values())
    assert results["memory-identical"].detail == "all 8 pages equal"
    ev.destination_digests["ram"][[2, 5]] = 0
    bad = {r.name: r for r in check_all(ev)}["memory-identical"]
    assert not bad.ok and bad.detail == "ram: 2 pages differ (first at 0x2000, 0x5000)"


def test_split_brain_and_illegal_history_are_caught():
    ev = _evidence(guest_runs_on="destination")
    ev.source.runstate = "running"
    assert {r.name: r for r in check_all(ev)}["guest-runs-on"].detail == \
        "the guest runs on both sides (split brain) (source running, destination running)"
    ev.source.statuses = ["setup", "completed"]
    legal = {r.name: r for r in check_all(ev)}["legal-transitions"]
    assert not legal.ok and "source setup -> completed" in legal.detail
