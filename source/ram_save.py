"""RAM saving: the migration bitmap, bitmap sync, dirty-page scan and page batches.

Strategy: QEMU 7.2's `migration/ram.c` with numpy: one bool bitmap per RAMBlock (all set
at setup: the first pass sends everything), `bitmap_sync` ORs in what the guest dirtied
since the last sync (the guest's harvest is QEMU's dirty-log sync), counts passes and
measures the dirty-page rate every >= 1 s as `migration_bitmap_sync` does.  Pages are
found by scanning on from where the last batch ended (`last_seen_block` / `last_page`),
wrapping, in batches of up to 1024 pages (4 MiB: one send) that are cleared from the
bitmap and framed in one go by the codec's `RamSaver`.  Zero pages cost no reading when
they are holes of the guest's memory (untouched RAM: one mincore per scan window, looked
at again after every bitmap sync); else the saver finds them in its copy of the pages.
Once zero pages show up, they are found before framing and a batch takes more of them
(9 bytes each on the wire) within the bytes of its normal pages.  Statistics use
`query-migrate`'s names.  Postcopy recovery reloads each block's bitmap from the
destination's received-page bitmap (`ram_dirty_bitmap_reload`: dirty = not received, so
whatever was lost in flight goes again) and restarts the scan (`ram_state_resume_prepare`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from harness.protocol import RamBlockInfo
from harness.protocol.ram_saver import PAGE, Out, RamSaver, zero_pages

BATCH_PAGES = 1024  # 4 MiB of page data per send: fewer, larger sends cost less per byte
ZERO_BATCH_FACTOR = 16  # a batch of zero pages may hold this many times more pages
SCAN_WINDOW = 1 << 16  # pages looked at per flatnonzero
_NO_PAGES = np.empty(0, dtype=np.intp)


Holes = Callable[[str, int, int], "np.ndarray | None"]


class PageCodec(Protocol):
    def encode(self, out: Out, block: _Block, pages: np.ndarray) -> bool: ...


@dataclass
class RamStats:
    """The `ram` member of query-migrate (MigrationStats)."""

    transferred: int = 0  # bytes of RAM records written, headers included
    duplicate: int = 0  # zero pages sent
    normal: int = 0  # full pages sent
    xbzrle_pages: int = 0
    compressed_pages: int = 0
    dirty_sync_count: int = 0
    dirty_pages_rate: int = 0
    postcopy_requests: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    postcopy_bytes: int = 0


@dataclass
class _Block:
    name: str
    mem: np.ndarray
    bitmap: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.bitmap = np.ones(self.mem.size // PAGE, dtype=bool)

    @property
    def pages(self) -> int:
        return int(self.bitmap.size)


class RamSave:
    """The RAM state of one outgoing migration (QEMU's RAMState)."""

    def __init__(self, ram: Mapping[str, np.ndarray],
                 harvest: Callable[[], Mapping[str, np.ndarray]],
                 clock: Callable[[], float] = time.monotonic,
                 holes: Holes | None = None) -> None:
        self.blocks = [_Block(name, mem) for name, mem in ram.items()]
        #: (block, first, stop) -> which pages have no memory behind them (None: none);
        #: such a page is a zero page found without reading it (GuestMemory.holes)
        self._holes = holes
        #: the scan window (block, first page, stop) and its holes, found once per window
        #: and forgotten at every bitmap sync (a page may have been written since)
        self._window: tuple[_Block, int, int] | None = None
        self._window_holes: np.ndarray | None | bool = False  # False: not looked at yet
        self._batch_zero: tuple[np.ndarray, np.ndarray] | None = None  # (pages, zero)
        self._zeros_seen = True  # the last batch had zero pages: look for them up front
        self._by_name = {b.name: b for b in self.blocks}
        self._harvest = harvest
        self._clock = clock
        self.saver = RamSaver()
        self.stats = RamStats()
        self._scan_block = 0
        self._scan_page = 0
        self._found = np.empty(0, dtype=np.intp)  # dirty pages of the last scan window
        self._period_start = clock()
        self._period_dirtied = 0
        self.total = sum(b.mem.size for b in self.blocks)
        #: convergence features (source/convergence.py): frames a batch itself when
        #: XBZRLE or compression applies; called at the end of each >= 1 s period
        self.codec: PageCodec | None = None
        self.on_period: Callable[[int], None] | None = None
        self.rounds = 0  # complete rounds of the scan over all blocks

    # ------------------------------------------------------------------ setup
    def block_list(self) -> list[RamBlockInfo]:
        return [RamBlockInfo(b.name, b.mem.size) for b in self.blocks]

    # ------------------------------------------------------------------ dirty log
    def bitmap_sync(self) -> int:
        """migration_bitmap_sync: OR in the guest's dirty log; returns new dirty pages."""
        dirtied = self._harvest()
        self._forget_holes()
        new = 0
        for block in self.blocks:
            log = dirtied.get(block.name)
            if log is None:
                continue
            new += int(np.count_nonzero(log & ~block.bitmap))
            block.bitmap |= log
        self._period_dirtied += sum(int(np.count_nonzero(d)) for d in dirtied.values())
        self.stats.dirty_sync_count += 1
        now = self._clock()
        if now - self._period_start >= 1.0:
            self.stats.dirty_pages_rate = int(self._period_dirtied / (now - self._period_start))
            if self.on_period is not None:
                self.on_period(self._period_dirtied)
            self._period_start = now
            self._period_dirtied = 0
        return new

    def dirty_pages(self) -> int:
        return sum(int(np.count_nonzero(b.bitmap)) for b in self.blocks)

    def remaining(self) -> int:
        """Bytes still to send (QEMU's `remaining`: dirty pages x page size)."""
        return self.dirty_pages() * PAGE

    # ------------------------------------------------------------------ sending
    def next_batch(self, limit: int = BATCH_PAGES, *, more_zeros: bool = False
                   ) -> tuple[_Block, np.ndarray] | None:
        """The next dirty pages from the scan position (wrapping), cleared from the bitmap.

        A window of the bitmap is scanned once and its dirty pages handed out batch by
        batch (each re-checked: a page request may have sent one meanwhile).  At most
        `limit` pages; with `more_zeros`, as many more zero pages as fit in the bytes of
        `limit` normal pages (up to ZERO_BATCH_FACTOR x `limit`: a zero page is 9 bytes)."""
        for _ in range(2 * len(self.blocks) + 2):
            block = self.blocks[self._scan_block]
            while self._found.size:
                pages = self._take(block, max(1, limit), more_zeros)
                if pages.size:
                    block.bitmap[pages] = False
                    return block, pages
            start = self._scan_page
            while start < block.pages:
                window = block.bitmap[start:start + SCAN_WINDOW]
                self._scan_page = start + window.size
                hits = np.flatnonzero(window)
                if hits.size:
                    self._found = hits + start
                    self._window = (block, start, start + window.size)
                    self._window_holes = False
                    break
                start += window.size
            else:
                self._scan_block = (self._scan_block + 1) % len(self.blocks)
                self._scan_page = 0
                self.rounds += self._scan_block == 0
        return None

    def _take(self, block: _Block, limit: int, more_zeros: bool) -> np.ndarray:
        """Up to `limit` pages' worth of wire bytes of the scan window's dirty pages.

        With `more_zeros`, when the last batch had zero pages or the window has holes,
        zero pages are found here, `limit` pages at first: a zero page is 9 bytes on the
        wire, so while the pages are zero pages the batch takes more of them -- up to
        ZERO_BATCH_FACTOR x `limit` pages, within the bytes `limit` normal pages would
        take (the rate limit's budget); candidates past that go back to the window.
        Else (and always with a codec: XBZRLE, compression) a batch is `limit` pages."""
        if self.codec is not None or not more_zeros or \
                not (self._zeros_seen or self._window_has_holes()):
            # no zero page lately: the saver finds any in its copy of the pages
            pages, self._found = self._found[:limit], self._found[limit:]
            self._batch_zero = None
            return pages[block.bitmap[pages]]
        budget = limit * (PAGE + 8)
        cap = limit * ZERO_BATCH_FACTOR
        parts: list[np.ndarray] = []
        zeros: list[np.ndarray] = []
        chunk, taken = limit, 0
        while self._found.size and budget > 0 and taken < cap:
            k = min(chunk, cap - taken)
            cand, rest = self._found[:k], self._found[k:]
            cand = cand[block.bitmap[cand]]
            self._found = rest
            if not cand.size:
                continue
            zero = self.zero_flags(block, cand)
            cost = np.cumsum(np.where(zero, 9, PAGE + 8))
            n = max(int(np.searchsorted(cost, budget, side="right")), 0 if parts else 1)
            if n < cand.size:  # over budget: the rest goes back for the next batch
                self._found = np.concatenate((cand[n:], rest))
                cand, zero = cand[:n], zero[:n]
            parts.append(cand)
            zeros.append(zero)
            budget -= int(cost[n - 1]) if n else budget
            taken += cand.size
            chunk *= 4
        if not parts:
            return np.empty(0, dtype=np.intp)
        pages = parts[0] if len(parts) == 1 else np.concatenate(parts)
        zero = zeros[0] if len(zeros) == 1 else np.concatenate(zeros)
        self._batch_zero = (pages, zero)
        return pages

    def zero_flags(self, block: _Block, pages: np.ndarray) -> np.ndarray:
        """Which of `pages` (ascending) are zero pages: holes without reading them, the
        others with numpy (`zero_pages`; a run of consecutive pages in place)."""
        first, stop = int(pages[0]), int(pages[-1]) + 1
        holes = self._holes_in(block, first, stop)
        contiguous = stop - first == pages.size
        if holes is None:
            return zero_pages(block.mem, slice(first, stop) if contiguous else pages)
        zero = holes[pages - first]
        backed = np.flatnonzero(~zero)
        if backed.size:
            zero[backed] = zero_pages(block.mem, pages[backed])
        return zero

    def _holes_in(self, block: _Block, first: int, stop: int) -> np.ndarray | None:
        """The holes among pages [first, stop) (None: none), from the scan window's."""
        if self._holes is None:
            return None
        window = self._window
        if window is None or window[0] is not block or not window[1] <= first < stop <= window[2]:
            return self._holes(block.name, first, stop)
        if self._window_holes is False:
            self._window_holes = self._holes(block.name, window[1], window[2])
        holes = self._window_holes
        if not isinstance(holes, np.ndarray):
            return None
        return holes[first - window[1]:stop - window[1]]

    def _window_has_holes(self) -> bool:
        window = self._window
        return window is not None and self._holes_in(*window) is not None

    def _forget_holes(self) -> None:
        self._window_holes = False

    def take_pages(self, block_name: str, start: int, length: int) -> np.ndarray:
        """Queued pages of a page request (postcopy): the still-dirty ones, cleared."""
        block = self._by_name[block_name]
        first = start // PAGE
        if length <= PAGE:  # one page (the usual request): plain indexing
            if not block.bitmap[first]:
                return _NO_PAGES
            block.bitmap[first] = False
            return np.array([first], dtype=np.intp)
        pages = np.arange(first, first + length // PAGE)
        pages = pages[block.bitmap[pages]]
        block.bitmap[pages] = False
        return pages

    def received_bitmap_size(self, block_name: str) -> int:
        """Bytes of a block's RECV_BITMAP data: one bit per page, in whole 64-bit words
        (ram.c: ram_dirty_bitmap_reload's `local_size`)."""
        pages = self._by_name[block_name].pages
        return (pages + 63) // 64 * 8

    def reload_received(self, block_name: str, received: np.ndarray) -> int:
        """ram_dirty_bitmap_reload: the block's dirty bitmap becomes the complement of what
        the destination received; returns the dirty pages of the block."""
        block = self._by_name[block_name]
        np.logical_not(received[:block.pages], out=block.bitmap)
        self._forget_holes()
        return int(np.count_nonzero(block.bitmap))

    def reset_scan(self) -> None:
        """Start the next scan at the first page (QEMU resets its position at the switch)."""
        self._scan_block = 0
        self._scan_page = 0
        self._found = np.empty(0, dtype=np.intp)

    def jump_to(self, block_name: str, page: int) -> None:
        """Continue the background scan after a requested page, as QEMU does."""
        self._scan_block = next(i for i, b in enumerate(self.blocks) if b.name == block_name)
        self._scan_page = page
        self._found = np.empty(0, dtype=np.intp)

    def encode(self, out: Out, block: _Block, pages: np.ndarray) -> None:
        if self.codec is not None and self.codec.encode(out, block, pages):
            return
        known = self._batch_zero
        zero = known[1] if known is not None and known[0] is pages else None
        zeros, normal = self.saver.save_pages(out, block.name, block.mem, pages, zero)
        self._zeros_seen = zeros > 0
        self.stats.duplicate += zeros
        self.stats.normal += normal

    def split_zero(self, block: _Block, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """multifd (ram.c: ram_save_target_page checks for a zero page before multifd):
        a batch's zero pages (for main) and its other pages (for the channels)."""
        known = self._batch_zero
        zero = known[1] if known is not None and known[0] is pages else \
            self.zero_flags(block, pages)
        self._zeros_seen = bool(zero.any())
        return pages[zero], pages[~zero]

    def block(self, name: str) -> _Block:
        return self._by_name[name]
