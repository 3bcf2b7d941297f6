"""The guest writing its disks while it runs: what block migration's dirty phase is for.

Strategy: one thread in the source peer (the disks are memmaps of its raw images, so a
thread is enough: no vCPU process needed) rewrites 64 KiB blocks at seeded random offsets
of each drive that has a `write-rate`, paced by a token bucket, only while the guest's
runstate is "running".  Each write, and the mark of its 1 MiB chunk in that drive's dirty
map, happen under one lock, so block migration (source/block_save.py) takes a chunk's
data and clears its mark atomically with respect to the writes: a chunk written after it
was read is marked again.  Stopping the guest (QEMU's vm_stop) waits for the write in
flight (the `on_running` listener takes the lock), so once the guest is stopped the disks
no longer change -- what the final sync relies on.
"""

from __future__ import annotations

import threading
import time

import numpy as np

CHUNK = 1 << 20
WRITE = 64 << 10  # bytes per write
TICK = 0.01  # s between two looks at the bucket


class DiskWriter:
    """Rewrites `drives` (name -> uint8 memmap) at `rates` (name -> bytes/s)."""

    def __init__(self, guest: object, drives: dict[str, np.ndarray], rates: dict[str, int],
                 seed: int) -> None:
        self.guest = guest
        self.drives = {name: drives[name] for name, rate in rates.items() if rate > 0}
        self.rates = {name: rates[name] for name in self.drives}
        self.lock = threading.Lock()
        #: per drive, the 1 MiB chunks written since block migration last read them
        self.dirty = {name: np.zeros(-(-d.size // CHUNK), dtype=bool)
                      for name, d in self.drives.items()}
        self.writes = 0
        self._rng = np.random.default_rng([seed, 2])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-writer", daemon=True)
        guest.on_running.append(self._running_changed)  # type: ignore[attr-defined]

    def start(self) -> None:
        if self.drives:
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _running_changed(self, running: bool) -> None:
        if not running:
            with self.lock:  # the write in flight ends before the guest counts as stopped
                pass

    def _run(self) -> None:
        credit = dict.fromkeys(self.drives, 0.0)
        last = time.monotonic()
        while not self._stop.wait(TICK):
            now = time.monotonic()
            for name, rate in self.rates.items():
                credit[name] = min(credit[name] + rate * (now - last), rate)
                while credit[name] >= WRITE and self._write(name):
                    credit[name] -= WRITE
            last = now

    def _write(self, name: str) -> bool:
        """One 64 KiB write and its chunk's mark; False while the guest is not running."""
        disk = self.drives[name]
        at = int(self._rng.integers(0, disk.size // WRITE)) * WRITE
        data = self._rng.integers(1, 256, WRITE, dtype=np.uint8)
        with self.lock:
            if getattr(self.guest, "runstate", None) != "running":
                return False
            disk[at:at + WRITE] = data
            self.dirty[name][at // CHUNK] = True
            self.writes += 1
        return True
