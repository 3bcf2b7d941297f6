"""`expect: {source: STATUS, destination: STATUS}`: the final MigrationStatus of a peer."""

from __future__ import annotations

from harness.runner.result import InvariantResult

from .base import Evidence


class ExpectedStatus:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.name = f"{peer}-status"

    def applies(self, evidence: Evidence) -> bool:
        return getattr(evidence.expect, self.peer) is not None

    def check(self, evidence: Evidence) -> InvariantResult:
        want = getattr(evidence.expect, self.peer)
        outcome = getattr(evidence, self.peer)
        got = outcome.status
        detail = f"{self.peer} ended {got}, expected {want}"
        if got != want and outcome.error:
            detail += f" ({outcome.error})"
        return InvariantResult(self.name, got == want, detail)
