"""`expect: {guest-runs-on: destination | source | nowhere}`: where the guest runs at the end,
and that it never runs on both sides."""

from __future__ import annotations

from harness.runner.result import InvariantResult

from .base import Evidence


class GuestRunsOn:
    name = "guest-runs-on"

    def applies(self, evidence: Evidence) -> bool:
        return evidence.expect.guest_runs_on is not None

    def check(self, evidence: Evidence) -> InvariantResult:
        src = evidence.source.runstate == "running"
        dst = evidence.destination.runstate == "running"
        if src and dst:
            return InvariantResult(self.name, False, "the guest runs on both sides (split brain)")
        where = "source" if src else "destination" if dst else "nowhere"
        want = evidence.expect.guest_runs_on
        detail = (f"runs on the {where}" if where != "nowhere" else "runs nowhere") + \
            f" (source {evidence.source.runstate}, destination {evidence.destination.runstate})"
        return InvariantResult(self.name, where == want, detail)
