"""Both peers only took legal status transitions (QEMU's table, per role)."""

from __future__ import annotations

import itertools

from harness.migration.status import (
    DESTINATION_TRANSITIONS,
    SOURCE_TRANSITIONS,
    MigrationStatus,
)
from harness.runner.result import InvariantResult

from .base import Evidence


class LegalTransitions:
    name = "legal-transitions"

    def applies(self, evidence: Evidence) -> bool:
        return bool(evidence.source.statuses or evidence.destination.statuses)

    def check(self, evidence: Evidence) -> InvariantResult:
        bad = []
        for role, table, outcome in (("source", SOURCE_TRANSITIONS, evidence.source),
                                     ("destination", DESTINATION_TRANSITIONS,
                                      evidence.destination)):
            chain = ["none", *outcome.statuses]
            for old, new in itertools.pairwise(chain):
                try:
                    legal = MigrationStatus(new) in table[MigrationStatus(old)]
                except (ValueError, KeyError):
                    legal = False
                if not legal:
                    bad.append(f"{role} {old} -> {new}")
        if bad:
            return InvariantResult(self.name, False, "illegal: " + ", ".join(bad))
        return InvariantResult(self.name, True, "source " + " -> ".join(
            ["none", *evidence.source.statuses]) + "; destination " + " -> ".join(
            ["none", *evidence.destination.statuses]))
