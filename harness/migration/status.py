"""QEMU's MigrationStatus and the transitions each side may take.

Strategy: the state machine is data (after h11): one table per role, written from QEMU
7.2's `migrate_set_state` call sites in `migration/migration.c` (source) and
`process_incoming_migration_co` / postcopy listen thread (destination).  `StatusMachine`
applies a transition compare-and-swap style, as QEMU does (a transition from a state we
are no longer in simply does not happen), raises one exact message for an illegal one,
records the history with timestamps (the invariants check it), and notifies listeners
(the peer turns that into `MIGRATION` events).

Postcopy recovery: the source pauses on a stream or return-path failure
(`postcopy_pause`, from postcopy-active or from a failed postcopy-recover), recovers on
`migrate resume=true` (`migrate_fd_connect`) and is active again on RESUME_ACK
(`migrate_handle_rp_resume_ack`); `migrate_fd_cancel` may end any of the three.  The
destination pauses in `postcopy_pause_incoming`, recovers on the new connection
(`postcopy_try_recover`) and is active again on POSTCOPY_RESUME
(`loadvm_postcopy_handle_resume`).  A destination broken again while recovering goes
back to paused, as QEMU 8.2+ does (7.2's CAS from postcopy-active fails there and its
loader retries on a closed file).  No pause or recovery ever ends in failed: 7.2 has no
postcopy-recover-setup, and a refused connection leaves the source paused.

Pause before switchover: the source goes active -> pre-switchover -> device (or
postcopy-active); `continue_state` / `continue_refusal` are `migrate-continue`'s checks
(qmp_migrate_continue), shared by both roles (a destination's outgoing status is none).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from harness.errors import ProtocolFailure


class MigrationStatus(enum.StrEnum):
    """qapi/migration.json: MigrationStatus (the values QEMU 7.2 knows)."""

    NONE = "none"
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"


S = MigrationStatus
_RESTART = {S.SETUP}  # a new `migrate` after the last one ended (migrate_init)

SOURCE_TRANSITIONS: dict[MigrationStatus, frozenset[MigrationStatus]] = {
    S.NONE: frozenset({S.SETUP}),
    S.SETUP: frozenset({S.ACTIVE, S.FAILED, S.CANCELLING, S.WAIT_UNPLUG}),
    S.WAIT_UNPLUG: frozenset({S.ACTIVE, S.CANCELLING, S.FAILED}),
    S.ACTIVE: frozenset({S.COMPLETED, S.FAILED, S.CANCELLING, S.POSTCOPY_ACTIVE,
                         S.PRE_SWITCHOVER, S.COLO}),
    S.PRE_SWITCHOVER: frozenset({S.DEVICE, S.POSTCOPY_ACTIVE, S.CANCELLING, S.FAILED}),
    S.DEVICE: frozenset({S.COMPLETED, S.FAILED, S.CANCELLING}),
    S.POSTCOPY_ACTIVE: frozenset({S.COMPLETED, S.FAILED, S.CANCELLING, S.POSTCOPY_PAUSED}),
    S.POSTCOPY_PAUSED: frozenset({S.POSTCOPY_RECOVER, S.CANCELLING}),
    S.POSTCOPY_RECOVER: frozenset({S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.CANCELLING}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
    S.COLO: frozenset({S.COMPLETED, S.FAILED}),
    S.COMPLETED: frozenset(_RESTART),
    S.FAILED: frozenset(_RESTART),
    S.CANCELLED: frozenset(_RESTART),
}

DESTINATION_TRANSITIONS: dict[MigrationStatus, frozenset[MigrationStatus]] = {
    S.NONE: frozenset({S.SETUP, S.ACTIVE}),
    S.SETUP: frozenset({S.ACTIVE, S.FAILED}),
    S.ACTIVE: frozenset({S.COMPLETED, S.FAILED, S.POSTCOPY_ACTIVE, S.COLO}),
    S.POSTCOPY_ACTIVE: frozenset({S.COMPLETED, S.FAILED, S.POSTCOPY_PAUSED}),
    S.POSTCOPY_PAUSED: frozenset({S.POSTCOPY_RECOVER}),
    S.POSTCOPY_RECOVER: frozenset({S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED}),
    S.COLO: frozenset({S.COMPLETED, S.FAILED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
}

#: QEMU's migration_is_running(): a migration is in progress in these
RUNNING = frozenset({S.SETUP, S.ACTIVE, S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED,
                     S.POSTCOPY_RECOVER, S.CANCELLING, S.PRE_SWITCHOVER, S.DEVICE,
                     S.WAIT_UNPLUG, S.COLO})
FINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})

#: QEMU 7.2's refusals of the postcopy recovery commands (migration/migration.c:
#: qmp_migrate_pause, qmp_migrate_recover, migrate_prepare)
MIGRATE_PAUSE_REFUSED = ("migrate-pause is currently only supported during postcopy-active "
                         "state")
MIGRATE_RECOVER_REFUSED = "Migrate recover can only be run when postcopy is paused."
MIGRATE_RESUME_REFUSED = "Cannot resume if there is no paused migration"


class IllegalTransition(ProtocolFailure, RuntimeError):
    pass


@dataclass(frozen=True)
class Transition:
    old: MigrationStatus
    new: MigrationStatus
    at: float  # time.time()


class StatusMachine:
    """The status of one side, with QEMU's table and compare-and-swap transitions."""

    def __init__(self, role: str, table: dict[MigrationStatus, frozenset[MigrationStatus]]
                 ) -> None:
        self.role = role
        self._table = table
        self._status = S.NONE
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.history: list[Transition] = []
        self._listeners: list[Callable[[Transition], None]] = []

    @property
    def status(self) -> MigrationStatus:
        return self._status

    def on_change(self, listener: Callable[[Transition], None]) -> None:
        self._listeners.append(listener)

    def set(self, old: MigrationStatus, new: MigrationStatus) -> bool:
        """migrate_set_state: move old -> new if we are still in `old`; False otherwise."""
        with self._lock:
            if self._status is not old:
                return False
            if new not in self._table[old]:
                raise IllegalTransition(
                    f"{self.role}: illegal migration status transition {old} -> {new}")
            change = Transition(old, new, time.time())
            self._status = new
            self.history.append(change)
            self._changed.notify_all()
        for listener in self._listeners:
            listener(change)
        return True

    def move(self, new: MigrationStatus) -> bool:
        """From whatever the status is now (when the table allows it)."""
        return self.set(self._status, new)

    def wait_for(self, statuses: Collection[MigrationStatus],
                 timeout: float) -> MigrationStatus | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._status not in statuses:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._status


def source_machine() -> StatusMachine:
    return StatusMachine("source", SOURCE_TRANSITIONS)


def destination_machine() -> StatusMachine:
    return StatusMachine("destination", DESTINATION_TRANSITIONS)


def continue_state(arguments: dict[str, object]) -> str:
    """migrate-continue's `state` argument, checked as QEMU's QAPI checks a MigrationStatus
    (the ValueError's text is QEMU 7.2's)."""
    state = arguments.get("state")
    if state is None:
        raise ValueError("Parameter 'state' is missing")
    if not isinstance(state, str):
        # a GenericError, as QEMU's: the peer turns ValueError into one
        raise ValueError("Invalid parameter type for 'state', expected: string")  # noqa: TRY004
    if state not in {str(s) for s in MigrationStatus}:
        raise ValueError(f"Parameter 'state' does not accept value '{state}'")
    return state


def continue_refusal(expected: str, status: str) -> str | None:
    """qmp_migrate_continue's check (migration/migration.c): None when `status` is the
    `expected` one; else QEMU 7.2's message."""
    if status != expected:
        return f"Migration not in expected state: {status}"
    return None
