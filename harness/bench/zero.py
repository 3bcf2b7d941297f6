"""`harness bench zero`: migrate an all-zero guest; the peers' peak resident memory.

Strategy: two harness peer processes migrate an idle guest whose RAM is all zero (8 GiB by
default) over loopback TCP with max-bandwidth unlimited, timed from `migrate` to the
destination's `completed`.  A zero page is 9 bytes on the wire, so this is CPU bound: the
figure is GB/s of guest memory, with a goal on the value (5 GB/s); its baseline, measured
in the same invocation, is what one process scans for zero pages with numpy
(`bitwise_or.reduce` per 4 KiB page over populated memory) -- the bound on finding them.
Meanwhile the RSS and PSS of both peers (and their descendants) are sampled; the peak sums
over the guest size are the memory figures (goal: at most 2.2x).  Both peers' guest RAM
is backed up front (what a VM's allocated RAM is), so about 2x is the floor.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.runner.peers import HarnessPeer

from .figures import Figure
from .memory import PeakSampler
from .precopy import migrate, peer_page_path

GiB = 1 << 30
SCAN_BUFFER = 256 << 20
GOAL_GBPS = 5.0
GOAL_MEMORY = 2.2


def scan_rate(size: int) -> float:
    """GB/s at which one process finds the zero pages of `size` bytes of populated memory."""
    buf = np.zeros(min(size, SCAN_BUFFER), dtype=np.uint8)
    buf.fill(0)  # populate: reading never-touched memory would read the shared zero page
    words = buf.view(np.uint64).reshape(-1, 512)
    chunk = 16384  # pages per call
    done = 0
    start = time.perf_counter()
    while done < size:
        for at in range(0, words.shape[0], chunk):
            zero = np.bitwise_or.reduce(words[at:at + chunk], axis=1) == 0
            if not zero.all():
                raise RuntimeError("the zero buffer is not zero")
        done += buf.size
    return done / (time.perf_counter() - start) / 1e9


def run(size: int = 8 * GiB, timeout: float = 300.0) -> list[Figure]:
    baseline = scan_rate(size)
    workdir = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    guest = {"machine": "none", "seed": 1, "fill": 0.0,
             "blocks": [{"name": "ram", "size": size}], "devices": ["timer", "globalstate"],
             "workload": None}
    dst = HarnessPeer("destination", workdir, guest, ["--incoming", "defer"])
    src = HarnessPeer("source", workdir, guest)
    try:
        dst.start()
        src.start()
        assert src.pid is not None and dst.pid is not None
        sampler = PeakSampler([src.pid, dst.pid]).start()
        try:
            seconds, stream = migrate(src, dst, timeout)
            paths = peer_page_path(src, dst)
        finally:
            peak = sampler.stop()
    finally:
        src.close()
        dst.close()
        shutil.rmtree(workdir, ignore_errors=True)
    gib = size / GiB
    label = f"{gib:g}GiB" if gib >= 1 else f"{size >> 20}MiB"
    memory_note = (f"peak of {peak.samples} samples of source + destination (and their "
                   f"children), from both started to the end of the migration")
    return [
        Figure.of(f"precopy.harness.tcp.idle-zero-{label}", size / seconds / 1e9, "GB/s",
                  baseline, goal=GOAL_GBPS, goal_of="value",
                  baseline_name="numpy zero-page scan of as much memory, one process",
                  note=f"{stream / 1e6:.1f} MB on the wire", peer_page_path=paths),
        Figure.of(f"memory.peak-rss.idle-zero-{label}", peak.rss / GiB, "GiB", gib,
                  goal=GOAL_MEMORY, lower_is_better=True, baseline_name="guest RAM size",
                  note="RSS (a shared page counts in every process that touched it); "
                       + memory_note, peer_page_path=paths),
        Figure.of(f"memory.peak-pss.idle-zero-{label}", peak.pss / GiB, "GiB", gib,
                  goal=GOAL_MEMORY, lower_is_better=True, baseline_name="guest RAM size",
                  note="PSS (shared pages divided among the processes mapping them); "
                       + memory_note, peer_page_path=paths),
    ]
