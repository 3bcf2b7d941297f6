"""`expect: {guest-runs-on: destination | source | nowhere}`: where the guest runs at the end,
and that it never runs on both sides.

A harness peer's guest runs where its runstate is `running`.  A real guest
(harness/realguest) runs where its heartbeat advanced over the runner's check window: a
runstate says what QEMU was told, the heartbeat that the guest's code really executes.
"""

from __future__ import annotations

from harness.runner.result import InvariantResult, PeerOutcome

from .base import Evidence


def _runs(outcome: PeerOutcome) -> bool:
    if outcome.heartbeat is not None:
        return bool(outcome.heartbeat.get("advanced"))
    return outcome.runstate == "running"


def _how(outcome: PeerOutcome) -> str:
    beat = outcome.heartbeat
    if beat is None:
        return str(outcome.runstate)
    if not beat.get("readable", True):
        return f"{outcome.runstate}, heartbeat unreadable"
    ticks = beat["after"]["ticks"] - beat["before"]["ticks"]
    return f"{outcome.runstate}, heartbeat +{ticks} ticks in {beat['window']:g} s"


class GuestRunsOn:
    name = "guest-runs-on"

    def applies(self, evidence: Evidence) -> bool:
        return evidence.expect.guest_runs_on is not None

    def check(self, evidence: Evidence) -> InvariantResult:
        src, dst = _runs(evidence.source), _runs(evidence.destination)
        states = f"(source {_how(evidence.source)}, destination {_how(evidence.destination)})"
        if src and dst:
            return InvariantResult(self.name, False,
                                   f"the guest runs on both sides (split brain) {states}")
        where = "source" if src else "destination" if dst else "nowhere"
        want = evidence.expect.guest_runs_on
        detail = (f"runs on the {where}" if where != "nowhere" else "runs nowhere") + \
            f" {states}"
        return InvariantResult(self.name, where == want, detail)
