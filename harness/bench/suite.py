"""`harness bench all`: every benchmark in one invocation, one table.

Strategy: run the precopy (idle random guest vs a raw stream, and vs QEMU when installed),
multifd precopy (the same guest over 2 and 4 multifd channels vs a raw stream), zero-guest (speed and peak memory), codec (decode into RAM vs memcpy), postcopy (request
latency vs a raw round trip, with and without postcopy-preempt) and QEMU -> QEMU postcopy
(the same latencies of QEMU 7.2 itself, through a timing relay) benchmarks one after the
other -- never two at once, so that they do not take CPU from each other -- each
measuring its own baselines in interleaved rounds (rounds.py); report how long the whole
took; each stage's start is a line on stderr.  `no_extensions` sets HARNESS_NO_EXTENSIONS=1 in this process's environment before
anything runs, so this process and every peer it starts (they inherit it) run the
pure-Python page path; each figure says which path ran.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from harness import native

from . import codec, multifd, postcopy, precopy, qemu_postcopy, zero
from .figures import Figure
from .rounds import DEFAULT_ROUNDS

MiB = 1 << 20


@dataclass
class Sizes:
    precopy: int = 1 << 30
    zero: int = 8 << 30
    postcopy: int = 256 * MiB
    repeat: int = DEFAULT_ROUNDS
    rate: int = 64 * MiB  # the postcopy guest's dirty rate
    pushes: tuple[int, ...] = (0, 64 * MiB)
    codec: int = 256 * MiB
    qemu_guest: int = 64 * MiB  # RAM of the QEMU -> QEMU postcopy guest (pc)
    multifd: tuple[int, ...] = multifd.DEFAULT_CHANNELS  # channel counts (precopy's guest)


def goal_table(sizes: Sizes) -> dict[str, tuple[float | None, bool]]:
    """Issue 15's goals table as figure names: name -> (goal, lower is better); the QEMU
    figures have no goal (reported beside ours), and need QEMU installed."""
    table: dict[str, tuple[float | None, bool]] = {
        "precopy.harness.tcp.idle-random": (precopy.GOAL_VS_RAW, False),
        f"codec.decode-into-ram.interleaved-{sizes.codec >> 20}MiB": (codec.GOAL, False),
        "postcopy.request-latency.tcp.push-unlimited.preempt.p50":
            (postcopy.GOAL_PREEMPT_P50, True)}
    if postcopy.GOAL_PUSH in sizes.pushes:
        for kind in ("tcp", "unix"):
            name = f"postcopy.request-latency.{kind}.push-64MiBps"
            table[f"{name}.p50"] = (postcopy.GOAL_P50, True)
            table[f"{name}.p99"] = (postcopy.GOAL_P99, True)
    for push in sizes.pushes:
        for preempt in ("", ".preempt"):
            for pct in ("p50", "p99"):
                name = f"postcopy.qemu.request-latency.tcp.push-{postcopy.push_label(push)}"
                table[f"{name}{preempt}.{pct}"] = (None, True)
    return table


def no_extensions() -> None:
    """HARNESS_NO_EXTENSIONS=1 here and in every process started from now on."""
    os.environ[native.DISABLE_ENV] = "1"
    if any(native.module(name) is not None for name in native.SOURCES):
        raise RuntimeError("--no-extensions: the C page path was loaded before it was set")


def run(sizes: Sizes) -> tuple[list[Figure], float]:
    """The figures, and the seconds the whole took."""
    start = time.perf_counter()
    stages: list[tuple[str, Callable[[], list[Figure]]]] = [
        ("precopy", lambda: precopy.run(sizes.precopy, repeat=sizes.repeat)),
        ("multifd", lambda: multifd.run(sizes.precopy, repeat=sizes.repeat,
                                        channels=sizes.multifd)),
        ("zero", lambda: zero.run(sizes.zero)),
        ("codec", lambda: codec.run(sizes.codec, sizes.repeat)),
        ("postcopy", lambda: postcopy.run(sizes.postcopy, sizes.rate, sizes.pushes,
                                          sizes.repeat, relayed=True)),
        ("postcopy.qemu", lambda: qemu_postcopy.run(sizes.pushes, sizes.repeat,
                                                    sizes.qemu_guest))]
    figures: list[Figure] = []
    for name, stage in stages:
        print(f"harness bench: {name} ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
              flush=True)
        figures += stage()  # a failure names its stage: the line above was the last
    return figures, time.perf_counter() - start
