"""Naming a peer that hangs: which peer, in which status, waiting for what.

Strategy: QEMU 7.2 has migrations that never end (facts M4: a multifd destination that
waits for a channel the source never opens; P7: multifd with postcopy-preempt, whose
destination blocks its main loop in a read, so its QMP stops answering).  The runner
must report these as what they are, not as its own trouble: at the deadline each live
QEMU peer is asked `query-status` with a short timeout, and one that does not answer is
a `PeerHung` (verdict `fail`, invariant `peer-responsive`), named with its last status
and what its main thread is blocked in (its kernel stack, /proc); it is then not asked
anything again, only killed and reaped.  So is a QEMU destination that still answers but
has not settled (`active`, say) when the source has ended (invariant
`destination-settles`): nothing will come to move it.  A QEMU destination that rests in `setup` while
the source has finished is named by the connections it holds against the ones its
settings wait for (migration.c: migration_has_all_channels).
"""

from __future__ import annotations

import re
import time
from typing import Any

import psutil

from harness.control import ControlError
from harness.errors import ControlFailure
from harness.migration.status import FINAL, MigrationStatus
from harness.qemu import QMPError

from .real_guest import is_qemu
from .result import PeerOutcome

__all__ = ["PROBE_TIMEOUT", "RESPONSIVE", "SETTLES", "PeerHung", "blocked_in",
           "channels_waited", "hang_text", "hung_outcome", "name_hang", "unanswering",
           "waiting_text", "waits_for_channels"]

PROBE_TIMEOUT = 1.0  # s a QMP at the deadline has to answer query-status
RESPONSIVE = "peer-responsive"  # the invariant a peer whose QMP is silent fails
SETTLES = "destination-settles"  # ... and a destination that waits after the source ended
RESTING = FINAL | {MigrationStatus.POSTCOPY_PAUSED}  # as the coordinator's
MULTIFD_CHANNEL_WAIT = 12.0  # s: a harness destination's multifd channel deadline (10 s) + 2
_SYSCALL = re.compile(r"__(?:x64_)?sys_(\w+)")


class PeerHung(ControlFailure):
    """A QEMU peer hangs: the run's finding, not the harness's trouble (the coordinator
    makes it verdict `fail`, naming `invariant`)."""

    def __init__(self, text: str, invariant: str = RESPONSIVE) -> None:
        super().__init__(text)
        self.invariant = invariant


def name_hang(c: Any) -> None:
    """At the deadline of run `c` (the coordinator, its stacks taken): raise PeerHung when
    a QEMU peer's QMP is silent, or a QEMU destination has not settled though the source
    has ended; `c.unanswering` then names the peers to ask nothing more (only kill)."""
    silent = unanswering(c._peers())
    if silent:
        peer = silent[0]
        c.unanswering = {p.role for p in silent}
        other = "source" if peer.role == "destination" else "destination"
        state = "dead" if not c.peer(other).alive() else str(c.status[other])
        where = blocked_in(c._stacks.get(peer.role), peer.pid)
        raise PeerHung(hang_text(peer.role, peer.kind, str(c.status[peer.role]),
                                 c.sc.timeout, where, f"{other} {state}"))
    dst, src = c.peer("destination"), c.peer("source")
    if not is_qemu(dst) or not dst.alive() or c.status["destination"] in RESTING or \
            not c._source_gone():
        return
    where = blocked_in(c._stacks.get("destination"), dst.pid)
    source = "dead" if not src.alive() else f"ended {c.status['source']}"
    c.unanswering = {"destination"}
    raise PeerHung(waiting_text(str(c.status["destination"]), c.sc.timeout, where, source),
                   SETTLES)


