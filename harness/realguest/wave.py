"""Checking the real guest's RAM: each dump a perfect wave, a destination consistent.

Strategy: every page p of the swept part holds u32@0 = gen, u32@4 = p>>12, u32@4092 =
gen (image.py; F7/F8).  The guest sweeps in order, so a dump is a *wave*: pages before
the cursor hold g, pages from the cursor on hold g-1; only the page just before the
cursor may be torn (head g, tail g-1: the guest stopped between its two adds).  Gens are
read-modify-write, so a page that ever went wrong (stale, zeroed, misplaced) stays off
the wave for good.  `read_wave` finds (g, cursor) from the dump itself -- g from the most
common gen and its neighbours, the cursor as the boundary with the fewest misfits (a
cumulative sum, so one numpy pass) -- then names every page that misfits.  All-equal
gens X read as (X+1, start): a sweep just finished is the next one just begun.  Pages of
the range past a hotset must still be the init pass's (gen 0, pfn, tail 0).

`check_consistent` is F29: both dumps perfect waves, the destination's position not
behind the source's, and every byte equal except the gen/tail words of swept pages and
the guest's own scratch page (heartbeat and stack, GUEST_SCRATCH), compared in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .image import GUEST_SCRATCH, PAGE_SIZE, GuestProgram

__all__ = ["MAX_LISTED", "Wave", "capped", "check_consistent", "difference_text", "masked",
           "pages_ahead", "partial_page", "read_wave"]

MAX_LISTED = 10                   # problems named in full; the rest are counted
_WORDS = PAGE_SIZE // 4
_TAIL = _WORDS - 1                # u32 index of the tail gen (byte 4092)
_CHUNK_PAGES = 4096               # 16 MiB per comparison step


@dataclass(frozen=True)
class Wave:
    """Where the guest's sweep stands in a dump, and every page that does not fit."""

    gen: int
    cursor: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def read_wave(ram: np.ndarray, program: GuestProgram) -> Wave:
    """The wave in `ram` (uint8 guest RAM from GPA 0, at least up to sweep_end)."""
    words = _range_words(ram, program)
    swept = words[:program.swept_pages]
    head = swept[:, 0].astype(np.int64)
    tail = swept[:, _TAIL].astype(np.int64)
    gen = _generation(head)
    boundary = _boundary(head, gen)
    expected = np.where(np.arange(len(head)) < boundary, gen, gen - 1)
    torn_ok = (boundary - 1) % len(head)
    found, total = _swept_problems(swept[:, 1], head, tail, expected, torn_ok, program)
    rest, rest_total = _rest_problems(words[program.swept_pages:], program)
    if boundary == len(head):             # the sweep is complete: the next one starts
        gen, boundary = gen + 1, 0
    return Wave(gen=gen, cursor=program.start + boundary * PAGE_SIZE,
                problems=capped(found + rest, total + rest_total))


def pages_ahead(wave: Wave, gen: int, cursor: int, program: GuestProgram) -> int:
    """How many page writes the dump's position is past (gen, cursor), e.g. a heartbeat's.

    A stopped guest's heartbeat trails its memory by 0 or 1 page (the cursor is
    published after the page is written).
    """
    def position(g: int, c: int) -> int:
        return g * program.swept_pages + (c - program.start) // PAGE_SIZE
    return position(wave.gen, wave.cursor) - position(gen, cursor)


def check_consistent(source: np.ndarray, destination: np.ndarray,
                     program: GuestProgram) -> list[str]:
    """Problems of a migrated guest (F29); empty when source and destination agree."""
    problems: list[str] = []
    if source.shape != destination.shape:
        problems.append(f"RAM sizes differ: source {source.size} bytes, destination "
                        f"{destination.size} (the common part is compared)")
    src, dst = read_wave(source, program), read_wave(destination, program)
    problems += [f"source {p}" for p in src.problems]
    problems += [f"destination {p}" for p in dst.problems]
    if (dst.gen, dst.cursor) < (src.gen, src.cursor):
        problems.append(f"destination wave (gen {dst.gen}, cursor {dst.cursor:#x}) is behind "
                        f"the source's (gen {src.gen}, cursor {src.cursor:#x})")
    problems += capped(*_masked_differences(source, destination, program))
    return problems


# ---------------------------------------------------------------------- the wave
def _range_words(ram: np.ndarray, program: GuestProgram) -> np.ndarray:
    if ram.dtype != np.uint8 or ram.ndim != 1:
        raise ValueError(f"guest RAM must be a 1-D uint8 array, not {ram.dtype} {ram.shape}")
    if ram.size < program.sweep_end:
        raise ValueError(f"guest RAM of {ram.size} bytes ends before the swept part "
                         f"(sweep_end {program.sweep_end:#x})")
    stop = program.start + (min(ram.size, program.end) - program.start) // PAGE_SIZE * PAGE_SIZE
    return ram[program.start:stop].view("<u4").reshape(-1, _WORDS)


def _generation(head: np.ndarray) -> int:
    """g of the sweep in progress: the most common gen m is g or g-1, its neighbours say."""
    values, counts = np.unique(head, return_counts=True)
    common = int(values[np.argmax(counts)])
    older = int(counts[values == common - 1].sum())
    newer = int(counts[values == common + 1].sum())
    return common if older > newer else common + 1


def _boundary(head: np.ndarray, gen: int) -> int:
    """Index k with the fewest pages off `gen` before it and off `gen-1` from it on."""
    new_before = np.concatenate(([0], np.cumsum(head == gen)))
    old_before = np.concatenate(([0], np.cumsum(head == gen - 1)))
    k = np.arange(len(head) + 1)
    misfits = (k - new_before) + (len(head) - k) - (old_before[-1] - old_before)
    return int(np.argmin(misfits))


