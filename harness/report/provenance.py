"""Where a report came from: harness version and commit, host, kernel, QEMU version.

Strategy: gathered once per report, at the end of a run, each fact from its own source with
a deadline: the version from the package; the commit from `git rev-parse HEAD` only when
the package sits in a git checkout (else null); the host and kernel from `platform`; the
QEMU version from `qemu-system-x86_64 --version` (the binary `harness.qemu.launch`
finds) only when a scenario used a QEMU peer.  A fact that cannot be had is null, never
an error: the report stands without it.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness import __version__, native

SCHEMA_VERSION = 1  # of the JSON report; raised when a key changes meaning
_DEADLINE = 5.0  # seconds for git and qemu to answer
_MAX_OUTPUT = 4096  # what is kept of their answer


def provenance(peer_kinds: Iterable[str]) -> dict[str, Any]:
    """The report's provenance block; `peer_kinds`: the kinds of every peer that ran."""
    return {"harness-version": __version__, "commit": git_commit(),
            "hostname": socket.gethostname(), "kernel": platform.release(),
            "python": platform.python_version(),
            "qemu-version": qemu_version() if "qemu" in set(peer_kinds) else None,
            "page-path": native.describe()}  # the runner's; each harness peer's: facts


def _first_line(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=_DEADLINE,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout[:_MAX_OUTPUT].decode(errors="replace").strip()
    return text.splitlines()[0] if done.returncode == 0 and text else None


def git_commit() -> str | None:
    """HEAD of the checkout the harness runs from; None when installed from a package."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    commit = _first_line(["git", "rev-parse", "HEAD"], cwd=root)
    return commit if commit and all(c in "0123456789abcdef" for c in commit) else None


def qemu_version() -> str | None:
    """`QEMU emulator version 7.2.0 ...`, as the binary the harness runs says it."""
    from harness.qemu.launch import find_qemu

    binary = find_qemu()
    return _first_line([binary, "--version"]) if binary else None
