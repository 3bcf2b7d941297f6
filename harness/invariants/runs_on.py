"""`expect: {guest-runs-on: destination | source | nowhere}`: where the guest runs at the end,
and that it never runs on both sides.

A harness peer's guest runs where its runstate is `running`.  A real guest
(harness/realguest) runs where its heartbeat advanced over the runner's check window: a
runstate says what QEMU was told, the heartbeat that the guest's code really executes.
"""

from __future__ import annotations

from harness.runner.result import InvariantResult, PeerOutcome

from .base import Evidence


def blocked(outcome: PeerOutcome) -> bool:
    """A real guest QEMU runs that cannot make progress: its vCPU waits for pages a
    postcopy that is paused cannot bring (runstate running, heartbeat still)."""
    beat = outcome.heartbeat
    return beat is not None and not beat.get("advanced") and \
        outcome.runstate == "running" and outcome.status == "postcopy-paused"


def runs(outcome: PeerOutcome) -> bool:
    """Where the guest is: a harness guest by its runstate; a real guest where its
    heartbeat advanced, or where it is blocked in a paused postcopy (it has no other
    place: the source gave it up at the switchover)."""
    if outcome.heartbeat is not None:
        return bool(outcome.heartbeat.get("advanced")) or blocked(outcome)
    return outcome.runstate == "running"


def _how(outcome: PeerOutcome) -> str:
    beat = outcome.heartbeat
    if beat is None:
        return str(outcome.runstate)
    if not beat.get("readable", True):
        return f"{outcome.runstate}, heartbeat unreadable"
    ticks = beat["after"]["ticks"] - beat["before"]["ticks"]
    stuck = ", blocked waiting for pages" if blocked(outcome) else ""
    return f"{outcome.runstate}, heartbeat +{ticks} ticks in {beat['window']:g} s{stuck}"


class GuestRunsOn:
    name = "guest-runs-on"

    def applies(self, evidence: Evidence) -> bool:
        return evidence.expect.guest_runs_on is not None

    def check(self, evidence: Evidence) -> InvariantResult:
        src, dst = runs(evidence.source), runs(evidence.destination)
        states = f"(source {_how(evidence.source)}, destination {_how(evidence.destination)})"
        if src and dst:
            return InvariantResult(self.name, False,
                                   f"the guest runs on both sides (split brain) {states}")
        where = "source" if src else "destination" if dst else "nowhere"
        want = evidence.expect.guest_runs_on
        detail = (f"runs on the {where}" if where != "nowhere" else "runs nowhere") + \
            f" {states}"
        return InvariantResult(self.name, where == want, detail)