def _swept_problems(pfn: np.ndarray, head: np.ndarray, tail: np.ndarray,
                    expected: np.ndarray, torn_ok: int,
                    program: GuestProgram) -> tuple[list[tuple[int, str]], int]:
    index = np.arange(len(head))
    bad_pfn = pfn != (program.start // PAGE_SIZE) + index
    bad_head = head != expected
    bad_tail = tail != head
    if head[torn_ok] == expected[torn_ok] and tail[torn_ok] == head[torn_ok] - 1:
        bad_tail[torn_ok] = False         # the page the guest was writing
    found = []
    bad = np.flatnonzero(bad_pfn | bad_head | bad_tail)
    for i in bad[:MAX_LISTED]:
        if bad_pfn[i]:
            what = _wrong_pfn(int(pfn[i]), int(head[i]), program)
        elif bad_head[i]:
            word = "stale" if head[i] < expected[i] else "ahead of the wave"
            what = f"{word} (gen {head[i]}, wave says {expected[i]})"
        else:
            what = f"torn (head {head[i]}, tail {tail[i]})"
        found.append((program.start + int(i) * PAGE_SIZE, what))
    return found, len(bad)


def _rest_problems(rest: np.ndarray,
                   program: GuestProgram) -> tuple[list[tuple[int, str]], int]:
    """Pages of the range past the hotset: gen 0, pfn, tail 0 since the init pass."""
    first = program.swept_pages
    pfn, head, tail = rest[:, 1], rest[:, 0], rest[:, _TAIL]
    bad_pfn = pfn != (program.start // PAGE_SIZE) + first + np.arange(len(rest))
    bad = np.flatnonzero(bad_pfn | (head != 0) | (tail != 0))
    found = []
    for i in bad[:MAX_LISTED]:
        if bad_pfn[i]:
            what = _wrong_pfn(int(pfn[i]), int(head[i]), program)
        else:
            what = f"written beyond the hotset (gen {head[i]}, tail {tail[i]}; expected 0)"
        found.append((program.start + (first + int(i)) * PAGE_SIZE, what))
    return found, len(bad)


def _wrong_pfn(pfn: int, head: int, program: GuestProgram) -> str:
    if program.start // PAGE_SIZE <= pfn < program.end // PAGE_SIZE:
        return f"misplaced (holds pfn {pfn:#x})"
    return f"never written (gen {head}, pfn word {pfn:#x}: not a wave page)"


def capped(found: list[tuple[int, str]], total: int) -> tuple[str, ...]:
    """The first MAX_LISTED problems in full, then how many more there are."""
    named = tuple(f"page {gpa:#x}: {what}" for gpa, what in found[:MAX_LISTED])
    more = total - len(named)
    return named + ((f"... and {more} more pages",) if more > 0 else ())


# ---------------------------------------------------------------------- the comparison
def _masked_differences(source: np.ndarray, destination: np.ndarray,
                        program: GuestProgram) -> tuple[list[tuple[int, str]], int]:
    """Pages differing outside the gen/tail words of swept pages and GUEST_SCRATCH."""
    size = min(source.size, destination.size) // PAGE_SIZE * PAGE_SIZE
    found: list[tuple[int, str]] = []
    total = 0
    for lo in range(0, size, _CHUNK_PAGES * PAGE_SIZE):
        hi = min(lo + _CHUNK_PAGES * PAGE_SIZE, size)
        a = source[lo:hi].view("<u4").reshape(-1, _WORDS)
        b = destination[lo:hi].view("<u4").reshape(-1, _WORDS)
        gpa = lo + np.arange(len(a), dtype=np.int64) * PAGE_SIZE
        differ = masked(a != b, gpa, program)
        rows = np.flatnonzero(differ.any(axis=1))
        total += len(rows)
        for row in rows[:MAX_LISTED - len(found)]:
            found.append((int(gpa[row]), difference_text(a[row], b[row], differ[row])))
    partial = partial_page(source, destination, size)
    return found + partial[:MAX_LISTED - len(found)], total + len(partial)


def masked(flags: np.ndarray, gpa: np.ndarray, program: GuestProgram) -> np.ndarray:
    """`flags` (pages x u32 words, at `gpa` each) with what the comparison ignores cleared:
    the gen/tail words of swept pages and every word of GUEST_SCRATCH pages (in place)."""
    swept = (gpa >= program.start) & (gpa < program.sweep_end)
    flags[swept, 0] = False
    flags[swept, _TAIL] = False
    flags[(gpa >= GUEST_SCRATCH[0]) & (gpa < GUEST_SCRATCH[1])] = False
    return flags


def difference_text(a: np.ndarray, b: np.ndarray, differ: np.ndarray) -> str:
    """How one page differs: its first differing u32 word (`differ` after `masked`)."""
    word = int(np.argmax(differ))
    return (f"differs at byte {4 * word:#x} (source {a[word]:#010x}, "
            f"destination {b[word]:#010x})")


def partial_page(source: np.ndarray, destination: np.ndarray,
                 size: int) -> list[tuple[int, str]]:
    """A difference in the bytes past the last whole page both sides have."""
    end = min(source.size, destination.size)
    differ = np.flatnonzero(source[size:end] != destination[size:end])
    if not differ.size:
        return []
    return [(size, f"differs at byte {int(differ[0]):#x} (a partial last page)")]
