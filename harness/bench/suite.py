"""`harness bench all`: every benchmark in one invocation, one table.

Strategy: run the precopy (idle random guest vs a raw stream, and vs QEMU when installed),
zero-guest (speed and peak memory) and postcopy (request latency vs a raw round trip)
benchmarks one after the other -- never two at once, so that they do not take CPU from
each other -- each measuring its own baselines; report how long the whole took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import postcopy, precopy, zero
from .figures import Figure

MiB = 1 << 20


@dataclass
class Sizes:
    precopy: int = 1 << 30
    zero: int = 8 << 30
    postcopy: int = 256 * MiB
    repeat: int = 3
    rate: int = 64 * MiB  # the postcopy guest's dirty rate
    pushes: tuple[int, ...] = (0, 64 * MiB)


def run(sizes: Sizes) -> tuple[list[Figure], float]:
    """The figures, and the seconds the whole took."""
    start = time.perf_counter()
    figures = precopy.run(sizes.precopy, repeat=sizes.repeat)
    figures += zero.run(sizes.zero)
    figures += postcopy.run(sizes.postcopy, sizes.rate, sizes.pushes)
    return figures, time.perf_counter() - start
