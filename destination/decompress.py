"""Multi-threaded decompression of COMPRESS_PAGE records on the destination.

Strategy: QEMU 7.2 hands each compressed page to one of `decompress-threads` threads
(`decompress_data_with_multi_threads`) and waits for them all at the end of each RAM
section (`wait_for_decompress_done`).  Here the codec's RAM loader (sans-IO, no threads)
defers the compressed records of what it has received and inflates them together when
it writes its deferred pages -- before an XBZRLE delta, at a block change, at the end of
each received chunk -- through the `inflate` hook this module provides: the records are
split into one contiguous share per thread, and zlib releases the GIL while it
inflates, so the threads really run in parallel.  The loader writes each page only if
no later record of the same chunk wrote it, so an older copy never overtakes a newer
one; a record that does not inflate to exactly one page fails the load with QEMU's
"decompress data failed" at that record's offset.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

from harness.migration.config import MigrationConfig


def _inflate(datas: list[bytes]) -> list[bytes]:
    out = []
    for data in datas:
        try:
            out.append(zlib.decompress(data))
        except zlib.error:
            out.append(b"")  # the loader reports it, with the record's offset
    return out


class DecompressThreads:
    """`decompress-threads` workers inflating shares of a chunk's compressed pages."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decompress")

    def inflate(self, datas: list[bytes]) -> list[bytes]:
        """Each zlib stream inflated (b"" where it is not one), in order."""
        shares = min(self.threads, max(1, len(datas) // 4))
        if shares <= 1:
            return _inflate(datas)
        bounds = [len(datas) * i // shares for i in range(shares + 1)]
        futures = [self._pool.submit(_inflate, datas[a:b]) for a, b in pairwise(bounds)]
        return [page for future in futures for page in future.result()]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def attach(loader: Any, config: MigrationConfig) -> DecompressThreads | None:
    """Threads for `loader` when the `compress` capability is on (QEMU creates its
    decompress threads only then), else None (compressed pages inflate inline)."""
    if not config.cap("compress"):
        return None
    threads = DecompressThreads(config.param("decompress-threads"))
    loader.inflate = threads.inflate
    return threads
