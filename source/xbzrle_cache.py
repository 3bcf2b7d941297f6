"""XBZRLE on the source: QEMU 7.2's page cache and what `save_xbzrle_page` does with it.

Strategy: `PageCache` is `migration/page_cache.c` as numpy arrays: a direct-mapped table
of `xbzrle-cache-size / 4096` slots (a power of two); a page's slot is its ram_addr page
number modulo the slot count; a slot holds the page's address, its age (the dirty-sync
count when it was last used) and a copy of the page as it was last sent.  An insert does
not evict a different page used within CACHED_PAGE_LIFETIME (2) syncs.  The table is
`np.empty`, so slots never used cost no memory (QEMU mallocs each item on first use).

`XbzrleBatch` handles one batch of dirty pages of a block as `migration/ram.c` does page
by page (`ram_save_target_page` -> `save_zero_page` -> `ram_save_page` ->
`save_xbzrle_page`), with numpy over the whole batch:
- the pages are copied first (QEMU's `XBZRLE.current_buf`): what is cached is exactly
  what is sent, even while the guest keeps writing;
- a zero page goes as ZERO and puts a zero page in the cache;
- a miss counts `cache-miss`, inserts the page (not in the last stage) and sends it
  normally;
- a hit is encoded against the cached copy (`xbzrle.encode_pages`, all hits at once):
  an unchanged page sends nothing, an overflow counts `overflow` and sends the normal
  page, anything else goes as an XBZRLE record; either way the cache takes the new
  content (not in the last stage).
A batch whose pages share a slot is cut into runs of distinct slots, so the vector
operations give the page-by-page result.  Counters are `XBZRLECacheStats`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.protocol import xbzrle
from harness.protocol.ram_saver import PAGE, Out, RamSaver

from .frames import BlockRecords

CACHED_PAGE_LIFETIME = 2  # migration/page_cache.c
EMPTY = -1  # a slot never used


@dataclass
class XbzrleStats:
    """query-migrate's `xbzrle-cache` (XBZRLECacheStats)."""

    cache_size: int = 0
    bytes: int = 0  # XBZRLE records without their 8-byte header, plus a page per overflow
    pages: int = 0  # pages sent as XBZRLE
    cache_miss: int = 0
    cache_miss_rate: float = 0.0
    encoding_rate: float = 0.0
    overflow: int = 0

    def to_qmp(self) -> dict[str, int | float]:
        return {"cache-size": self.cache_size, "bytes": self.bytes, "pages": self.pages,
                "cache-miss": self.cache_miss, "cache-miss-rate": self.cache_miss_rate,
                "encoding-rate": self.encoding_rate, "overflow": self.overflow}


