"""The runs an agent holds: one per runner, with its peers, link faults and missed events.

Strategy: plain data the agent's loop owns and nobody else touches.  A `Run` is keyed by
the run id the runner chose; it knows its owner (the client its events go to), when the
runner was last heard from, and what it still holds -- so the loop can judge it MISSING or
ORPHANED, and a runner that comes back (same run id, new connection) finds it all there,
with the events it missed kept in a bounded backlog.  Each run writes its peer logs in a
directory of its own, `WORKDIR/runs/RUN-ID` (a run id is a plain name, `guard.check_name`),
marked with a `MARKER` file; the oldest are removed beyond `KEEP_RUNS` -- only marked
directories in `runs/`, never anything else a user keeps in a `--workdir` they gave.
`host_facts` is what the runner records of the host.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import stat
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness import __version__
from harness.control.agent_files import EventLog
from harness.control.agent_links import ActiveLink
from harness.control.agent_messages import RunState
from harness.control.agent_peers import PeerProcess
from harness.control.guard import check_name, inside

__all__ = ["BACKLOG", "KEEP_RUNS", "MARKER", "RUNS", "Run", "host_facts", "run_base",
           "run_directory"]

BACKLOG = 10_000  # events kept for a runner that is unreachable
KEEP_RUNS = 20  # run directories kept in the work directory
RUNS = "runs"  # the agent's own subdirectory of its work directory
MARKER = ".harness-agent-run"  # in every run directory the agent made


def host_facts() -> dict[str, Any]:
    """What the runner records about this host."""
    memory = psutil.virtual_memory()
    return {"hostname": socket.gethostname(), "system": platform.system(),
            "kernel": platform.release(), "machine": platform.machine(),
            "cpu-count": psutil.cpu_count(), "cpu-count-physical": psutil.cpu_count(False),
            "load-average": [round(x, 2) for x in os.getloadavg()],
            "memory-total": memory.total, "memory-available": memory.available,
            "python": platform.python_version(), "harness": __version__, "agent-pid": os.getpid()}


def run_base(own: Path, wanted: str | None) -> Path:
    """Where a run's directory goes: the host's `workdir:` (agent-hello `workdir`) when it
    is an existing directory of the agent's user that no one else may write, else the
    agent's own work directory; ValueError naming the directory and what is wrong."""
    if wanted is None:
        return own
    path = Path(wanted)
    if not path.is_absolute():
        raise ValueError(f"workdir {wanted!r} is not an absolute path")
    try:
        st = path.resolve().stat()
    except OSError as err:
        raise ValueError(f"workdir {wanted}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"workdir {wanted} is not a directory")
    if st.st_uid != os.geteuid():
        raise ValueError(f"workdir {wanted} belongs to uid {st.st_uid}, not to the agent's "
                         f"user (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise ValueError(f"workdir {wanted} is group- or world-writable (mode "
                         f"{stat.S_IMODE(st.st_mode):o}): others could plant files in it")
    return path


@dataclass
class Run:
    run_id: str
    directory: Path
    owner: bytes
    heartbeat: float
    last_seen: float
    state: RunState = RunState.ACTIVE
    peers: dict[str, PeerProcess] = field(default_factory=dict)
    links: dict[str, ActiveLink] = field(default_factory=dict)
    backlog: deque[list[bytes]] = field(default_factory=lambda: deque(maxlen=BACKLOG))
    owner_reachable: bool = True
    end_waiters: list[tuple[bytes, int]] = field(default_factory=list)
    event_log: EventLog | None = None  # RUN-DIR/agent-events.jsonl (agent_files)

    def link_cut(self, now: float) -> bool:
        """A timed link fault of the run is in force: the runner's silence is expected
        (its heartbeats may cross the cut link) until the fault is undone."""
        return any(link.until is not None and now < link.until for link in self.links.values())


def run_directory(workdir: Path, run_id: str, runs: dict[str, Run]) -> Path:
    """The directory of a new run (its peers' logs); the oldest unused ones the agent made
    go.  ValueError if `run_id` is not a name or the directory would lie elsewhere."""
    problem = check_name(run_id, "run id")
    if problem:
        raise ValueError(problem)
    parent = workdir / RUNS
    directory = parent / run_id
    if not inside(directory, parent):  # a symlink planted in runs/
        raise ValueError(f"run id {run_id!r}: {directory} lies outside {parent}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).touch()
    in_use = {r.directory for r in runs.values()} | {directory}
    old = sorted((d for d in parent.iterdir() if d not in in_use and not d.is_symlink()
                  and d.is_dir() and (d / MARKER).is_file()),
                 key=lambda d: d.stat().st_mtime)
    for stale in old[:max(0, len(old) - KEEP_RUNS)]:
        shutil.rmtree(stale, ignore_errors=True)
    return directory
