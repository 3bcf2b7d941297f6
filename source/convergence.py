"""The convergence features of one outgoing migration: XBZRLE, compression, auto-converge.

Strategy: one `Convergence` per migration, attached to its `RamSave` through two hooks.
`codec`: `RamSave.encode` hands it each batch of dirty pages; it frames the batch itself
when a feature applies, choosing as QEMU 7.2's `ram_save_target_page` does -- XBZRLE once
the scan has completed a round (`xbzrle_enabled`), else compression while XBZRLE is not
in use (`save_page_use_compression`), never in postcopy (requested pages and the
background push go as plain pages, as QEMU never uses XBZRLE there) -- and otherwise
declines (the plain path).  `on_period`: `RamSave.bitmap_sync` calls it when a period of
at least a second ends; it updates the XBZRLE and compression rates
(`migration_update_rates`) and lets auto-converge judge the period
(`migration_trigger_throttle`).  `info()` is what `query-migrate` adds: `xbzrle-cache`
and `compression` while the capability is on, `cpu-throttle-percentage` while the guest
is throttled (QEMU stops throttling when the migration ends, so a completed migration no
longer reports it: `x-cpu-throttle` keeps the highest percentage and how often it was
raised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from harness.migration.config import MigrationConfig
from harness.protocol.ram_saver import PAGE, Out

from .compress import CompressBatch, CompressionStats, CompressThreads
from .ram_save import RamSave
from .throttle import AutoConverge
from .xbzrle_cache import PageCache, XbzrleBatch, XbzrleStats


class Convergence:
    """XBZRLE cache, compress threads and throttle of one outgoing migration."""

    def __init__(self, ram: RamSave, config: MigrationConfig, guest: Any,
                 transferred: Callable[[], int], in_postcopy: Callable[[], bool]) -> None:
        self.ram = ram
        self.config = config
        self.guest = guest
        self._transferred = transferred
        self._in_postcopy = in_postcopy
        self.last_stage = False  # migration_completion: the guest is stopped
        self.bases: dict[str, int] = {}
        base = 0
        for block in ram.blocks:  # ram_addr: the blocks one after the other
            self.bases[block.name] = base
            base += block.mem.size
        self.cache: PageCache | None = None
        self.xbzrle: XbzrleStats | None = None
        if config.cap("xbzrle"):
            self.cache = PageCache(config.param("xbzrle-cache-size"))
            self.xbzrle = XbzrleStats(cache_size=self.cache.size)
        self.threads: CompressThreads | None = None
        self.compression: CompressionStats | None = None
        if config.cap("compress"):
            self.threads = CompressThreads(config.param("compress-threads"))
            self.compression = CompressionStats()
        self.throttle: AutoConverge | None = None
        if config.cap("auto-converge"):
            self.throttle = AutoConverge(config.param, self._set_throttle)
        self.target_pages = 0  # pages handled (rs->target_page_count)
        self._prev = {"pages": 0, "xfer": 0, "miss": 0, "xb_pages": 0, "xb_bytes": 0,
                      "busy": 0, "c_pages": 0, "c_size": 0}

    @classmethod
    def attach(cls, ram: RamSave, config: MigrationConfig, guest: Any,
               transferred: Callable[[], int], in_postcopy: Callable[[], bool]
               ) -> Convergence | None:
        """A Convergence hooked into `ram` when any of the three capabilities is on."""
        if not any(config.cap(c) for c in ("xbzrle", "compress", "auto-converge")):
            return None
        self = cls(ram, config, guest, transferred, in_postcopy)
        ram.codec = self
        ram.on_period = self.on_period
        return self

    # ------------------------------------------------------------------ pages
    def encode(self, out: Out, block: Any, pages: np.ndarray) -> bool:
        """Frame a batch if XBZRLE or compression applies to it (True), else decline."""
        self.target_pages += int(pages.size)
        if self._in_postcopy():
            return False
        ram = self.ram
        if self.xbzrle is not None and ram.rounds >= 1:  # xbzrle_enabled
            before = self.xbzrle.pages
            zeros, normal = self._xbzrle_batch().save(
                out, ram.saver, block.name, block.mem, self.bases[block.name], pages)
            ram.stats.xbzrle_pages += self.xbzrle.pages - before
        elif self.threads is not None and self.compression is not None:
            level = self.config.param("compress-level")
            before = self.compression.pages
            zeros, normal = CompressBatch(self.threads, self.compression, level).save(
                out, ram.saver, block.name, block.mem, pages)
            ram.stats.compressed_pages += self.compression.pages - before
        else:
            return False
        ram.stats.duplicate += zeros
        ram.stats.normal += normal
        return True

    def _xbzrle_batch(self) -> XbzrleBatch:
        assert self.cache is not None and self.xbzrle is not None
        size = self.config.param("xbzrle-cache-size")
        if size != self.cache.size:  # xbzrle_cache_resize: a new, empty cache
            self.cache = PageCache(size)
            self.xbzrle.cache_size = size
        return XbzrleBatch(self.cache, self.xbzrle, self.ram.stats.dirty_sync_count,
                           self.last_stage)

    # ------------------------------------------------------------------ periods
    def on_period(self, dirtied_pages: int) -> None:
        """End of a >= 1 s period: throttle decision, then the rates."""
        transferred = self._transferred()
        xfer = transferred - self._prev["xfer"]
        self._prev["xfer"] = transferred
        if self.throttle is not None:
            self.throttle.period(dirtied_pages * PAGE, xfer)
        page_count = self.target_pages - self._prev["pages"]
        self._prev["pages"] = self.target_pages
        if page_count:
            self._xbzrle_rates(page_count)
            self._compression_rates(page_count)

    def _xbzrle_rates(self, page_count: int) -> None:
        st, prev = self.xbzrle, self._prev
        if st is None:
            return
        st.cache_miss_rate = (st.cache_miss - prev["miss"]) / page_count
        unencoded = (st.pages - prev["xb_pages"]) * PAGE
        encoded = st.bytes - prev["xb_bytes"]
        st.encoding_rate = unencoded / encoded if st.pages != prev["xb_pages"] and encoded \
            else 0.0
        prev.update(miss=st.cache_miss, xb_pages=st.pages, xb_bytes=st.bytes)

    def _compression_rates(self, page_count: int) -> None:
        st, prev = self.compression, self._prev
        if st is None:
            return
        st.busy_rate = (st.busy - prev["busy"]) / page_count
        prev["busy"] = st.busy
        size = st.compressed_size - prev["c_size"]
        if size:
            st.compression_rate = (st.pages - prev["c_pages"]) * PAGE / size
            prev.update(c_pages=st.pages, c_size=st.compressed_size)

    # ------------------------------------------------------------------ guest
    def _set_throttle(self, pct: int) -> None:
        workload = getattr(self.guest, "workload", None)
        if workload is not None and workload.alive and not getattr(self.guest, "closed", False):
            workload.set_throttle(pct)

    # ------------------------------------------------------------------ QMP
    def info(self) -> dict[str, Any]:
        """What populate_ram_info adds to query-migrate."""
        out: dict[str, Any] = {}
        if self.xbzrle is not None:
            out["xbzrle-cache"] = self.xbzrle.to_qmp()
        if self.compression is not None:
            out["compression"] = self.compression.to_qmp()
        if self.throttle is not None:
            if self.throttle.active:
                out["cpu-throttle-percentage"] = self.throttle.percentage
            out["x-cpu-throttle"] = {"highest": self.throttle.highest,
                                     "steps": self.throttle.steps}
        return out

    def close(self) -> None:
        """migration_iteration_finish: stop throttling; the compress threads end."""
        if self.throttle is not None:
            self.throttle.stop()
        if self.threads is not None:
            self.threads.close()
