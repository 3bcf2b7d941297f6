"""Both peers only took legal status transitions (QEMU's table, per role).

The statuses are the MIGRATION events each peer sent.  One of them is not a transition:
QEMU 7.2 (migration.c: qemu_start_incoming_migration) announces "setup" whenever it
starts listening, also for `migrate-recover` while the destination stays
postcopy-paused; that "setup" is left out of the destination's chain.  Nor is a second
"failed" right after "failed": QEMU 7.2's multifd_send_terminate_threads (migration/
multifd.c) sets FAILED from whatever the state is, so when the migration thread failed
first, the cmpxchg of FAILED to FAILED succeeds and sends the event again (seen with a
multifd channel reset, scenarios/qemu-7.2/multifd-reset-channel.yaml)."""

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
            chain = _without_repeated_failed(["none", *outcome.statuses])
            if role == "destination":
                chain = _without_recover_notices(chain)
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


def _without_repeated_failed(chain: list[str]) -> list[str]:
    return [s for i, s in enumerate(chain) if not (s == "failed" and chain[i - 1] == "failed")]


def _without_recover_notices(chain: list[str]) -> list[str]:
    """The chain without each "setup" announced by migrate-recover (after postcopy-paused)."""
    out: list[str] = []
    for status in chain:
        if status == "setup" and out and out[-1] == "postcopy-paused":
            continue
        out.append(status)
    return out