def waits_for_channels(c: Any, peer: Any, status: str) -> bool:
    """Whether run `c` should wait for its harness multifd destination resting in setup
    after the source ended: it may hold its main connection and wait for the rest with a
    deadline of its own (destination/multifd.py: CHANNEL_TIMEOUT, 10 s), then fail naming
    the channels that did not come -- wait that long, no longer (it may also be listening
    for a source that never connected).  QEMU 7.2 waits forever: it settles at once."""
    if peer.kind != "harness" or status != "setup" or \
            not c.sc.capabilities_of("destination").get("multifd"):
        return False
    now = time.monotonic()
    c._gone_at = c._gone_at or now
    return now - c._gone_at < MULTIFD_CHANNEL_WAIT


def hung_outcome(c: Any, role: str, peer: Any) -> PeerOutcome:
    """How a hung peer of run `c` ended: what it said last, its stacks; not asked."""
    return PeerOutcome(kind=peer.kind, status=c.status[role],
                       statuses=list(c.state.statuses[role]), stacks=c._stacks.get(role),
                       error="stopped answering QMP (killed and reaped)")


def unanswering(peers: list[Any]) -> list[Any]:
    """The live QEMU peers whose QMP does not answer `query-status` within PROBE_TIMEOUT
    (a harness peer that hangs is the harness's own failure: the deadline says so)."""
    silent = []
    for peer in peers:
        if not (is_qemu(peer) and peer.alive()):
            continue
        try:
            peer.execute("query-status", timeout=PROBE_TIMEOUT)
        except (ControlError, QMPError, OSError):
            silent.append(peer)
    return silent


def blocked_in(stacks: str | None, pid: int | None) -> str:
    """What the main thread (tid == pid) of `stacks` (runner/stacks.py: proc_stacks) is
    blocked in: its system call and kernel wait, e.g. "recvmsg() (wait_woken)"."""
    if not stacks or pid is None:
        return "an unknown place (no stacks)"
    lines = stacks.splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith(f"thread {pid} ")), None)
    if head is None:
        return "an unknown place (its main thread is not in the stacks)"
    wait = lines[head].rsplit("waiting in ", 1)[-1]
    frames = [line.strip() for line in lines[head + 1:] if line.startswith("    ")]
    calls = [m[1] for frame in frames for m in [_SYSCALL.search(frame)] if m]
    return f"{calls[0]}() ({wait})" if calls else wait


def hang_text(role: str, kind: str, status: str, timeout: float, where: str,
              other: str) -> str:
    """The hang, named: `other` is the other peer's role and status ("source active")."""
    return (f"the {role} ({kind}) stopped answering QMP in status {status} (no reply to "
            f"query-status within {PROBE_TIMEOUT:g} s at the {timeout:g} s deadline; its "
            f"main thread is blocked in {where}), the {other}; killed and reaped")


def waiting_text(status: str, timeout: float, where: str, source: str) -> str:
    """A QEMU destination that answers but never settles after the source ended."""
    return (f"the destination (qemu) is still {status} at the {timeout:g} s deadline, the "
            f"source {source}: it waits for what will not come (its main thread is blocked "
            f"in {where}); killed and reaped")


def channels_waited(peer: Any, capabilities: dict[str, bool],
                    parameters: dict[str, Any]) -> str | None:
    """For a live QEMU destination resting in none/setup: the connections it accepted
    against those its settings wait for before it loads (1 main + multifd-channels, +1
    preempt), or None when it waits for nothing the count explains."""
    if not capabilities.get("multifd") or not is_qemu(peer) or peer.pid is None or \
            getattr(peer, "host", None) is not None:  # a remote pid is another host's
        return None
    want = 1 + int(parameters.get("multifd-channels", 2))
    try:
        held = [c for c in psutil.Process(peer.pid).net_connections(kind="inet")
                if c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT)]
    except psutil.Error:
        return None
    if len(held) >= want:
        return None
    return (f"it waits for its incoming migration: {len(held)} connection(s) accepted of "
            f"the {want} it loads after (main + multifd-channels "
            f"{want - 1}: migration_has_all_channels)")
