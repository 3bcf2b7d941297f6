"""`expect: {memory: identical | source-intact}`.

identical: every page of the destination, as its load completed, equals the source's page
as the source stopped (per-page digests of both), and the source's pages are what its
workload wrote (so "the source's content" is the guest's, not a corruption of it).
source-intact: after a failed or cancelled migration the source's pages are exactly what
its workload wrote (checked against the content oracle, page by page); with a real guest
(harness/realguest), the source's RAM is one unbroken wave of self-consistent pages.
consistent (real guests, when the destination ran before the check): both sides' RAM are
unbroken waves, the destination's no older than the source's at the switchover, every
other byte of guest RAM equal, and every other RAM block (ROMs, ACPI tables) identical.
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
        problems = differing_pages(src, dst)
        corrupt = {k: v for k, v in (evidence.source_mismatched or {}).items() if v}
        if corrupt:
            problems.append(f"the source's own pages differ from what its guest wrote: {corrupt}")
        if problems:
            return InvariantResult(self.name, False, "; ".join(problems))
        pages = sum(a.size for a in src.values())
        return InvariantResult(self.name, True, f"all {pages} pages equal" +
                               _reference_note(evidence))


def differing_pages(src: dict[str, np.ndarray], dst: dict[str, np.ndarray]) -> list[str]:
    """What differs between two sides' per-page digests, block by block (first pages named)."""
    if sorted(src) != sorted(dst):
        return [f"RAM blocks differ: source {list(src)}, destination {list(dst)}"]
    problems = []
    for name, a in src.items():
        b = dst[name]
        if a.size != b.size:
            problems.append(f"{name}: {a.size} pages on the source, {b.size} on the destination")
            continue
        bad = np.flatnonzero(a != b)
        if bad.size:
            first = ", ".join(f"0x{int(p) * 4096:x}" for p in bad[:5])
            problems.append(f"{name}: {bad.size} pages differ (first at {first})")
    return problems


def _reference_note(evidence: Evidence) -> str:
    if not evidence.reference_blocks:
        return ""
    return (f"; the source's {', '.join(evidence.reference_blocks)} read from a fresh QEMU "
            "of its command line (QEMU 7.2 cannot migrate a source in postmigrate again)")


def main_block(blocks: dict[str, np.ndarray]) -> str:
    """The guest's RAM among a real machine's blocks: the largest (pc.ram)."""
    return max(blocks, key=lambda name: len(blocks[name]))


class MemoryConsistent:
    name = "memory-consistent"

    def applies(self, evidence: Evidence) -> bool:
        return evidence.expect.memory == "consistent"

    def check(self, evidence: Evidence) -> InvariantResult:
        from harness.realguest.wave import check_consistent

        src, dst = evidence.source_memory, evidence.destination_memory
        if src is None and dst is None and evidence.source_summary is not None:
            return self._hashed(evidence)
        if src is None or dst is None or evidence.program is None:
            missing = "source" if src is None else "destination"
            return InvariantResult(self.name, False, f"no memory read from the {missing}")
        ram = main_block(src)
        if ram not in dst:
            return InvariantResult(self.name, False, f"the destination has no block {ram}")
        problems = check_consistent(src[ram], dst[ram], evidence.program)
        pages = sum(len(v) for v in src.values()) // 4096
        return self._verdict(evidence, ram, problems, pages)

    def _hashed(self, evidence: Evidence) -> InvariantResult:
        """The same check from each host's digests (harness/realguest/hashed.py)."""
        from harness.realguest.hashed import consistent_problems

        src, dst = evidence.source_summary, evidence.destination_summary
        if dst is None or evidence.program is None:
            return InvariantResult(self.name, False, "no memory read from the destination")
        ram = src.main
        if ram not in dst.hashes:
            return InvariantResult(self.name, False, f"the destination has no block {ram}")
        try:
            problems = consistent_problems(src, dst, evidence.program, evidence.page_fetch)
        except ValueError as err:
            return InvariantResult(self.name, False, str(err))
        return self._verdict(evidence, ram, problems, sum(src.sizes.values()) // 4096)

    def _verdict(self, evidence: Evidence, ram: str, problems: list[str],
                 pages: int) -> InvariantResult:
        others = [{k: v for k, v in (side or {}).items() if k != ram}
                  for side in (evidence.source_digests, evidence.destination_digests)]
        problems += differing_pages(*others)
        if problems:
            return InvariantResult(self.name, False, "; ".join(problems))
        return InvariantResult(self.name, True, f"{ram} is an unbroken wave on both sides, "
                               "the destination's no older than the source's at the "
                               f"switchover; the other blocks identical ({pages} pages)"
                               + _reference_note(evidence))


class SourceIntact:
    name = "memory-source-intact"

    def applies(self, evidence: Evidence) -> bool:
        return evidence.expect.memory == "source-intact"

    def check(self, evidence: Evidence) -> InvariantResult:
        if evidence.program is not None:
            return self._real_guest(evidence)
        mismatched = evidence.source_mismatched
        if mismatched is None:
            return InvariantResult(self.name, False, "no page check from the source")
        bad = {k: v for k, v in mismatched.items() if v}
        if bad:
            return InvariantResult(self.name, False, f"pages differ from what the guest wrote: {bad}")
        pages = sum(d.size for d in (evidence.source_digests or {}).values())
        what = f"all {pages} pages" if pages else "every page"
        return InvariantResult(self.name, True, f"{what} hold what the source guest wrote")

    def _real_guest(self, evidence: Evidence) -> InvariantResult:
        from harness.realguest.wave import read_wave

        src, summary = evidence.source_memory, evidence.source_summary
        if src is None and summary is not None:  # read on the source's host (hashed.py)
            ram, wave = summary.main, summary.wave
            if wave is None:
                return InvariantResult(self.name, False, f"{ram}: {summary.wave_error}")
        elif src is None:
            return InvariantResult(self.name, False, "no memory read from the source")
        else:
            ram = main_block(src)
            wave = read_wave(src[ram], evidence.program)
        if wave.problems:
            return InvariantResult(self.name, False, f"{ram}: " + "; ".join(wave.problems))
        return InvariantResult(self.name, True, f"{ram} is an unbroken wave of the source "
                               f"guest's pages (sweep {wave.gen}, at 0x{wave.cursor:x})")
