"""Interleaved rounds: a baseline and a measurement taken alternately, medians compared.

Strategy: a ratio's two sides are measured in the same invocation, one after the other,
baseline first -- baseline, value, baseline, value, ... for `rounds` rounds -- so that a
busy moment of the shared machine hits both sides alike; each side's median is reported
and the ratio is the ratio of the medians; a round that could not measure its side
(NaN: e.g. no page request timed) is left out of that side's median, and
`Rounds.measured` says how many did.  `schedule` is the order
alone, so a test can check it without measuring anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")
DEFAULT_ROUNDS = 5
NOTE = "median of {n} interleaved rounds (baseline first), ratio of the medians"


def schedule(rounds: int) -> list[tuple[int, str]]:
    """The order of the steps: (round, "baseline" | "value"), baseline first."""
    return [(i, side) for i in range(max(1, rounds)) for side in ("baseline", "value")]


@dataclass
class Rounds(Generic[T]):
    """What each side gave, round by round."""

    baselines: list[T] = field(default_factory=list)
    values: list[T] = field(default_factory=list)
    order: list[tuple[int, str]] = field(default_factory=list)  # as it ran

    def median(self, side: str, key: Callable[[T], float] = float) -> float:  # type: ignore[assignment]
        """The median of one side over the rounds that measured it (NaN: a round that
        could not, left out); NaN when none did."""
        got = [key(x) for x in (self.baselines if side == "baseline" else self.values)]
        kept = [x for x in got if not math.isnan(x)]
        return float(np.median(kept)) if kept else math.nan

    def measured(self, side: str, key: Callable[[T], float] = float) -> int:  # type: ignore[assignment]
        """How many rounds measured that side (not NaN)."""
        got = self.baselines if side == "baseline" else self.values
        return sum(not math.isnan(key(x)) for x in got)

    def spread(self, side: str, key: Callable[[T], float] = float) -> tuple[float, float]:  # type: ignore[assignment]
        got = [key(x) for x in (self.baselines if side == "baseline" else self.values)
               if not math.isnan(key(x))]
        return min(got), max(got)

    def note(self) -> str:
        return NOTE.format(n=len(self.values))


def interleave(baseline: Callable[[int], T], value: Callable[[int], T],
               rounds: int = DEFAULT_ROUNDS) -> Rounds[T]:
    """Run `baseline(i)` and `value(i)` alternately for `rounds` rounds, baseline first."""
    out: Rounds[T] = Rounds()
    for i, side in schedule(rounds):
        if side == "baseline":
            out.baselines.append(baseline(i))
        else:
            out.values.append(value(i))
        out.order.append((i, side))
    return out
