"""What a guest can leave behind, found: shared memory segments and workload processes.

Strategy: every segment `GuestMemory.create` makes is named `mh-guest-<owner pid>-<hex>`
and every workload process runs `harness.guest.workload`, so leftovers are found by
name -- per owner pid, which keeps parallel test workers (pytest -n) from seeing each
other's guests.  Tests assert both lists are empty after each test; a runner can do the
same after a scenario.  A peer killed with SIGKILL cannot unlink its guest's segments:
whoever reaped it removes them (`remove_segments`), once the owner is gone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from .memory import SEGMENT_PREFIX

SHM_DIR = Path("/dev/shm")
WORKLOAD_MARK = "harness.guest.workload"


def leftover_segments(owner_pid: int | None = None) -> list[str]:
    """Names of guest segments in /dev/shm created by `owner_pid` (default: this process)."""
    pid = os.getpid() if owner_pid is None else owner_pid
    prefix = f"{SEGMENT_PREFIX}{pid}-"
    if not SHM_DIR.is_dir():
        return []
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix))


def remove_segments(owner_pid: int) -> list[str]:
    """Unlink the guest segments a dead `owner_pid` left (a killed peer cannot); their
    names.  Nothing is touched while the owner still lives."""
    if not pid_gone(owner_pid):
        return []
    removed = []
    for name in leftover_segments(owner_pid):
        try:
            (SHM_DIR / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            continue
    return removed


def _is_workload(proc: psutil.Process) -> bool:
    try:
        return any(WORKLOAD_MARK in part for part in proc.cmdline())
    except psutil.Error:  # gone, a zombie (unknown command line), or not ours to read
        return False


def leftover_workloads(timeout: float = 5.0) -> list[psutil.Process]:
    """Live workload processes descending from this process, after giving exiting ones
    up to `timeout` seconds to go.  (A reaped pid is gone: see `pid_gone`.)"""
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in psutil.Process().children(recursive=True) if _is_workload(c)]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """True when `pid` no longer exists, not even as an unreaped zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True
