"""What a scenario run produced: the data the invariants check and the reports print.

Strategy: plain dataclasses, filled by the runner and never by anyone else; `to_json`
renders DESIGN.md's report contract (section 3) exactly, adding keys but never renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PeerOutcome:
    """How one peer ended."""

    kind: str = "harness"  # harness | qemu
    status: str = "none"  # final MigrationStatus
    runstate: str | None = None  # QEMU RunState at the end
    stats: dict[str, Any] = field(default_factory=dict)  # its last query-migrate
    error: str | None = None  # error-desc, or why the process ended
    exit_code: int | None = None  # None while it was still running at the end
    log: str | None = None  # its stderr file
    statuses: list[str] = field(default_factory=list)  # every status it reported, in order

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "kind": self.kind,
                               "runstate": self.runstate, "statuses": self.statuses}
        if self.error:
            out["error"] = self.error
        if self.exit_code is not None:
            out["exit-code"] = self.exit_code
        if self.log:
            out["log"] = self.log
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
    t: float  # seconds since the run started
    peer: str  # source | destination | runner
    name: str  # MIGRATION, MIGRATION_PASS, step, ...
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "peer": self.peer, "name": self.name, "data": self.data}


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
    workdir: str | None = None

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
            "timeline": [t.to_json() for t in self.timeline],
            "workdir": self.workdir,
        }
