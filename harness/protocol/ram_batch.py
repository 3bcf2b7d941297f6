"""The pages placed by one call of the RAM walk, for one block, turned into `RamPages` events.

Strategy: offsets and kinds are appended to `array`s (one C append per record) or arrive
as numpy chunks (a run placed with one copy, or what `harness._recv` placed); `flush`
concatenates them into one `RamPages` event per block switch.  Pages whose writing is
cheaper together (zero pages, compressed pages given to decompress-threads) are recorded
as deferred kinds and written when the batch is applied, unless a later record of the
batch wrote the same page.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import RemoteProtocolError
from .events import RamPages
from .ram_records import COMPRESS, DEFERRED_COMPRESSED, DEFERRED_ZERO, PAGE, ZERO, ZERO_PAGE


class PageBatch:
    """Offsets and kinds of the pages placed since the last flush, for one block.

    Zero pages of the fast path are only recorded (kind DEFERRED_ZERO) and zeroed with
    one numpy operation when the batch is applied, unless a later record of the batch
    wrote the same page; a delta (XBZRLE) applies them first.  With an `inflate` hook,
    compressed pages are deferred the same way (kind DEFERRED_COMPRESSED, their zlib
    data and record offset in `compressed`) and inflated together when applied.
    """

    __slots__ = ("base", "block", "chunks", "compressed", "deferred", "first", "inflate", "kinds",
                 "offsets", "section_id")

    def __init__(self, section_id: int, base: int, pos: int,
                 inflate: Callable[[list[bytes]], list[bytes]] | None = None) -> None:
        self.inflate = inflate
        self.compressed: list[tuple[bytes, int]] = []  # deferred: (zlib data, offset)
        self.deferred = False  # zero pages may be deferred (set by whoever defers them)
        self.section_id = section_id
        self.base = base  # absolute offset of buffer position 0
        self.first = base + pos  # absolute offset of the batch's first record
        self.block: Any = None
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.offsets = array("Q")
        self.kinds = array("H")

    def appenders(self):  # type: ignore[no-untyped-def]
        return self.offsets.append, self.kinds.append

    def switch(self, block: Any, events: list, pos: int) -> None:
        if block is not self.block:
            self.flush(events, pos)
            self.block = block

    def add(self, addr: int, kind: int) -> None:
        self.offsets.append(addr)
        self.kinds.append(kind)

    def add_chunk(self, offsets: np.ndarray, kinds: np.ndarray) -> None:
        """Offsets (uint64) and kinds (uint16) placed already, e.g. by harness._recv."""
        self._close_chunk()
        self.chunks.append((offsets, kinds))

    def add_many(self, offsets: np.ndarray, kind: int) -> None:
        self._close_chunk()
        self.chunks.append((offsets.astype(np.uint64),
                            np.full(offsets.size, int(kind), dtype=np.uint16)))

    def _close_chunk(self) -> None:
        if self.offsets:
            self.chunks.append((np.frombuffer(self.offsets, dtype=np.uint64),
                                np.frombuffer(self.kinds, dtype=np.uint16)))
            self.offsets = array("Q")
            self.kinds = array("H")

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        self._close_chunk()
        if len(self.chunks) == 1:
            return self.chunks[0]
        merged = (np.concatenate([c[0] for c in self.chunks]),
                  np.concatenate([c[1] for c in self.chunks]))
        self.chunks = [merged]
        return merged

    def apply_zeros(self) -> None:
        """Write the deferred pages now: zero pages, and compressed pages inflated
        together; each only if no later record wrote the same page."""
        if not (self.deferred or self.compressed) or (not self.chunks and not self.offsets):
            return
        self.deferred = False
        offsets, kinds = self._merged()
        deferred = kinds == DEFERRED_ZERO
        if self.compressed:
            deferred |= kinds == DEFERRED_COMPRESSED
        if not deferred.any():
            return
        assert self.block is not None
        live = deferred
        if offsets.size > 1 and not bool((offsets[1:] > offsets[:-1]).all()):
            # a page seen twice: only its last record counts
            _, first_of_reversed = np.unique(offsets[::-1], return_index=True)
            last = offsets.size - 1 - first_of_reversed
            live = np.zeros_like(deferred)
            live[last] = deferred[last]
        if self.compressed:
            self._inflate(offsets, kinds, live)
        zero_at = offsets[live & (kinds == DEFERRED_ZERO)]
        pages = self.block.pages
        if pages is not None:
            pages[(zero_at >> np.uint64(12)).astype(np.intp)] = 0
        else:
            view = self.block.view
            assert view is not None
            for addr in zero_at.tolist():
                view[addr:addr + PAGE] = ZERO_PAGE
        kinds[kinds == DEFERRED_ZERO] = ZERO

    def _inflate(self, offsets: np.ndarray, kinds: np.ndarray, live: np.ndarray) -> None:
        """The deferred compressed pages that count, inflated in one call of the hook
        (decompress-threads) and written; "decompress data failed" at a bad record."""
        assert self.inflate is not None and self.block is not None
        view = self.block.view
        assert view is not None
        comp = kinds == DEFERRED_COMPRESSED
        rank = np.cumsum(comp) - 1  # index into self.compressed
        use = np.flatnonzero(live & comp)
        items = [self.compressed[i] for i in rank[use].tolist()]
        self.compressed = []
        kinds[comp] = COMPRESS
        pages = self.inflate([data for data, _ in items])
        for (_, at), page, addr in zip(items, pages, offsets[use].tolist()):
            if len(page) != PAGE:
                raise RemoteProtocolError("decompress data failed", offset=at)
            view[addr:addr + PAGE] = page

    def flush(self, events: list, pos: int) -> None:
        """Apply and emit what was placed; the next batch starts at buffer position `pos`."""
        self.apply_zeros()
        self._close_chunk()
        if self.chunks and self.block is not None:
            offsets, kinds = self._merged()
            events.append(RamPages(self.section_id, self.block.idstr, offsets, kinds,
                                   offset=self.first))
        self.chunks = []
        self.first = self.base + pos
