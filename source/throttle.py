"""Auto-converge: slow the guest down when precopy passes do not converge.

Strategy: QEMU 7.2's `migration/ram.c` (`migration_trigger_throttle`,
`mig_throttle_guest_down`) and `softmmu/cpu-throttle.c`.  At every dirty-bitmap sync
that closes a period of at least a second, the bytes the guest dirtied in the period are
compared with `throttle-trigger-threshold`% of the bytes sent in it; the second time
they exceed it (the count is not reset when they do not) the guest is throttled: first
to `cpu-throttle-initial`%, then `cpu-throttle-increment` more each time (with
`cpu-throttle-tailslow`, only as much as should bring the dirty rate down to the
threshold), never past `max-cpu-throttle`, within 1..99%.  Throttling is local: the
guest's workload sleeps that share of its time (`Workload.set_throttle`); nothing goes
on the wire.  It stops when the migration ends (`migration_iteration_finish`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CPU_THROTTLE_PCT_MIN = 1  # softmmu/cpu-throttle.c
CPU_THROTTLE_PCT_MAX = 99


class AutoConverge:
    """The throttle of one outgoing migration; `set_throttle(pct)` slows the guest."""

    def __init__(self, param: Callable[[str], Any], set_throttle: Callable[[int], None]
                 ) -> None:
        self._param = param
        self._set_throttle = set_throttle
        self.percentage = 0  # cpu_throttle_get_percentage (0: not active)
        self.dirty_rate_high_cnt = 0
        self.steps = 0  # how often the throttle was set or raised
        self.highest = 0

    @property
    def active(self) -> bool:
        return self.percentage > 0

    def period(self, bytes_dirty: int, bytes_xfer: int) -> None:
        """migration_trigger_throttle, at the end of a period of >= 1 s."""
        threshold = bytes_xfer * self._param("throttle-trigger-threshold") // 100
        if bytes_dirty > threshold:
            self.dirty_rate_high_cnt += 1
            if self.dirty_rate_high_cnt >= 2:
                self.dirty_rate_high_cnt = 0
                self.throttle_guest_down(bytes_dirty, threshold)

    def throttle_guest_down(self, bytes_dirty: int, threshold: int) -> None:
        """mig_throttle_guest_down."""
        initial = self._param("cpu-throttle-initial")
        increment = self._param("cpu-throttle-increment")
        most = self._param("max-cpu-throttle")
        now = self.percentage
        if not self.active:
            self._set(initial)
            return
        if self._param("cpu-throttle-tailslow"):
            cpu_now = 100 - now
            cpu_ideal = int(cpu_now * (threshold / bytes_dirty))
            step = min(cpu_now - cpu_ideal, increment)
        else:
            step = increment
        self._set(min(now + step, most))

    def _set(self, pct: int) -> None:
        """cpu_throttle_set: clamped to 1..99."""
        pct = max(CPU_THROTTLE_PCT_MIN, min(CPU_THROTTLE_PCT_MAX, pct))
        self.percentage = pct
        self.highest = max(self.highest, pct)
        self.steps += 1
        self._set_throttle(pct)

    def stop(self) -> None:
        """cpu_throttle_stop: the guest runs at full speed again."""
        if self.active:
            self.percentage = 0
            self._set_throttle(0)
