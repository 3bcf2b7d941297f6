"""Pairs of hosts for parallel CI: one test run per pair of an inventory's hosts at a time.

Strategy: `pytest scenarios/ --hosts INVENTORY -n N` runs scenarios in N xdist workers, but
a pair of hosts (h1+h2, h3+h4, ... in inventory order; one host alone is its own pair)
must carry one migration at a time, or their timings and link faults would mix.  Workers
share nothing but the file system, so each pair is an exclusive `fcntl.flock` on a file
in a lock directory keyed by the inventory's absolute path (`lock_dir`): a worker takes
the first free pair, holds it while its scenario runs, and a worker that finds none free
waits -- bounded, then fails naming each pair and the pid that holds it.  The kernel
drops a dead worker's locks with its file descriptors, so nothing stale is left behind.
The directory is the runner's own (mode 0700, checked for owner, mode and symlinks): a
lock file is opened with O_NOFOLLOW and mode 0600.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import EnvironmentFailure

from .inventory import Inventory

__all__ = ["NoFreePair", "host_pair", "lock_dir", "pairs_of"]

POLL = 0.2


class NoFreePair(EnvironmentFailure, TimeoutError):
    """No pair of hosts became free within the wait; the message names who holds them."""


def pairs_of(inventory: Inventory) -> list[tuple[str, str]]:
    """h1+h2, h3+h4, ...; a one-host inventory is its own pair."""
    return inventory.pairs() or [(inventory.names[0], inventory.names[0])]


def lock_dir(inventory: Inventory, root: Path | None = None) -> Path:
    """The lock directory of this inventory (its absolute path's digest), made 0700."""
    key = hashlib.sha256(str(inventory.file).encode()).hexdigest()[:16]
    path = (root or Path(tempfile.gettempdir())) / f"harness-hosts-{os.geteuid()}-{key}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise EnvironmentFailure(f"{path}: the hosts' lock directory is not a private "
                                 "directory of this user (mode 0700): remove it")
    return path


@contextmanager
def host_pair(inventory: Inventory, wait: float, root: Path | None = None
              ) -> Iterator[tuple[str, str]]:
    """A free pair of the inventory's hosts, held (exclusively) until the block ends."""
    directory = lock_dir(inventory, root)
    pairs = pairs_of(inventory)
    deadline = time.monotonic() + wait
    while True:
        for index, pair in enumerate(pairs):
            fd = _try_lock(directory / f"pair-{index}.lock")
            if fd is None:
                continue
            try:
                yield pair
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if time.monotonic() >= deadline:
            held = ", ".join(f"{a}+{b} (pid {_holder(directory / f'pair-{i}.lock')})"
                             for i, (a, b) in enumerate(pairs))
            raise NoFreePair(f"no pair of hosts of {inventory.file} became free within "
                             f"{wait:g} s: {held}")
        time.sleep(POLL)


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(path: Path) -> str:
    try:
        with path.open() as fh:
            return fh.read(32).strip() or "?"
    except OSError:
        return "?"
