"""Resident memory of peer processes, sampled while they migrate.

Strategy: a thread samples, every `period` seconds, each watched process and its
descendants (a guest's workload process) and keeps the peak of the sums.  Two measures,
because guest RAM is POSIX shared memory (/dev/shm): RSS counts a shared page in every
process that has touched it (so the sum can count a page twice: a peer and its workload
both map the guest), PSS divides each page among the processes mapping it (so the sum is
the memory these processes really hold).  RSS comes from psutil; PSS from
/proc/PID/smaps_rollup (0 where the kernel has none).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil


@dataclass
class Peak:
    rss: int = 0  # bytes: the largest sum of RSS seen in one sample
    pss: int = 0  # bytes: the largest sum of PSS seen in one sample
    samples: int = 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def sample(pids: list[int], pss: bool = True) -> tuple[int, int]:
    """(RSS sum, PSS sum or 0) of the processes `pids` and their descendants, now."""
    rss_sum = pss_sum = 0
    for pid in pids:
        for proc in _tree(pid):
            try:
                rss_sum += proc.memory_info().rss
            except psutil.Error:
                continue
            if pss:
                pss_sum += _pss(proc.pid)
    return rss_sum, pss_sum


class PeakSampler:
    """Samples `pids` (and descendants) in a thread between `start()` and `stop()`: RSS
    every `period` seconds, PSS (the kernel walks every mapping for it) every
    `pss_every`-th time."""

    def __init__(self, pids: list[int], period: float = 0.02, pss_every: int = 5) -> None:
        self.pids = list(pids)
        self.period = period
        self.pss_every = pss_every
        self.peak = Peak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def start(self) -> PeakSampler:
        self._take(True)
        self._thread.start()
        return self

    def stop(self) -> Peak:
        self._stop.set()
        self._thread.join(10.0)
        self._take(True)
        return self.peak

    def _take(self, pss: bool) -> None:
        rss_sum, pss_sum = sample(self.pids, pss)
        self.peak.rss = max(self.peak.rss, rss_sum)
        self.peak.pss = max(self.peak.pss, pss_sum)
        self.peak.samples += 1

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(self.period):
            tick += 1
            self._take(tick % self.pss_every == 0)