class PageCache:
    """migration/page_cache.c: a direct-mapped cache of pages keyed by ram_addr."""

    def __init__(self, size: int) -> None:
        if size < PAGE or size & (size - 1):
            raise ValueError(f"cache size {size} is not a power of two of at least one page")
        self.size = size
        self.slots = size // PAGE
        self.addr = np.full(self.slots, EMPTY, dtype=np.int64)
        self.age = np.zeros(self.slots, dtype=np.int64)
        self.data = np.empty((self.slots, PAGE), dtype=np.uint8)

    def slot_of(self, addrs: np.ndarray) -> np.ndarray:
        """cache_get_cache_pos: page number modulo the number of slots."""
        return (addrs // PAGE) & (self.slots - 1)

    def lookup(self, slots: np.ndarray, addrs: np.ndarray, age: int) -> np.ndarray:
        """cache_is_cached for distinct slots: hits get `age`."""
        hit = self.addr[slots] == addrs
        self.age[slots[hit]] = age
        return hit

    def insert(self, slots: np.ndarray, addrs: np.ndarray, pages: np.ndarray,
               age: int) -> np.ndarray:
        """cache_insert for distinct slots: refused where another page is still fresh;
        returns which were stored."""
        held = self.addr[slots]
        ok = (held == EMPTY) | (held == addrs) | (self.age[slots] + CACHED_PAGE_LIFETIME <= age)
        where = slots[ok]
        self.data[where] = pages[ok]
        self.addr[where] = addrs[ok]
        self.age[where] = age
        return ok


def distinct_slot_runs(slots: np.ndarray) -> list[slice]:
    """Cut a batch where a slot repeats an earlier one of the same run."""
    runs, start = [], 0
    n = slots.size
    while start < n:
        part = slots[start:]
        _, first = np.unique(part, return_index=True)
        repeated = np.ones(part.size, dtype=bool)
        repeated[first] = False
        stop = start + (int(np.argmax(repeated)) if repeated.any() else part.size)
        runs.append(slice(start, stop))
        start = stop
    return runs


# what happens to each page of a batch
ZERO, NORMAL, DELTA, SKIP = 0, 1, 2, 3


class XbzrleBatch:
    """One batch of a block's dirty pages through the cache, then framed in page order."""

    def __init__(self, cache: PageCache, stats: XbzrleStats, age: int, last_stage: bool
                 ) -> None:
        self.cache = cache
        self.stats = stats
        self.age = age
        self.last_stage = last_stage

    def save(self, out: Out, saver: RamSaver, block: str, mem: np.ndarray, base: int,
             pages: np.ndarray) -> tuple[int, int]:
        """Frame `pages` of `block` (ram_addr `base`); returns (zero, normal) pages sent."""
        rows = mem.reshape(-1, PAGE)[pages]  # a copy: QEMU's XBZRLE.current_buf
        addrs = base + pages.astype(np.int64) * PAGE
        what = np.full(pages.size, NORMAL, dtype=np.int8)
        deltas: dict[int, bytes] = {}
        zero = ~rows.view(np.uint64).any(axis=1)
        what[zero] = ZERO
        slots = self.cache.slot_of(addrs)
        for run in distinct_slot_runs(slots):
            self._classify(rows[run], addrs[run], slots[run], zero[run], what[run],
                           deltas, run.start or 0)
        return self._frame(out, saver, block, pages, rows, what, deltas)

    def _classify(self, rows: np.ndarray, addrs: np.ndarray, slots: np.ndarray,
                  zero: np.ndarray, what: np.ndarray, deltas: dict[int, bytes],
                  offset: int) -> None:
        cache, stats = self.cache, self.stats
        if zero.any():  # xbzrle_cache_zero_page (failing to insert does not matter)
            cache.insert(slots[zero], addrs[zero], rows[zero], self.age)
        data = ~zero
        hit = np.zeros_like(zero)
        hit[data] = cache.lookup(slots[data], addrs[data], self.age)
        miss = data & ~hit
        stats.cache_miss += int(np.count_nonzero(miss))
        if miss.any() and not self.last_stage:
            cache.insert(slots[miss], addrs[miss], rows[miss], self.age)
        if not hit.any():
            return
        at = np.flatnonzero(hit)
        encoded = xbzrle.encode_pages(cache.data[slots[at]], rows[at])
        changed = np.array([e != b"" for e in encoded], dtype=bool)
        if not self.last_stage and changed.any():  # the cache follows what is sent
            cache.data[slots[at[changed]]] = rows[at[changed]]
        for i, delta in zip(at.tolist(), encoded):
            if delta is None:
                stats.overflow += 1
                stats.bytes += PAGE
            elif delta:
                what[i] = DELTA
                deltas[offset + i] = delta
            else:
                what[i] = SKIP

    def _frame(self, out: Out, saver: RamSaver, block: str, pages: np.ndarray,
               rows: np.ndarray, what: np.ndarray, deltas: dict[int, bytes]
               ) -> tuple[int, int]:
        stats = self.stats
        records = BlockRecords(out, saver, block)
        for i, (page, kind) in enumerate(zip(pages.tolist(), what.tolist())):
            addr = page * PAGE
            if kind == ZERO:
                records.zero(addr)
            elif kind == NORMAL:
                records.page(addr, rows[i].data)
            elif kind == DELTA:
                stats.bytes += records.xbzrle(addr, deltas[i])  # ram.c: without the header
                stats.pages += 1
        records.close()
        return int(np.count_nonzero(what == ZERO)), int(np.count_nonzero(what == NORMAL))
