"""No process the run started is left behind: every peer, proxy and workload is reaped,
and no guest memory segment of a peer (a killed one cannot unlink its own) remains."""

from __future__ import annotations

from harness.runner.result import InvariantResult

from .base import Evidence


class NoLeftovers:
    name = "no-leftover-processes"

    def applies(self, evidence: Evidence) -> bool:
        return True

    def check(self, evidence: Evidence) -> InvariantResult:
        if evidence.leftovers:
            return InvariantResult(self.name, False,
                                   "still alive after the run: " + ", ".join(evidence.leftovers))
        return InvariantResult(self.name, True, "every process the run started has ended, and no "
                               "guest memory of theirs is left")
