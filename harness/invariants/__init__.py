"""Checks over what a run produced: statuses, memory, where the guest runs, transitions.

Strategy: each invariant is one file implementing the `Invariant` protocol (a name, whether
it applies to this run, and a check returning a verdict with a detail that says what was
compared); `check_all` runs those that apply.  Invariants read only the `Evidence` the
runner collected, never a live process.
"""

from __future__ import annotations

from .base import Evidence, Invariant
from .delivered import CompletedMeansDelivered
from .disks import DisksIdentical
from .leftovers import NoLeftovers
from .memory import MemoryConsistent, MemoryIdentical, SourceIntact
from .one_runner import OneRunner
from .postcopy import PostcopyRequests
from .runs_on import GuestRunsOn
from .statuses import ExpectedStatus
from .steps_fired import StepsFired
from .transitions import LegalTransitions

ALL: tuple[Invariant, ...] = (
    ExpectedStatus("source"), ExpectedStatus("destination"), LegalTransitions(), DisksIdentical(),
    MemoryIdentical(), MemoryConsistent(), SourceIntact(), GuestRunsOn(), OneRunner(), PostcopyRequests(),
    NoLeftovers(), StepsFired(), CompletedMeansDelivered(),
)


def check_all(evidence: Evidence):  # type: ignore[no-untyped-def]
    return [inv.check(evidence) for inv in ALL if inv.applies(evidence)]


__all__ = ["ALL", "Evidence", "Invariant", "check_all"]
