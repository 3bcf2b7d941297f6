"""The files of a run on an agent's host: listed and read back by the runner, and the
agent's own log of the events it relayed.

Strategy: at the end of a run the runner fetches what the run left in its directory on
each host -- the peers' and the proxy's logs, recorded streams (`--record`), and
`agent-events.jsonl` -- with two agent commands: `run-files` lists them and
`run-file-read` reads one in chunks of at most `MAX_CHUNK` bytes (a blob).  Only what
lies directly in the run's directory is offered: regular files (never a symlink, never
followed: listed with `lstat`, opened with O_NOFOLLOW and checked again with `fstat`)
whose names pass `check_file_name` -- plain names (`guard.NAME_RULE`) joined by dots, as
`source.log` or `stream.fwd.bin`, so that a name is a safe file name on the runner's side
too.  `EventLog` appends every event the agent relays for the run, one JSON line each,
until `EVENT_LOG_LIMIT` bytes; then one line says that it stopped, and nothing more.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from harness.control.guard import NAME_RULE, check_name

__all__ = ["EVENT_LOG", "EVENT_LOG_LIMIT", "MAX_CHUNK", "MAX_FILES", "EventLog",
           "check_file_name", "list_files", "read_chunk"]

MAX_CHUNK = 4 << 20  # bytes of one `run-file-read`
MAX_FILES = 1000  # entries `run-files` lists
MAX_PARTS = 4  # dot-separated parts of a file name
EVENT_LOG = "agent-events.jsonl"
EVENT_LOG_LIMIT = 16 << 20


def check_file_name(value: str, what: str = "file name") -> str | None:
    """Why `value` is not a run file's name (NAME parts joined by dots), or None."""
    parts = value.split(".") if isinstance(value, str) else [""]
    if len(parts) > MAX_PARTS or any(check_name(part, what) for part in parts):
        return (f"{what} {str(value)[:80]!r} is not a file name: expected "
                f"{NAME_RULE} parts joined by dots (at most {MAX_PARTS})")
    return None


def list_files(run_dir: Path) -> list[dict[str, Any]]:
    """[{"name", "size"}] of the regular files directly in `run_dir`, by name."""
    out = []
    with os.scandir(run_dir) as entries:
        for entry in entries:
            if check_file_name(entry.name) is None and entry.is_file(follow_symlinks=False):
                out.append({"name": entry.name, "size": entry.stat(follow_symlinks=False).st_size})
            if len(out) >= MAX_FILES:
                break
    return sorted(out, key=lambda f: f["name"])


def read_chunk(run_dir: Path, name: str, offset: int, length: int) -> bytes:
    """Up to `length` bytes of the run file `name` from `offset` (fewer at its end).
    ValueError naming what is wrong; OSError when it cannot be read."""
    problem = check_file_name(name)
    if problem:
        raise ValueError(problem)
    if offset < 0 or not 0 < length <= MAX_CHUNK:
        raise ValueError(f"run-file-read: offset must be >= 0 and length 1-{MAX_CHUNK} "
                         f"(got {offset}, {length})")
    fd = os.open(run_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{name} is not a regular file")
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


class EventLog:
    """`RUN-DIR/agent-events.jsonl`: the events the agent relayed for the run, bounded."""

    def __init__(self, run_dir: Path, limit: int = EVENT_LOG_LIMIT) -> None:
        self.path = run_dir / EVENT_LOG
        self.limit = limit
        self.written = 0
        self.stopped = False
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                               | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            self.stopped = True  # no log: the run goes on without it

    def write(self, name: str, data: dict[str, Any]) -> None:
        if self.stopped or self._fd is None:
            return
        line = (json.dumps({"time": time.time(), "event": name, "data": data},
                           default=str) + "\n").encode()
        if self.written + len(line) > self.limit:
            line = (json.dumps({"time": time.time(), "event": "AGENT_EVENT_LOG_FULL",
                                "data": {"limit": self.limit, "written": self.written}})
                    + "\n").encode()
            self.stopped = True
        try:
            self.written += os.write(self._fd, line)
        except OSError:
            self.stopped = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
