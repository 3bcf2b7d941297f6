"""Process faults: kill, freeze and crash a peer -- its whole process tree -- with psutil.

Strategy: a peer is a process tree (a harness peer and its guest's workload process, or a
QEMU).  Every peer is started in a session of its own, so its tree is "the processes whose
session id is the peer's pid": that finds the children even after the parent died and they
were re-parented.  The faults:

- `kill`: SIGKILL to every process of the tree at once, then reap (what an OOM kill or a
  host losing power does to a migration peer);
- `stop`: SIGSTOP to the tree (a frozen peer: its sockets stay open, nothing moves);
  `thaw` sends SIGCONT to exactly the processes that were stopped;
- `crash`: SIGABRT to the peer process itself (a crash of QEMU's main loop, or of our
  peer), and SIGKILL to the rest of its tree, which a crashed peer no longer supervises.

`leftovers` is the check that nothing a run started is still alive afterwards.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

REAP_TIMEOUT = 5.0
LEFTOVER_GRACE = 3.0


def session(pid: int) -> list[psutil.Process]:
    """The live processes of the session `pid` leads (the peer and what it started)."""
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == pid or _sid(proc) == pid:
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return out


def _sid(proc: psutil.Process) -> int:
    import os

    return os.getsid(proc.pid)


def _signal(procs: Iterable[psutil.Process], sig: int) -> list[int]:
    hit = []
    for proc in procs:
        try:
            proc.send_signal(sig)
            hit.append(proc.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return hit


def kill(pid: int) -> list[int]:
    """SIGKILL the peer's whole tree, and wait until it is dead; the pids signalled.

    Nothing is reaped here: the peer's exit status belongs to whoever started it (its
    Popen), which would otherwise read a killed peer as one that exited 0."""
    procs = session(pid)
    hit = _signal(procs, signal.SIGKILL)
    _await_death(procs)
    return hit


def crash(pid: int) -> list[int]:
    """SIGABRT the peer itself, SIGKILL the rest of its tree; the pids signalled."""
    procs = session(pid)
    root = [p for p in procs if p.pid == pid]
    rest = [p for p in procs if p.pid != pid]
    hit = _signal(root, signal.SIGABRT) + _signal(rest, signal.SIGKILL)
    _await_death(procs)
    return hit


def _await_death(procs: list[psutil.Process], timeout: float = REAP_TIMEOUT) -> None:
    """Until every process is dead (a zombie waiting for its parent counts as dead)."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)


def _await_stopped(procs: list[psutil.Process], timeout: float = REAP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE) for p in procs):
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)


@dataclass
class Frozen:
    """A peer stopped with SIGSTOP: which processes, so that thawing is exact."""

    pid: int
    pids: list[int] = field(default_factory=list)

    def thaw(self) -> list[int]:
        procs = []
        for p in self.pids:
            try:
                procs.append(psutil.Process(p))
            except psutil.NoSuchProcess:
                continue
        return _signal(procs, signal.SIGCONT)


def freeze(pid: int) -> Frozen:
    """SIGSTOP the peer's whole tree; returns once every process of it has stopped."""
    procs = session(pid)
    frozen = Frozen(pid, _signal(procs, signal.SIGSTOP))
    _await_stopped(procs)
    return frozen


def leftovers(pids: Iterable[int], grace: float = LEFTOVER_GRACE) -> list[str]:
    """What is still alive of the sessions these peers led, after `grace` seconds for
    helpers that end on their own once their parent is gone (multiprocessing's resource
    tracker does): 'PID COMMAND' per process."""
    pids = list(pids)
    deadline = time.monotonic() + grace
    while True:
        alive = [p for pid in pids for p in session(pid) if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    out = []
    for proc in alive:
        try:
            out.append(f"{proc.pid} {' '.join(proc.cmdline()[:3]) or proc.name()}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
