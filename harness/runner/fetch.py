"""Files fetched back: what a run left on each agent's host, copied into the work directory.

Strategy: at the end of a run, once its peers and proxy are stopped and before the agents
forget it (`agent-end-run`), the runner asks each live agent for the files of the run's
directory (`run-files`: the peers' and the proxy's logs, recorded streams,
`agent-events.jsonl`) and reads them in chunks (`run-file-read`, blobs of at most
`agent_files.MAX_CHUNK`) into `WORKDIR/hosts/HOST/NAME`.  The smallest files come first
and a file is fetched whole or not at all, within `limit` bytes per host (256 MiB, or
$HARNESS_FETCH_LIMIT) and a deadline; what is left out is named with its size and why.

A name from the agent becomes a local path only after `check_file_name` (plain names
joined by dots: no separator, no `..`, no hidden file), and a local file is created new
(O_EXCL, O_NOFOLLOW): nothing the harness did not create is ever written over.  Then the
report points at the local copies: each host's `files` (and `files-left-out`), a remote
peer's `log`, and a recording (`stream.fwd.bin`, `stream.rp.bin`, `stream.preempt.bin`) is
linked into the work directory itself, where a local run leaves it, for `harness analyze`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.control import ControlError
from harness.control import agent_messages as am
from harness.control.agent_files import MAX_CHUNK, check_file_name
from harness.control.agent_messages import AgentHealth
from harness.control.guard import check_name, inside
from harness.faults.recording import FILES as RECORDING_FILES
from harness.faults.recording import PREEMPT_FILE
from harness.scenario.units import parse_size

from .agent_peer import AgentPeer
from .agents import AgentConnection
from .state import RunContext

__all__ = ["DEFAULT_LIMIT", "LIMIT_ENV", "Fetched", "fetch_back", "fetch_limit",
           "fetch_run_files"]

DEFAULT_LIMIT = 256 << 20  # bytes per host per run
LIMIT_ENV = "HARNESS_FETCH_LIMIT"
DEADLINE = 120.0  # s per host
CHUNK_TIMEOUT = 30.0
HOSTS_DIR = "hosts"


@dataclass
class Fetched:
    """What came back from one host: local copies, and what was left out and why."""

    files: list[dict[str, Any]] = field(default_factory=list)  # name, size, path
    left_out: list[dict[str, Any]] = field(default_factory=list)  # name, size, reason

    def path_of(self, name: str) -> str | None:
        return next((f["path"] for f in self.files if f["name"] == name), None)

    def to_report(self) -> dict[str, Any]:
        return {"files": self.files, "files-left-out": self.left_out}


def fetch_limit() -> int:
    """Bytes per host per run: $HARNESS_FETCH_LIMIT (a size: 4096, 64MiB), else 256 MiB."""
    text = os.environ.get(LIMIT_ENV)
    if not text:
        return DEFAULT_LIMIT
    try:
        return parse_size(text.strip())
    except ValueError as err:
        raise ValueError(f"${LIMIT_ENV}: {err}") from None


def fetch_run_files(conn: AgentConnection, directory: Path, limit: int,
                    deadline: float | None = None) -> Fetched:
    """Copy the run's files from `conn`'s agent into `directory` (created), bounded."""
    out = Fetched()
    deadline = time.monotonic() + DEADLINE if deadline is None else deadline
    try:
        listing = conn.request(am.RunFiles(), timeout=CHUNK_TIMEOUT)
    except ControlError as err:
        out.left_out.append({"name": "*", "size": None, "reason": f"run-files: {err}"})
        return out
    entries = _valid_entries(listing.get("files"), out)
    directory.mkdir(parents=True, exist_ok=True)
    budget = limit
    for name, size in sorted(entries, key=lambda e: (e[1], e[0])):
        if size > budget:
            out.left_out.append({"name": name, "size": size, "reason": (
                f"over the limit of {limit} bytes per host ({limit - budget} fetched)")})
            continue
        reason = _fetch_one(conn, directory, name, size, deadline)
        if reason:
            out.left_out.append({"name": name, "size": size, "reason": reason})
        else:
            budget -= size
            out.files.append({"name": name, "size": size, "path": str(directory / name)})
    return out


def _valid_entries(files: Any, out: Fetched) -> list[tuple[str, int]]:
    """(name, size) of the listed files that may become local files."""
    entries = []
    for entry in files if isinstance(files, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(name, str) or check_file_name(name) or \
                not isinstance(size, int) or isinstance(size, bool) or size < 0:
            out.left_out.append({"name": str(name)[:80], "size": None,
                                 "reason": "not a file name or size this runner accepts"})
            continue
        entries.append((name, size))
    return entries


def _fetch_one(conn: AgentConnection, directory: Path, name: str, size: int,
               deadline: float) -> str | None:
    """Copy one file (its first `size` bytes); why it was not fetched, or None."""
    path = directory / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        return f"{path} exists already (never written over)"
    except OSError as err:
        return f"{path}: {err.strerror or err}"
    offset, reason = 0, None
    try:
        while offset < size and reason is None:
            if time.monotonic() > deadline:
                reason = f"the deadline of {DEADLINE:g} s per host passed"
                break
            want = min(MAX_CHUNK, size - offset)
            value, blob = conn.request_blob(am.RunFileRead(name, offset, want),
                                            timeout=CHUNK_TIMEOUT)
            data = blob or b""
            if len(data) > want or (isinstance(value, dict) and value.get("offset") != offset):
                reason = f"the agent answered {len(data)} bytes at offset {offset}"
            elif not data:
                reason = f"the file ended at {offset} of the {size} bytes listed"
            else:
                os.write(fd, data)
                offset += len(data)
    except (ControlError, OSError) as err:
        reason = f"reading it: {err}"
    finally:
        os.close(fd)
    if reason is not None:
        path.unlink(missing_ok=True)  # ours, incomplete
    return reason


def fetch_back(c: RunContext) -> None:
    """Fetch every live agent's run files into WORKDIR/hosts/HOST; point the report at
    them (hosts' `files`, remote peers' `log`, the recording in the work directory)."""
    if not c.agents:
        return
    try:
        limit = fetch_limit()
    except ValueError as err:
        c.note("runner", "fetch-refused", {"error": str(err)})
        return
    fetched: dict[str, Fetched] = {}
    for host, conn in c.agents.by_host.items():
        if conn.files is not None or conn.health is AgentHealth.CONNECTING:
            continue  # fetched already (a second close, after a signal), or never reached
        if not conn.alive or check_name(host, "host"):
            conn.files = Fetched(left_out=[{"name": "*", "size": None, "reason": (
                "its agent is not reachable" if not conn.alive else
                f"host name {host!r} is not a directory name")}]).to_report()
            continue
        root = c.workdir / HOSTS_DIR
        if root.is_symlink() or not inside(root / host, c.workdir):
            continue
        fetched[host] = fetch_run_files(conn, root / host, limit)
        conn.files = fetched[host].to_report()
        c.note("runner", "files-fetched", {"host": host, **conn.files})
    _point_report_at(c, fetched)


def _point_report_at(c: RunContext, fetched: dict[str, Fetched]) -> None:
    for role in ("source", "destination"):
        peer = c.src if role == "source" else c.dst
        outcome = getattr(c.result, role, None)
        if isinstance(peer, AgentPeer) and outcome is not None and peer.host in fetched:
            local = fetched[peer.host].path_of(f"{peer.role}.log")
            if local is not None:
                outcome.log = local
    for name in (*RECORDING_FILES.values(), PREEMPT_FILE):
        copies = [f.path_of(name) for f in fetched.values() if f.path_of(name)]
        target = c.workdir / name
        if copies and not (target.exists() or target.is_symlink()):
            try:
                os.link(str(copies[0]), target)
            except OSError as err:
                c.note("runner", "recording-not-linked", {"file": name, "error": str(err)})
