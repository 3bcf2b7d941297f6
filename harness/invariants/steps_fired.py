"""Every step that must fire did: a scenario whose fault never acted (or whose action was
never carried out) has not tested what it says, whatever else went well.

Steps with `optional: true` or a trigger `probability` below 1 may stay unfired; the
report lists them all the same (`steps`, with `why-not`)."""

from __future__ import annotations

from harness.runner.result import InvariantResult

from .base import Evidence


class StepsFired:
    name = "steps-fired"

    def applies(self, evidence: Evidence) -> bool:
        return bool(evidence.steps)

    def check(self, evidence: Evidence) -> InvariantResult:
        missed = [s for s in evidence.steps if s["must-fire"] and not s["fired"]]
        if missed:
            return InvariantResult(self.name, False, "; ".join(
                f"{s['step']} ({s['does']}, on {s['on']}) did not fire: {s['why-not']}"
                for s in missed))
        fired = sum(1 for s in evidence.steps if s["fired"])
        return InvariantResult(self.name, True,
                               f"{fired} of {len(evidence.steps)} steps fired, every one "
                               f"that must fire among them")
