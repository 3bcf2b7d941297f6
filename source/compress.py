"""Multi-threaded page compression on the source (capability `compress`).

Strategy: QEMU 7.2's `migration/ram.c` (`compress_page_with_multi_thread`,
`do_compress_ram_page`, `qemu_put_compression_data`): each non-zero page is deflated on
its own at `compress-level` and sent as a COMPRESS_PAGE record (be32 length + zlib
stream).  `compress-threads` worker threads do the deflating; zlib releases the GIL while
it compresses, so they really run in parallel.  Unlike QEMU, whose threads hand their
pages back in whatever order they finish (so it must flush them all whenever the block
changes or a round ends), a batch here is split into one contiguous share per thread and
the records are framed in page order once every share is done: a page can never be
overtaken by an older copy of itself, whatever the rounds.  As in QEMU the pages are
copied first (so what is compressed is one consistent page), zero pages go as ZERO
records, and the first page of a new block goes as a normal page (`save_compress_page`).
Counters are `CompressionStats`'s; `busy` stays 0, as a batch never waits for a thread
(every thread is free when a batch starts).
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from harness.protocol.ram_saver import PAGE, Out, RamSaver

from .frames import BlockRecords


@dataclass
class CompressionStats:
    """query-migrate's `compression` (CompressionStats)."""

    pages: int = 0  # pages sent compressed
    busy: int = 0  # times no thread was free (a page then goes uncompressed)
    busy_rate: float = 0.0
    compressed_size: int = 0  # COMPRESS_PAGE records without their 8-byte header
    compression_rate: float = 0.0  # page bytes / compressed bytes, over the last period

    def to_qmp(self) -> dict[str, int | float]:
        return {"pages": self.pages, "busy": self.busy, "busy-rate": self.busy_rate,
                "compressed-size": self.compressed_size,
                "compression-rate": self.compression_rate}


def _deflate(rows: np.ndarray, level: int) -> list[bytes]:
    return [zlib.compress(row, level) for row in rows]


class CompressThreads:
    """`compress-threads` workers deflating shares of a batch in parallel."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="compress")

    def compress(self, rows: np.ndarray, level: int) -> list[bytes]:
        """zlib streams of each row (a page), in order."""
        n = rows.shape[0]
        shares = min(self.threads, max(1, n // 4))  # a few pages per thread at least
        if shares <= 1:
            return _deflate(rows, level)
        bounds = np.linspace(0, n, shares + 1).astype(int).tolist()
        futures = [self._pool.submit(_deflate, rows[a:b], level)
                   for a, b in pairwise(bounds)]
        return [data for future in futures for data in future.result()]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class CompressBatch:
    """One batch of a block's dirty pages, compressed by the threads, framed in order."""

    def __init__(self, threads: CompressThreads, stats: CompressionStats, level: int) -> None:
        self.threads = threads
        self.stats = stats
        self.level = level

    def save(self, out: Out, saver: RamSaver, block: str, mem: np.ndarray,
             pages: np.ndarray) -> tuple[int, int]:
        """Frame `pages` of `block`; returns (zero, normal) pages sent."""
        zeros = normal = 0
        if block != saver.last_block:  # save_compress_page: the block's first page goes plain
            zeros, normal = saver.save_pages(out, block, mem, pages[:1])
            pages = pages[1:]
        if not pages.size:
            return zeros, normal
        rows = mem.reshape(-1, PAGE)[pages]  # a copy: do_compress_ram_page's source_buf
        zero = ~rows.view(np.uint64).any(axis=1)
        packed = iter(self.threads.compress(rows[~zero], self.level))
        stats = self.stats
        records = BlockRecords(out, saver, block)
        for page, is_zero in zip(pages.tolist(), zero.tolist()):
            if is_zero:
                records.zero(page * PAGE)
            else:  # ram.c: the counters leave the 8-byte header out
                stats.compressed_size += records.compressed(page * PAGE, next(packed))
                stats.pages += 1
        records.close()
        return zeros + int(np.count_nonzero(zero)), normal
