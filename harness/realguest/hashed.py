"""The memory oracle across hosts: each host hashes its side, the runner compares hashes.

Strategy: a host that runs a QEMU reads its RAM blocks itself (harness/qemu/snapshot.py)
and sends the runner a `MemorySummary` instead of the bytes: one BLAKE2b digest (16
bytes) per 4 KiB page of every block (1/256 of the RAM), and for a real guest
(harness/realguest) what the wave checks need of its RAM block -- the wave read on that
host (`read_wave`: generation, cursor, problems) and a second digest per page taken with
the words `check_consistent` ignores zeroed (the gen/tail words of swept pages, the guest's
scratch pages).  The runner then decides with the same rules and the same messages as
the local, byte-comparing path (harness/realguest/wave.py, harness/invariants/memory.py):
pages are named from the digests, and the few pages a message quotes words of (at most
MAX_LISTED) are fetched from both hosts (`PageFetch`), never the rest.

When the other side is a harness peer (whose own digests are `harness.guest.content.
page_digests`, a uint64 per page) the runner asks for that kind instead (`DIGEST_KINDS`:
"harness"), so both sides' digests are of one kind and invariants/memory.py compares them
exactly as a local run does; the masked digests of a real guest stay BLAKE2b.

`summary_message` / `summary_from_message` are the wire form: a JSON value (names, sizes,
page counts, the wave) and one blob of digests; what is read back is bounded and checked
(block count, names, sizes against page counts, the blob's exact length).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .image import PAGE_SIZE, GuestProgram
from .wave import MAX_LISTED, Wave, capped, difference_text, masked, read_wave

__all__ = [
    "DIGEST",
    "DIGEST_KINDS",
    "MemorySummary",
    "PageFetch",
    "consistent_problems",
    "masked_page_hashes",
    "page_hashes",
    "summarize",
    "summary_from_message",
    "summary_message",
]

DIGEST = 16                  # bytes of BLAKE2b per page
HASH_DTYPE = np.dtype((np.void, DIGEST))
#: digest kind -> the dtype of one page's digest (harness: guest.content.page_digests)
DIGEST_KINDS: dict[str, np.dtype] = {"blake2b": HASH_DTYPE, "harness": np.dtype("<u8")}
MAX_BLOCKS = 64
MAX_NAME = 256
MAX_PAGES = 1 << 28          # 1 TiB of pages per block
MAX_PROBLEMS = MAX_LISTED + 1
_WORDS = PAGE_SIZE // 4
_CHUNK_PAGES = 4096

#: (side, block, page indexes) -> {index: that page's bytes}; side "source"|"destination"
PageFetch = Callable[[str, str, list[int]], dict[int, bytes]]


def page_hashes(data: np.ndarray) -> np.ndarray:
    """BLAKE2b-128 of every 4 KiB page of `data` (uint8; a last partial page hashed as is)."""
    raw = memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast("B")
    count = -(-len(raw) // PAGE_SIZE)
    out = bytearray(count * DIGEST)
    for i in range(count):
        page = raw[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        out[i * DIGEST:(i + 1) * DIGEST] = hashlib.blake2b(page, digest_size=DIGEST).digest()
    return np.frombuffer(bytes(out), dtype=HASH_DTYPE)


def masked_page_hashes(ram: np.ndarray, program: GuestProgram) -> np.ndarray:
    """page_hashes of the whole pages of `ram` with the words wave.masked ignores zeroed."""
    size = ram.size // PAGE_SIZE * PAGE_SIZE
    parts = []
    for lo in range(0, size, _CHUNK_PAGES * PAGE_SIZE):
        hi = min(lo + _CHUNK_PAGES * PAGE_SIZE, size)
        words = ram[lo:hi].view("<u4").reshape(-1, _WORDS)
        gpa = lo + np.arange(len(words), dtype=np.int64) * PAGE_SIZE
        keep = masked(np.ones(words.shape, dtype=bool), gpa, program)
        parts.append(page_hashes(np.where(keep, words, 0).astype("<u4").view(np.uint8)))
    return np.concatenate(parts) if parts else np.empty(0, dtype=HASH_DTYPE)


@dataclass
class MemorySummary:
    """One side's RAM as digests: every block's page hashes and sizes, and for a real
    guest its RAM block (`main`) as the wave checks need it."""

    hashes: dict[str, np.ndarray]
    sizes: dict[str, int]
    main: str | None = None
    masked: np.ndarray | None = None      # masked_page_hashes of the main block
    wave: Wave | None = None              # read_wave of the main block
    wave_error: str | None = None         # read_wave's ValueError, if it raised
    notes: dict[str, Any] = field(default_factory=dict)
    kind: str = "blake2b"                 # of `hashes` (DIGEST_KINDS)

    @property
    def wire_bytes(self) -> int:
        """Bytes of digests this summary carries (what crossed instead of the RAM)."""
        extra = 0 if self.masked is None else self.masked.size * DIGEST
        return sum(h.nbytes for h in self.hashes.values()) + extra


def summarize(blocks: dict[str, np.ndarray], program: GuestProgram | None,
              kind: str = "blake2b") -> MemorySummary:
    """The summary of `blocks` (uint8 arrays by name); with `program`, of a real guest.
    `kind` "harness": the pages' digests are the harness's own (page_digests: blocks of
    whole pages only, ValueError otherwise)."""
    if not isinstance(kind, str) or kind not in DIGEST_KINDS:
        raise ValueError(f"digest kind {kind!r:.40} is not one of {sorted(DIGEST_KINDS)}")
    digest = page_hashes
    if kind == "harness":
        from harness.guest.content import page_digests as digest  # type: ignore[assignment]
    out = MemorySummary({n: digest(b) for n, b in blocks.items()},
                        {n: int(b.size) for n, b in blocks.items()}, kind=kind)
    if program is not None and blocks:
        out.main = max(blocks, key=lambda name: blocks[name].size)  # invariants.main_block
        ram = blocks[out.main]
        out.masked = masked_page_hashes(ram, program)
        try:
            out.wave = read_wave(ram, program)
        except ValueError as err:
            out.wave_error = str(err)
    return out


# ---------------------------------------------------------------------- the comparison
def consistent_problems(src: MemorySummary, dst: MemorySummary, program: GuestProgram,
                        fetch: PageFetch) -> list[str]:
    """wave.check_consistent decided from two summaries (same rules, same messages)."""
    ram = src.main
    assert ram is not None and src.masked is not None and dst.masked is not None
    for side, summary in (("source", src), ("destination", dst)):
        if summary.wave is None:
            raise ValueError(f"{side}: {summary.wave_error or 'no wave read'}")
    assert src.wave is not None and dst.wave is not None
    problems: list[str] = []
    a_size, b_size = src.sizes[ram], dst.sizes[ram]
    if a_size != b_size:
        problems.append(f"RAM sizes differ: source {a_size} bytes, destination "
                        f"{b_size} (the common part is compared)")
    problems += [f"source {p}" for p in src.wave.problems]
    problems += [f"destination {p}" for p in dst.wave.problems]
    if (dst.wave.gen, dst.wave.cursor) < (src.wave.gen, src.wave.cursor):
        problems.append(f"destination wave (gen {dst.wave.gen}, cursor {dst.wave.cursor:#x}) "
                        f"is behind the source's (gen {src.wave.gen}, cursor "
                        f"{src.wave.cursor:#x})")
    problems += capped(*_masked_differences(src, dst, ram, program, fetch))
    return problems


def _masked_differences(src: MemorySummary, dst: MemorySummary, ram: str,
                        program: GuestProgram, fetch: PageFetch) -> tuple[list[tuple[int, str]], int]:
    assert src.masked is not None and dst.masked is not None
    whole = min(src.sizes[ram], dst.sizes[ram]) // PAGE_SIZE
    rows = np.flatnonzero(src.masked[:whole] != dst.masked[:whole])
    named = [int(r) for r in rows[:MAX_LISTED]]
    end = min(src.sizes[ram], dst.sizes[ram])
    tail = [whole] if end > whole * PAGE_SIZE else []
    pages = {side: fetch(side, ram, named + tail) if named or tail else {}
             for side in ("source", "destination")}
    found = []
    for row in named:
        a, b = (_words(pages[side], row) for side in ("source", "destination"))
        differ = masked((a != b)[None, :], np.array([row * PAGE_SIZE], dtype=np.int64),
                        program)[0]
        found.append((row * PAGE_SIZE, difference_text(a, b, differ)))
    partial = []
    if tail:
        a_tail = np.frombuffer(pages["source"][whole], dtype=np.uint8)
        b_tail = np.frombuffer(pages["destination"][whole], dtype=np.uint8)
        n = end - whole * PAGE_SIZE
        differ = np.flatnonzero(a_tail[:n] != b_tail[:n])
        if differ.size:
            partial = [(whole * PAGE_SIZE,
                        f"differs at byte {int(differ[0]):#x} (a partial last page)")]
    return found + partial[:MAX_LISTED - len(found)], len(rows) + len(partial)


def _words(pages: dict[int, bytes], row: int) -> np.ndarray:
    data = pages.get(row)
    if data is None or len(data) != PAGE_SIZE:
        raise ValueError(f"page {row * PAGE_SIZE:#x} was not sent back whole")
    return np.frombuffer(data, dtype="<u4")



# ---------------------------------------------------------------------- the wire form
def summary_message(summary: MemorySummary) -> tuple[dict[str, Any], bytes]:
    """(JSON value, blob of digests) for a reply."""
    value: dict[str, Any] = {
        "blocks": [{"name": n, "size": summary.sizes[n], "pages": int(h.size)}
                   for n, h in summary.hashes.items()],
        "main": summary.main, "notes": summary.notes, "wave-error": summary.wave_error,
        "digests": summary.kind,
        "masked-pages": None if summary.masked is None else int(summary.masked.size),
        "wave": None if summary.wave is None else {
            "gen": summary.wave.gen, "cursor": summary.wave.cursor,
            "problems": list(summary.wave.problems)}}
    parts = [np.ascontiguousarray(h, dtype=DIGEST_KINDS[summary.kind]).tobytes()
             for h in summary.hashes.values()]
    if summary.masked is not None:
        parts.append(summary.masked.tobytes())
    return value, b"".join(parts)


def summary_from_message(value: Any, blob: bytes | None) -> MemorySummary:
    """A summary read back from a reply; ValueError naming what is wrong with it."""
    if not isinstance(value, dict) or not isinstance(value.get("blocks"), list):
        raise ValueError("memory summary: no block list")  # noqa: TRY004 - a bad reply
    blocks = value["blocks"]
    if len(blocks) > MAX_BLOCKS:
        raise ValueError(f"memory summary: {len(blocks)} blocks (at most {MAX_BLOCKS})")
    counts = [(_name(b), _count(b, "size", MAX_PAGES * PAGE_SIZE), _count(b, "pages", MAX_PAGES))
              for b in blocks]
    for name, size, pages in counts:
        if pages != -(-size // PAGE_SIZE):
            raise ValueError(f"memory summary: block {name!r} of {size} bytes has {pages} pages")
    kind = value.get("digests", "blake2b")
    if not isinstance(kind, str) or kind not in DIGEST_KINDS:
        raise ValueError(f"memory summary: digests {kind!r:.40} is not one of "
                         f"{sorted(DIGEST_KINDS)}")
    dtype = DIGEST_KINDS[kind]
    masked_pages = value.get("masked-pages")
    extra = 0 if masked_pages is None else _count(value, "masked-pages", MAX_PAGES)
    want = sum(p for _, _, p in counts) * dtype.itemsize + extra * DIGEST
    if blob is None or len(blob) != want:
        raise ValueError(f"memory summary: {0 if blob is None else len(blob)} bytes of "
                         f"digests, expected {want}")
    hashes, offset = {}, 0
    for name, _, pages in counts:
        hashes[name] = np.frombuffer(blob, dtype=dtype, count=pages, offset=offset)
        offset += pages * dtype.itemsize
    out = MemorySummary(hashes, {n: s for n, s, _ in counts}, kind=kind)
    if masked_pages is not None:
        out.masked = np.frombuffer(blob, dtype=HASH_DTYPE, count=extra, offset=offset)
    main = value.get("main")
    if main is not None and main not in hashes:
        raise ValueError(f"memory summary: main block {main!r} is not one of its blocks")
    out.main = main
    out.wave = _wave(value.get("wave"))
    error = value.get("wave-error")
    out.wave_error = str(error)[:1000] if error is not None else None
    out.notes = value["notes"] if isinstance(value.get("notes"), dict) else {}
    return out


def _name(block: Any) -> str:
    name = block.get("name") if isinstance(block, dict) else None
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise ValueError(f"memory summary: bad block name {name!r:.60}")
    return name


def _count(doc: dict[str, Any], key: str, limit: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"memory summary: {key} {value!r:.40} is not a count")
    return value


def _wave(doc: Any) -> Wave | None:
    if doc is None:
        return None
    problems = doc.get("problems") if isinstance(doc, dict) else None
    if not isinstance(problems, list) or len(problems) > MAX_PROBLEMS or \
            not all(isinstance(p, str) and len(p) <= 1000 for p in problems):
        raise ValueError("memory summary: bad wave problems")
    return Wave(gen=_count(doc, "gen", 1 << 32), cursor=_count(doc, "cursor", 1 << 64),
                problems=tuple(problems))
