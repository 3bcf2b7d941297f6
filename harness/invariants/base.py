"""The evidence a run leaves behind, and the protocol every invariant follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from harness.runner.result import FaultRecord, InvariantResult, PeerOutcome, TimelineEntry


@dataclass
class Expectations:
    """The scenario's `expect` (every key optional)."""

    source: str | None = None
    destination: str | None = None
    memory: str | None = None  # identical | source-intact | consistent
    disks: str | None = None  # identical
    guest_runs_on: str | None = None  # destination | source | nowhere
    delivered: bool | None = None  # a source's `completed` means the guest arrived


@dataclass
class Evidence:
    expect: Expectations
    source: PeerOutcome
    destination: PeerOutcome
    #: per-page digests of the source at the end (its guest stopped when it completed)
    source_digests: dict[str, np.ndarray] | None = None
    #: per-page digests of the destination when its load completed (before it ran)
    destination_digests: dict[str, np.ndarray] | None = None
    #: pages of the source that differ from what its workload wrote
    source_mismatched: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)
    #: everything every process reported, in the order the runner learnt it
    timeline: list[TimelineEntry] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    frozen: set[str] = field(default_factory=set)  # peers stopped (SIGSTOP) at the end
    proxy: dict | None = None  # the proxy's final query-proxy, when there was one
    leftovers: list[str] = field(default_factory=list)  # processes alive after the run
    #: every step of the scenario and whether it fired (harness/runner/steps.py: report)
    steps: list[dict] = field(default_factory=list)
    #: a real guest (harness/realguest): the program it ran (a GuestProgram), and every
    #: RAM block of each QEMU as read at the end (source: as it stopped; destination: as
    #: its load left it, or after it ran, in postcopy)
    program: Any = None
    source_memory: dict[str, np.ndarray] | None = None
    destination_memory: dict[str, np.ndarray] | None = None
    #: the source's blocks read from a reference QEMU (runner/real_guest.py: _reference_roms)
    reference_blocks: list[str] = field(default_factory=list)
    #: QEMUs on other hosts: each side's RAM as digests (harness/realguest/hashed.py), in
    #: place of source_memory / destination_memory, and how to fetch the few pages a
    #: message quotes
    source_summary: Any = None
    destination_summary: Any = None
    page_fetch: Any = None
    #: block migration: disk name -> None (identical) or where the images first differ
    disks: dict[str, str | None] | None = None

    def fault_kinds(self) -> set[str]:
        return {f.kind for f in self.faults}


class Invariant(Protocol):
    name: str

    def applies(self, evidence: Evidence) -> bool: ...

    def check(self, evidence: Evidence) -> InvariantResult: ...
