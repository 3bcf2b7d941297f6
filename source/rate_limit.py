"""The migration thread's rate limit: QEMU's 100 ms windows of `max-bandwidth` (or
`max-postcopy-bandwidth` once in postcopy), and the per-window figures it derives.

Strategy: a mixin of `OutgoingMigration` holding only the methods; the state they read
and write (the writer's byte count, the window's start and bytes, the threshold, mbps)
belongs to the migration object and is declared here for the type checker.  It mirrors
migration/migration.c: migration_rate_limit, migration_update_counters, and
migration/qemu-file.c: qemu_file_rate_limit.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from harness.migration.status import MigrationStatus
from harness.protocol.ram_saver import PAGE

if TYPE_CHECKING:
    from harness.migration.config import MigrationConfig
    from harness.migration.status import StatusMachine

    from .ram_save import RamSave

S = MigrationStatus
BUFFER_DELAY = 0.1  # migration.c: BUFFER_DELAY, the rate-limit window
MAX_WAIT = 0.05  # ram.c: MAX_WAIT, the longest an iteration may run
XFER_LIMIT_RATIO = 10  # windows per second


class RateLimit:
    config: MigrationConfig
    state: StatusMachine
    ram: RamSave | None
    timing: Any
    _writer: Any
    _wake: threading.Event
    _urgent: threading.Event
    entered_postcopy: bool
    threshold: float
    mbps: float
    _window_start: float
    _window_bytes: int

    def _limit(self) -> float:
        name = "max-postcopy-bandwidth" if self.entered_postcopy else "max-bandwidth"
        bandwidth = self.config.param(name)
        return bandwidth / XFER_LIMIT_RATIO if bandwidth else float("inf")

    def _rate_limited(self) -> bool:
        """qemu_file_rate_limit: over this window's budget (or shut down)."""
        if self._wake.is_set() or self._writer is None:
            return True
        return self._writer.total - self._window_bytes > self._limit()

    def _budget_pages(self, most: int) -> int:
        """How many pages the next batch may hold: what is left of this window's budget,
        rounded up, so a window overshoots by less than a page, as QEMU's per-page check
        does (migration/ram.c: ram_find_and_save_block under qemu_file_rate_limit)."""
        assert self._writer is not None
        left = self._limit() - (self._writer.total - self._window_bytes)
        if left >= most * PAGE:
            return most
        return max(1, int(left) // PAGE + 1)

    def _update_counters(self) -> None:
        """migration_update_counters: bandwidth, threshold, mbps, expected downtime."""
        now = time.monotonic()
        spent = now - self._window_start
        if spent < BUFFER_DELAY or self._writer is None or self.ram is None:
            return
        transferred = self._writer.total - self._window_bytes
        bandwidth = transferred / (spent * 1000)  # bytes per ms
        self.threshold = bandwidth * self.config.param("downtime-limit")
        self.mbps = transferred * 8 / spent / 1e6
        if self.ram.stats.dirty_pages_rate and transferred > 10000 and bandwidth:
            self.timing.expected_downtime = self.ram.remaining() / bandwidth / 1000
        self._window_start = now
        self._window_bytes = self._writer.total

    def _rate_limit_wait(self) -> None:
        """migration_rate_limit: when over budget, sleep to the end of the window."""
        if self.state.status not in (S.ACTIVE, S.POSTCOPY_ACTIVE) or not self._rate_limited():
            return
        left = self._window_start + BUFFER_DELAY - time.monotonic()
        if left > 0:
            self._urgent.wait(left)  # cancel (or the return path's end) ends the wait early
            self._urgent.clear()
