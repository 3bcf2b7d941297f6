"""`expect: {delivered: true}`: a source that reports `completed` delivered the guest.

QEMU 7.2's source cannot always tell (facts X2): without a return path it reports
`completed` once it has written the stream, whatever became of it -- a destination that
failed to load it, one that waits forever for a multifd channel (M4), or one that
completed with pages missing (M4, T5).  This invariant holds the source to its word:
when it says `completed`, the destination must have completed too, with every page the
source had (when the run compared memory).  A source that did not report `completed`
claims nothing, and the invariant holds.
"""

from __future__ import annotations

from harness.runner.result import InvariantResult

from .base import Evidence
from .memory import differing_pages


class CompletedMeansDelivered:
    name = "completed-means-delivered"

    def applies(self, evidence: Evidence) -> bool:
        return bool(evidence.expect.delivered)

    def check(self, evidence: Evidence) -> InvariantResult:
        src, dst = evidence.source, evidence.destination
        if src.status != "completed":
            return InvariantResult(self.name, True, f"the source ended {src.status}: it "
                                   "claims no delivery")
        claim = "the source reports completed, but"
        if dst.status != "completed":
            why = f" ({dst.error})" if dst.error else ""
            return InvariantResult(self.name, False,
                                   f"{claim} the destination ended {dst.status}{why}")
        crashed = getattr(dst, "exit_code", None)
        if isinstance(crashed, int) and crashed < 0:  # it completed, then died by a signal
            return InvariantResult(self.name, False, f"{claim} the destination, completed, "
                                   f"then died ({dst.error})")
        a, b = evidence.source_digests, evidence.destination_digests
        if a is None or b is None:
            return InvariantResult(self.name, True, "both completed (memory not compared)")
        problems = differing_pages(a, b)
        if problems:
            return InvariantResult(self.name, False, f"{claim} on the destination "
                                   + "; ".join(problems))
        return InvariantResult(self.name, True, "both completed, every page delivered")
