"""How each peer ended: its final status, exit, log and stacks, for the report.

Strategy: pure functions of a peer handle and what the run knew of it (its last status
and history, whether the scenario froze it, its stacks if the run missed its deadline),
so the coordinator's end of run is "ask each peer once, then judge".  A peer that is
gone, lost with its agent, or frozen is not asked anything: what it said last is what it
is -- except a QEMU 7.2 destination whose load failed (`dead_peer_status`).  A stuck
peer's stacks come from its agent, from faulthandler (a harness peer) or /proc.
"""

from __future__ import annotations

from typing import Any

from harness.control import peer_messages as pm
from harness.errors import HarnessError

from .agent_peer import AgentPeer
from .peers import PeerHandle
from .real_guest import is_qemu
from .result import PeerOutcome, as_status
from .stacks import proc_stacks, python_stacks

__all__ = ["LOAD_FAILED", "dead_peer_status", "outcome_of", "stacks_of"]

LOAD_FAILED = "load of migration failed: "


def outcome_of(peer: PeerHandle, last: Any, statuses: list[Any], frozen: bool,
               stacks: str | None) -> PeerOutcome:
    """The peer's outcome; a live, unfrozen peer is asked `query-migrate` and its runstate
    (ControlError when it cannot answer)."""
    out = PeerOutcome(kind=peer.kind, statuses=list(statuses), stacks=stacks)
    qemu = is_qemu(peer)
    if qemu:
        out.facts = peer.facts()  # type: ignore[attr-defined]
    log_path = getattr(peer, "stderr_path", None)
    out.log = str(log_path) if log_path else getattr(peer, "log_location", None)
    lost = peer.lost_reason() if isinstance(peer, AgentPeer) else None
    if lost:  # its agent died: what it said last is all there is
        out.status, out.error = last, f"the {peer.role} is lost: {lost}"
    elif not peer.alive():
        out.exit_code = peer.exit_code()
        tail = peer.stderr_tail(5)
        out.status = dead_peer_status(qemu, peer.role, last, out.exit_code, tail)
        out.error = f"the {peer.role} exited with status {out.exit_code}: " + \
            tail.replace("\n", " / ")
    elif frozen:  # it cannot answer; what it said last is what it is
        out.status, out.frozen = last, True
        out.error = f"the {peer.role} is frozen (SIGSTOP) by the scenario"
    else:
        info = pm.MigrationInfo.of(pm.send(peer, pm.QueryMigrate()))
        out.stats = info.raw
        out.status = info.status or last
        out.error = info.error_desc
        out.runstate = peer.runstate()
        if not qemu:
            out.facts = {"page-path": page_path(peer)}
    out.status = as_status(out.status)
    return out


def page_path(peer: PeerHandle) -> dict[str, Any] | None:
    """Which page path a live harness peer ran (`x-native`: "c" or "python", per part and
    why); None from a peer too old to say."""
    try:
        reply = peer.execute("x-native", {})
    except HarnessError:
        return None
    return reply if isinstance(reply, dict) else None


def dead_peer_status(qemu: bool, role: str, last: str | None, code: int | None,
                     stderr_tail: str) -> str | None:
    """The final status of a peer that exited: what it said last, except for a QEMU 7.2
    destination whose load failed.  That one sets `failed` and exits(1) at once
    (migration/migration.c, process_incoming_migration_co), so the MIGRATION event is
    never flushed to QMP and `query-migrate` cannot be asked: its stderr's last
    "load of migration failed: ..." line is the `failed` it reached."""
    if qemu and role == "destination" and code == 1 and last in ("setup", "active") \
            and any(line.split(": ", 1)[-1].startswith(LOAD_FAILED)
                    for line in stderr_tail.splitlines()):
        return "failed"
    return last


def stacks_of(peer: PeerHandle, frozen: bool) -> str | None:
    """A live peer's threads' stacks (None when it is gone): from its agent, from
    faulthandler for a harness peer here, else from /proc (QEMU, or a frozen peer)."""
    if not peer.alive() or peer.pid is None:
        return None
    if isinstance(peer, AgentPeer):  # its agent signals it and reads its log
        return peer.stacks()
    log_path = getattr(peer, "stderr_path", None)
    if peer.kind == "harness" and log_path is not None and not frozen:
        return python_stacks(peer.pid, log_path)
    return proc_stacks(peer.pid)
