"""The history invariants on recorded timelines: one runner at a time, nothing left behind."""

from __future__ import annotations

from harness.invariants import check_all
from harness.invariants.base import Evidence, Expectations
from harness.invariants.leftovers import NoLeftovers
from harness.invariants.one_runner import OneRunner
from harness.runner.result import PeerOutcome, TimelineEntry


def _timeline(*events: tuple[float, str, str, str | None]) -> list[TimelineEntry]:
    out = []
    for at, peer, name, runstate in events:
        data = {"runstate": runstate} if runstate else {}
        out.append(TimelineEntry(at, peer, name, data, at=1000.0 + at))
    return out


def _evidence(timeline, src="postmigrate", dst="running", expect=None, **kw) -> Evidence:
    ev = Evidence(Expectations(guest_runs_on=expect), PeerOutcome(runstate=src),
                  PeerOutcome(runstate=dst), **kw)
    ev.timeline = timeline
    return ev


MIGRATED = _timeline((0.0, "destination", "started", "inmigrate"),
                     (0.1, "source", "started", "running"),
                     (1.0, "source", "STOP", None), (1.2, "destination", "RESUME", None))


def test_a_clean_handover_passes_and_says_where_the_guest_ended():
    result = OneRunner().check(_evidence(MIGRATED))
    assert result.ok and result.detail == "never on both sides; at the end on the destination"


def test_both_running_at_once_is_a_split_brain_with_its_time():
    timeline = MIGRATED + _timeline((1.5, "source", "RESUME", None))
    result = OneRunner().check(_evidence(timeline, src="running"))
    assert not result.ok
    assert result.detail.startswith("split brain at 1.500 s: the guest ran on both sides")


def test_order_is_by_the_processes_own_timestamps_not_by_arrival():
    # the runner learnt of the destination's RESUME before the source's STOP, but the
    # stamps say the source stopped first: no split brain
    timeline = [TimelineEntry(0.0, "destination", "started", {"runstate": "inmigrate"}, 1000.0),
                TimelineEntry(0.0, "source", "started", {"runstate": "running"}, 1000.1),
                TimelineEntry(2.0, "destination", "RESUME", {}, 1001.2),
                TimelineEntry(2.1, "source", "STOP", {}, 1001.0)]
    assert OneRunner().check(_evidence(timeline)).ok


def test_nowhere_at_the_end_fails_unless_expected_or_a_peer_was_lost():
    timeline = MIGRATED[:3]  # the source stopped, the destination never ran
    assert not OneRunner().check(_evidence(timeline, dst="inmigrate")).ok
    assert OneRunner().check(_evidence(timeline, dst="inmigrate", expect="nowhere")).ok
    lost = _evidence(timeline, dst=None)
    lost.destination.exit_code = -9
    assert OneRunner().check(lost).ok


def test_leftover_processes_fail_the_run_and_are_named():
    ev = _evidence(MIGRATED, leftovers=["4242 python -c workload"])
    result = NoLeftovers().check(ev)
    assert not result.ok and "4242 python -c workload" in result.detail
    names = [r.name for r in check_all(_evidence(MIGRATED))]
    assert "no-leftover-processes" in names and "one-runner" in names
