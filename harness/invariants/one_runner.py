"""The guest never runs on both sides at once, and runs nowhere only where that is expected.

Strategy: from the recorded history, not from the end state alone.  Each peer reports its
runstate when it starts and every STOP / RESUME afterwards (QMP events, stamped by the
peer itself; on one host the clocks agree).  Replaying both histories in time order gives
the moments each side ran the guest: any moment when both ran is a split brain, named
with its time and the events that caused it.  At the end the guest must run somewhere --
unless the scenario expects `guest-runs-on: nowhere` (a peer killed in postcopy) -- or
the scenario froze or killed the side that had it.
"""

from __future__ import annotations

from harness.runner.result import InvariantResult, TimelineEntry

from .base import Evidence
from .runs_on import runs

RUNNING = "running"


def running_changes(timeline: list[TimelineEntry]) -> list[tuple[float, str, bool, str]]:
    """(time, peer, runs, why) for each start and STOP / RESUME, in time order."""
    changes = []
    for entry in timeline:
        if entry.peer not in ("source", "destination") or entry.at is None:
            continue
        if entry.name == "started":
            state = str(entry.data.get("runstate"))
            changes.append((entry.at, entry.peer, state == RUNNING, f"started {state}"))
        elif entry.name in ("STOP", "RESUME"):
            changes.append((entry.at, entry.peer, entry.name == "RESUME", entry.name))
    return sorted(changes, key=lambda c: c[0])


class OneRunner:
    name = "one-runner"

    def applies(self, evidence: Evidence) -> bool:
        return any(e.name == "started" for e in evidence.timeline)

    def check(self, evidence: Evidence) -> InvariantResult:
        runs = {"source": False, "destination": False}
        why = {"source": "", "destination": ""}
        t0 = min((c[0] for c in running_changes(evidence.timeline)), default=0.0)
        for at, peer, state, cause in running_changes(evidence.timeline):
            runs[peer], why[peer] = state, cause
            if all(runs.values()):
                return InvariantResult(self.name, False, (
                    f"split brain at {at - t0:.3f} s: the guest ran on both sides "
                    f"(source {why['source']}, destination {why['destination']})"))
        return self._end(evidence)

    def _end(self, evidence: Evidence) -> InvariantResult:
        src = _runs_at_end(evidence, "source")
        dst = _runs_at_end(evidence, "destination")
        if src and dst:
            return InvariantResult(self.name, False, "the guest runs on both sides at the end")
        where = "the source" if src else "the destination" if dst else "nowhere"
        if where == "nowhere" and evidence.expect.guest_runs_on != "nowhere":
            lost = [role for role in ("source", "destination")
                    if getattr(evidence, role).exit_code is not None or role in evidence.frozen]
            if not lost:
                return InvariantResult(self.name, False,
                                       "never on both sides, but at the end the guest runs "
                                       "nowhere, which the scenario does not expect")
        return InvariantResult(self.name, True, f"never on both sides; at the end on {where}")


def _runs_at_end(evidence: Evidence, role: str) -> bool:
    """Its runstate is running -- for a real guest, its heartbeat advanced at the end
    (runner/real_guest.py), after a destination held with -S was continued."""
    outcome = getattr(evidence, role)
    if outcome.heartbeat is not None:
        return runs(outcome) and role not in evidence.frozen
    return outcome.runstate == RUNNING and outcome.exit_code is None and \
        role not in evidence.frozen
