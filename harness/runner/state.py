"""What a run knows at a moment: statuses, passes, the source's last numbers, the clock.

Strategy: one mutable record that only the coordinator writes (from the typed events it
takes in), and that the steps read as a `RunView` -- so deciding what fires is a pure
function of this record and never an I/O call.  Statuses are `MigrationStatus` members
from the first event to the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.control.peer_messages import MigrationInfo
from harness.migration.status import MigrationStatus

__all__ = ["ROLES", "RunContext", "RunState", "RunView"]

ROLES = ("source", "destination")
#: where the guest is, once the destination holds it
_GUEST_ON_DESTINATION = frozenset({MigrationStatus.COMPLETED, MigrationStatus.POSTCOPY_ACTIVE,
                                   MigrationStatus.POSTCOPY_PAUSED})


class RunView(Protocol):
    """What steps may read of a run (they never write it)."""

    seed: int
    passes: int
    has_proxy: bool

    @property
    def status(self) -> dict[str, MigrationStatus]: ...
    @property
    def status_log(self) -> dict[str, list[tuple[float, MigrationStatus]]]: ...
    def elapsed(self) -> float: ...
    def source_ram(self) -> dict[str, int]: ...
    def progress_share(self) -> float: ...
    def guest_side(self) -> str: ...


class RunContext(Protocol):
    """What the helpers of a run's start and end (real_guest, remote_qemu, agent_proxy,
    fetch) use of the coordinator -- a narrow view, so none of them imports it."""

    sc: Any
    seed: int
    workdir: Path
    record: bool
    agents: Any
    result: Any

    @property
    def status(self) -> dict[str, MigrationStatus]: ...
    @property
    def frozen(self) -> dict[str, Any]: ...
    @property
    def src(self) -> Any: ...
    @property
    def dst(self) -> Any: ...
    def peer(self, role: str) -> Any: ...
    def note(self, peer: str, name: str, data: dict[str, Any] | None = None,
             at: float | None = None) -> None: ...


def _per_role() -> dict[str, list]:  # type: ignore[type-arg]
    return {role: [] for role in ROLES}


@dataclass
class RunState:
    """The run as the coordinator knows it (a `RunView` for the steps)."""

    seed: int
    t0: float = field(default_factory=time.monotonic)
    migrate_started: float | None = None  # monotonic time `migrate` was issued
    passes: int = 0
    has_proxy: bool = False
    status: dict[str, MigrationStatus] = field(
        default_factory=lambda: {role: MigrationStatus.NONE for role in ROLES})
    statuses: dict[str, list[MigrationStatus]] = field(default_factory=_per_role)
    #: (the peer's timestamp, status) of every status change, per peer
    status_log: dict[str, list[tuple[float, MigrationStatus]]] = field(
        default_factory=_per_role)
    info: MigrationInfo | None = None  # the source's last query-migrate
    info_at: float = 0.0  # monotonic time of that answer

    def set_status(self, role: str, status: MigrationStatus, at: float) -> None:
        self.status[role] = status
        self.statuses[role].append(status)
        self.status_log[role].append((at, status))

    def elapsed(self) -> float:
        """Seconds since `migrate` was issued (since the start, before it)."""
        return time.monotonic() - (self.migrate_started or self.t0)

    def since_start(self) -> float:
        return time.monotonic() - self.t0

    def source_ram(self) -> dict[str, int]:
        """The `ram` of the source's last query-migrate."""
        if self.info is None:
            return {}
        return {k: v for k, v in self.info.ram.items() if isinstance(v, int)}

    def progress_share(self) -> float:
        """Share of guest RAM sent at least once (pages sent over all pages)."""
        ram = self.source_ram()
        total = ram.get("total", 0)
        sent = (ram.get("normal", 0) + ram.get("duplicate", 0)) * 4096
        return min(1.0, sent / total) if total else 0.0

    def guest_side(self) -> str:
        """The side whose monitor `stop`/`cont` go to: the destination once it holds the
        guest, else the source."""
        return "destination" if self.status["destination"] in _GUEST_ON_DESTINATION \
            else "source"
