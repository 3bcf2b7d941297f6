"""The workload keeps its dirty rate when it is scheduled late: a busy machine wakes it tens
of ms late, and what it missed meanwhile is caught up (within BUCKET_SECONDS), not lost."""

from __future__ import annotations

from harness.guest import workload as wl
from harness.guest.memory import BlockSpec, GuestMemory

MiB = 1 << 20
RATE = 32 * MiB
PPS = RATE / 4096


def _drain(loop: wl._Loop, written: list[int]) -> int:
    """Steps with the clock standing still until nothing more is due; pages written."""
    before = sum(written)
    for _ in range(10_000):
        count = len(written)
        loop.step()
        if len(written) == count:
            break
    return sum(written) - before


def test_a_late_wake_up_catches_up_on_the_rate_it_missed(monkeypatch):
    with GuestMemory.create([BlockSpec("ram", 64 * MiB)]) as mem:
        loop = wl._Loop(mem, wl.WorkloadSpec(RATE, "uniform", 0, 1), content_seed=1)
        written: list[int] = []

        def batch(n: int) -> None:
            written.append(n)
            loop.tokens -= n
        monkeypatch.setattr(loop, "batch", batch)
        clock = [1000.0]
        monkeypatch.setattr(wl.time, "monotonic", lambda: clock[0])
        loop.last = clock[0]
        loop.batch_cap = 16  # small batches, as the loop adapts them to ~1 ms of work
        clock[0] += 0.05  # woken 50 ms late
        assert _drain(loop, written) >= 0.95 * 0.05 * PPS
        # a long absence is not paid back in one burst: one bucket at most
        clock[0] += 10.0
        assert _drain(loop, written) <= wl.BUCKET_SECONDS * PPS + 1
