"""`expect: {memory: identical | source-intact}`.

identical: every page of the destination, as its load completed, equals the source's page
as the source stopped (per-page digests of both), and the source's pages are what its
workload wrote (so "the source's content" is the guest's, not a corruption of it).
source-intact: after a failed or cancelled migration the source's pages are exactly what
its workload wrote (checked against the content oracle, page by page).
"""

from __future__ import annotations

import numpy as np

from harness.runner.result import InvariantResult

from .base import Evidence


class MemoryIdentical:
    name = "memory-identical"

    def applies(self, evidence: Evidence) -> bool:
        return evidence.expect.memory == "identical"

    def check(self, evidence: Evidence) -> InvariantResult:
        src, dst = evidence.source_digests, evidence.destination_digests
        if src is None or dst is None:
            missing = "source" if src is None else "destination"
            return InvariantResult(self.name, False, f"no page digests from the {missing}")
        if list(src) != list(dst):
            return InvariantResult(self.name, False,
                                   f"RAM blocks differ: source {list(src)}, destination {list(dst)}")
        problems = []
        pages = 0
        for name, a in src.items():
            b = dst[name]
            pages += a.size
            if a.size != b.size:
                problems.append(f"{name}: {a.size} pages on the source, {b.size} on the destination")
                continue
            bad = np.flatnonzero(a != b)
            if bad.size:
                first = ", ".join(f"0x{int(p) * 4096:x}" for p in bad[:5])
                problems.append(f"{name}: {bad.size} pages differ (first at {first})")
        corrupt = {k: v for k, v in (evidence.source_mismatched or {}).items() if v}
        if corrupt:
            problems.append(f"the source's own pages differ from what its guest wrote: {corrupt}")
        if problems:
            return InvariantResult(self.name, False, "; ".join(problems))
        return InvariantResult(self.name, True, f"all {pages} pages equal")


class SourceIntact:
    name = "memory-source-intact"

    def applies(self, evidence: Evidence) -> bool:
        return evidence.expect.memory == "source-intact"

    def check(self, evidence: Evidence) -> InvariantResult:
        mismatched = evidence.source_mismatched
        if mismatched is None:
            return InvariantResult(self.name, False, "no page check from the source")
        bad = {k: v for k, v in mismatched.items() if v}
        if bad:
            return InvariantResult(self.name, False, f"pages differ from what the guest wrote: {bad}")
        pages = sum(d.size for d in (evidence.source_digests or {}).values())
        what = f"all {pages} pages" if pages else "every page"
        return InvariantResult(self.name, True, f"{what} hold what the source guest wrote")
