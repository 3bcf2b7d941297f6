"""What a scenario run produced: the data the invariants check and the reports print.

Strategy: plain dataclasses, filled by the runner and never by anyone else; `to_json`
renders DESIGN.md's report contract (section 3) exactly, adding keys but never renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.migration.status import MigrationStatus


def as_status(value: Any) -> Any:
    """A status as a `MigrationStatus` member (what is none of QEMU's stays as it came)."""
    try:
        return MigrationStatus(value)
    except ValueError:
        return value


@dataclass
class PeerOutcome:
    """How one peer ended; its statuses are `MigrationStatus` members."""

    kind: str = "harness"  # harness | qemu
    status: MigrationStatus | str | None = MigrationStatus.NONE  # final MigrationStatus
    runstate: str | None = None  # QEMU RunState at the end
    stats: dict[str, Any] = field(default_factory=dict)  # its last query-migrate
    error: str | None = None  # error-desc, or why the process ended
    exit_code: int | None = None  # None while it was still running at the end
    log: str | None = None  # its stderr file
    #: every status it reported, in order
    statuses: list[MigrationStatus | str] = field(default_factory=list)
    stacks: str | None = None  # its threads' stacks, when the run missed its deadline
    frozen: bool = False  # stopped (SIGSTOP) by the scenario at the end
    #: a real QEMU peer: its machine and accelerator (and why), version, command line
    facts: dict[str, Any] = field(default_factory=dict)
    #: a real guest's heartbeat over the check window: before, after, advanced
    heartbeat: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.status = as_status(self.status)
        self.statuses = [as_status(s) for s in self.statuses]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "kind": self.kind,
                               "runstate": self.runstate, "statuses": self.statuses}
        if self.error:
            out["error"] = self.error
        if self.exit_code is not None:
            out["exit-code"] = self.exit_code
        if self.log:
            out["log"] = self.log
        if self.stacks:
            out["stacks"] = self.stacks
        if self.frozen:
            out["frozen"] = True
        if self.facts:
            out["facts"] = self.facts
        if self.heartbeat is not None:
            out["heartbeat"] = self.heartbeat
        return out


@dataclass
class InvariantResult:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class TimelineEntry:
    t: float  # seconds since the run started (the runner's clock, when it learnt of it)
    peer: str  # source | destination | proxy | runner | agent:HOST
    name: str  # MIGRATION, MIGRATION_PASS, STOP, RESUME, step, fault, ...
    data: dict[str, Any] = field(default_factory=dict)
    at: float | None = None  # the reporting process's own timestamp (seconds since the epoch)

    def to_json(self) -> dict[str, Any]:
        out = {"t": round(self.t, 6), "peer": self.peer, "name": self.name, "data": self.data}
        if self.at is not None:
            out["at"] = round(self.at, 6)
        return out


@dataclass
class FaultRecord:
    """A fault that fired: which step, what, on what, when, and the injector's report."""

    step: str
    kind: str
    target: str  # source | destination | proxy main | proxy return-path
    t: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "target": self.target,
                "t": round(self.t, 6), "detail": self.detail}


@dataclass
class ScenarioResult:
    name: str
    file: str
    seed: int
    verdict: str = "error"  # pass | fail | error
    reason: str = ""
    source: PeerOutcome = field(default_factory=PeerOutcome)
    destination: PeerOutcome = field(default_factory=PeerOutcome)
    invariants: list[InvariantResult] = field(default_factory=list)
    duration: float = 0.0
    timeline: list[TimelineEntry] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    workdir: str | None = None
    events_log: str | None = None  # the JSONL event log of the run
    repeat: int | None = None  # which round of `--repeat`, from 1
    #: per host of a multi-host run: its agent, facts, clock offset and rtt, final state
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the source's query-migrate a few times a second: t (as the timeline's), status, pass,
    #: transferred, remaining, total, mbps, dirty-pages-rate, dirty-sync-count, ...
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: per pass: t, duration, transferred, bandwidth, dirtied, dirty-rate (runner/samples.py)
    passes: list[dict[str, Any]] = field(default_factory=list)
    #: the scenario as run, for the reports: description, steps and expect as plain data
    scenario: dict[str, Any] = field(default_factory=dict)
    #: every step: step, on, does, fired, t or why-not (runner/steps.py: report)
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: how `--peers qemu` rewrote the scenario (harness/scenario/qemu_peers.py)
    adapted: list[str] = field(default_factory=list)
    #: peers on hosts: source, destination (and proxy when one ran) -> host name, and the
    #: inventory of `--hosts` (harness/hosts/placement.py)
    placement: dict[str, Any] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, Any]:
        """The source's query-migrate (QMP field names)."""
        return self.source.stats

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "file": self.file, "seed": self.seed, "verdict": self.verdict,
            "reason": self.reason, "source": self.source.to_json(),
            "destination": self.destination.to_json(), "stats": self.stats,
            "destination-stats": self.destination.stats,
            "invariants": [i.to_json() for i in self.invariants],
            "duration": round(self.duration, 3),
            "faults": [f.to_json() for f in self.faults],
            "steps": self.steps,
            "timeline": [t.to_json() for t in self.timeline],
            "workdir": self.workdir,
            "events": self.events_log,
            **({"repeat": self.repeat} if self.repeat is not None else {}),
            **({"hosts": self.hosts} if self.hosts else {}),
            "samples": self.samples,
            "passes": self.passes,
            **({"scenario": self.scenario} if self.scenario else {}),
            **({"adapted": self.adapted} if self.adapted else {}),
            **({"placement": self.placement} if self.placement else {}),
        }
