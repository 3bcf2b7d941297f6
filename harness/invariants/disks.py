"""`expect: {disks: identical}`: every sector of every disk equal on both sides.

The runner compares the source's and the destination's image files at the end
(harness/runner/disks.py); the detail names, for a disk that differs, how many 1 MiB chunks
differ and the first differing 512-byte sector.
"""

from __future__ import annotations

from harness.runner.result import InvariantResult

from .base import Evidence


class DisksIdentical:
    name = "disks-identical"

    def applies(self, evidence: Evidence) -> bool:
        return getattr(evidence.expect, "disks", None) == "identical"

    def check(self, evidence: Evidence) -> InvariantResult:
        compared = evidence.disks
        if compared is None:
            return InvariantResult(self.name, False, "the disks were not compared (the run "
                                   "ended before the destination completed)")
        bad = {name: why for name, why in compared.items() if why}
        if bad:
            return InvariantResult(self.name, False, "; ".join(f"{name}: {why}"
                                                               for name, why in bad.items()))
        return InvariantResult(self.name, True, f"every sector of {', '.join(compared)} "
                               "equal on both sides")
