"""RAM saving: the migration bitmap, bitmap sync, dirty-page scan and page batches.

Strategy: QEMU 7.2's `migration/ram.c` with numpy: one bool bitmap per RAMBlock (all set
at setup: the first pass sends everything), `bitmap_sync` ORs in what the guest dirtied
since the last sync (the guest's harvest is QEMU's dirty-log sync), counts passes and
measures the dirty-page rate every >= 1 s as `migration_bitmap_sync` does.  Pages are
found by scanning on from where the last batch ended (`last_seen_block` / `last_page`),
wrapping, in batches of up to 256 pages that are cleared from the bitmap and framed in one
go by the codec's `RamSaver` (zero pages detected with numpy).  Statistics use
`query-migrate`'s names.  Postcopy recovery reloads each block's bitmap from the
destination's received-page bitmap (`ram_dirty_bitmap_reload`: dirty = not received, so
whatever was lost in flight goes again) and restarts the scan (`ram_state_resume_prepare`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from harness.protocol import RamBlockInfo
from harness.protocol.ram_saver import PAGE, Out, RamSaver

BATCH_PAGES = 256  # about 1 MiB of page data per send
SCAN_WINDOW = 1 << 16  # pages looked at per flatnonzero


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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.blocks = [_Block(name, mem) for name, mem in ram.items()]
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

    # ------------------------------------------------------------------ setup
    def block_list(self) -> list[RamBlockInfo]:
        return [RamBlockInfo(b.name, b.mem.size) for b in self.blocks]

    # ------------------------------------------------------------------ dirty log
    def bitmap_sync(self) -> int:
        """migration_bitmap_sync: OR in the guest's dirty log; returns new dirty pages."""
        dirtied = self._harvest()
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
            self._period_start = now
            self._period_dirtied = 0
        return new

    def dirty_pages(self) -> int:
        return sum(int(np.count_nonzero(b.bitmap)) for b in self.blocks)

    def remaining(self) -> int:
        """Bytes still to send (QEMU's `remaining`: dirty pages x page size)."""
        return self.dirty_pages() * PAGE

    # ------------------------------------------------------------------ sending
    def next_batch(self, limit: int = BATCH_PAGES) -> tuple[_Block, np.ndarray] | None:
        """The next dirty pages from the scan position (wrapping), cleared from the bitmap.

        A window of the bitmap is scanned once and its dirty pages handed out batch by
        batch (each re-checked: a page request may have sent one meanwhile)."""
        for _ in range(2 * len(self.blocks) + 2):
            block = self.blocks[self._scan_block]
            while self._found.size:
                pages, self._found = self._found[:limit], self._found[limit:]
                pages = pages[block.bitmap[pages]]
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
                    break
                start += window.size
            else:
                self._scan_block = (self._scan_block + 1) % len(self.blocks)
                self._scan_page = 0
        return None

    def take_pages(self, block_name: str, start: int, length: int) -> np.ndarray:
        """Queued pages of a page request (postcopy): the still-dirty ones, cleared."""
        block = self._by_name[block_name]
        first = start // PAGE
        pages = np.arange(first, first + max(1, length // PAGE))
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
        zeros, normal = self.saver.save_pages(out, block.name, block.mem, pages)
        self.stats.duplicate += zeros
        self.stats.normal += normal

    def block(self, name: str) -> _Block:
        return self._by_name[name]
