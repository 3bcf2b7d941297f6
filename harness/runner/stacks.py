"""Stack dumps of a stuck peer, for the report of a scenario that missed its deadline.

Strategy: a harness peer (`python -m harness ...`) has faulthandler registered on SIGUSR1,
so the runner sends the signal and reads what the peer printed to its log (its stderr)
after the mark where the log ended before.  A QEMU peer has no such hook: its threads'
names, states and kernel wait channels come from /proc (the kernel stacks too where we
may read them).  A frozen peer (SIGSTOP) cannot answer: /proc is all there is.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

DUMP_WAIT = 2.0  # how long a peer gets to print its stacks


def python_stacks(pid: int, log: Path) -> str:
    """SIGUSR1 -> faulthandler writes every thread's stack to the peer's stderr log."""
    try:
        mark = log.stat().st_size
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ProcessLookupError) as err:
        return f"(no Python stacks: {err})"
    deadline = time.monotonic() + DUMP_WAIT
    text = ""
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with log.open("rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        if "most recent call first" in text and text.endswith("\n\n"):
            break
    return text.strip() or "(the peer printed no stacks within 2 s)"


def proc_stacks(pid: int) -> str:
    """Per thread: name, state, kernel wait channel and, where readable, kernel stack."""
    lines = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as err:
        return f"(no /proc view of {pid}: {err})"
    for tid in tids:
        base = Path(f"/proc/{pid}/task/{tid}")
        name = _read(base / "comm")
        state = next((line.split(":", 1)[1].strip() for line in _read(base / "status")
                      .splitlines() if line.startswith("State:")), "?")
        lines.append(f"thread {tid} {name}: {state}, waiting in {_read(base / 'wchan') or '-'}")
        kernel = _read(base / "stack")
        lines += [f"    {frame}" for frame in kernel.splitlines()[:8]]
    return "\n".join(lines)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""
