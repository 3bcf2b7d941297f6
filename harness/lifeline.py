"""Nothing the harness starts or makes outlives it: child processes die with their starter,
and what a dead starter left in /tmp and /dev/shm is swept by the next run.

Strategy: a process killed by SIGKILL cannot stop its children, so a child that must die
with its starter asks the kernel for it: `python -m harness.lifeline STARTER-PID --
COMMAND...` sets PR_SET_PDEATHSIG (SIGKILL: it also ends a peer the scenario froze with
SIGSTOP, where a SIGTERM would wait for a SIGCONT that never comes), checks that its
parent is still STARTER-PID (the starter may have died before the prctl), then execs
COMMAND, which keeps the setting (not across a setuid exec; no harness peer is one).  It
is a separate exec, not a `preexec_fn`, because the starter has threads (zmq's, rich's)
and `preexec_fn` is unsafe with threads.  The kernel signals when the *thread* that forked
the child ends, so only a starter that forks from the thread it lives in (the runner's
main thread) opts in (`command(...)`); peers started by hand never get it.  An agent's
peers ask for SIGTERM instead (`on_death`): they then shut down cleanly on their host --
cancel, reap the workload, unlink the guest's memory -- where no later run sweeps.

A killed peer's own children end by themselves (the workload watches getppid(), the
multiprocessing resource tracker reads EOF and unlinks the segments it knew of); what is
left -- socket directories the runner made in /tmp, guest segments in /dev/shm -- carries
its owner's pid: directories are `/tmp/PREFIX-PID-RANDOM` holding an `owner.pid` file,
segments `mh-guest-PID-HEX` (harness.guest.memory).  `sweep()` removes those whose owner is
gone, and only those: the name must match, the marker must name the same pid, the entry
must be ours (uid), and the pid must not exist.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

PR_SET_PDEATHSIG = 1
MARKER = "owner.pid"
SOCKET_ROOT = Path("/tmp")  # unix socket paths are limited to 107 bytes: a short root
_OWNED_DIR = re.compile(r"^(mh[a-z]?|hq)-(\d+)-[a-z0-9_]+$")


def command(argv: list[str], on_death: signal.Signals = signal.SIGKILL) -> list[str]:
    """`argv` wrapped so that the process gets `on_death` when this process dies."""
    return [sys.executable, "-m", "harness.lifeline", str(os.getpid()), "--signal",
            on_death.name, "--", *argv]


def owned_dir(prefix: str) -> Path:
    """A new directory `/tmp/PREFIX-PID-RANDOM` with the `owner.pid` marker that lets
    `sweep` remove it once this process is gone (short: it holds unix sockets)."""
    if not _OWNED_DIR.match(f"{prefix}-1-x"):
        raise ValueError(f"owned_dir: prefix {prefix!r} is not one sweep() knows")
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=SOCKET_ROOT))
    (path / MARKER).write_text(f"{os.getpid()}\n")
    return path


def sweep(root: Path = SOCKET_ROOT) -> list[str]:
    """Remove the owned directories under `root` and the guest segments whose owner pid
    is gone; what was removed (paths)."""
    from harness.guest.leaks import SHM_DIR, pid_gone, remove_segments
    from harness.guest.memory import SEGMENT_PREFIX

    removed = []
    for entry in _entries(root):
        match = _OWNED_DIR.match(entry.name)
        if match is None or not _ours(entry, directory=True):
            continue
        pid = int(match.group(2))
        try:
            marker = (entry / MARKER).read_text().strip()
        except OSError:
            continue  # no marker: not ours to judge
        if marker == str(pid) and pid_gone(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    owners = set()
    for entry in _entries(SHM_DIR):
        pid_text = entry.name[len(SEGMENT_PREFIX):].split("-", 1)[0]
        if entry.name.startswith(SEGMENT_PREFIX) and pid_text.isdigit() and _ours(entry):
            owners.add(int(pid_text))
    for pid in sorted(owners):  # remove_segments checks that the owner is gone
        removed += [str(SHM_DIR / name) for name in remove_segments(pid)]
    return removed


def _entries(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


def _ours(path: Path, directory: bool = False) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == os.getuid()


def _parse(argv: list[str]) -> tuple[int, signal.Signals, list[str]] | None:
    """STARTER-PID [--signal NAME] -- COMMAND... (None: not that)."""
    if not argv or not argv[0].isdigit():
        return None
    rest, on_death = argv[1:], signal.SIGKILL
    if rest[:1] == ["--signal"] and len(rest) > 1:
        if rest[1] not in ("SIGKILL", "SIGTERM"):
            return None
        on_death, rest = signal.Signals[rest[1]], rest[2:]
    if len(rest) < 2 or rest[0] != "--":
        return None
    return int(argv[0]), on_death, rest[1:]


def main(argv: list[str]) -> int:
    """The trampoline: PDEATHSIG, the parent check, exec."""
    parsed = _parse(argv)
    if parsed is None:
        print("usage: python -m harness.lifeline STARTER-PID [--signal SIGKILL|SIGTERM] -- "
              "COMMAND...", file=sys.stderr)
        return 2
    starter, on_death, argv = parsed
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, on_death, 0, 0, 0) != 0:
        print(f"lifeline: prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 1
    if os.getppid() != starter:
        print(f"lifeline: the starter is gone; not starting {shlex.join(argv)}",
              file=sys.stderr)
        return 1
    try:
        os.execv(argv[0], argv)
    except OSError as err:
        print(f"lifeline: cannot run {argv[0]}: {err.strerror or err}", file=sys.stderr)
        return 127
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
