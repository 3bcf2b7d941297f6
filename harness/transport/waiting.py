"""Interruptible, deadline-bounded waits on file descriptors.

Strategy: a thread that must block (a receive with no data, a send into a full pipe, an
accept with nobody connecting) blocks only in `poll()` on two fds: the one it waits for
and a `Waker`, a self-pipe that another thread makes readable to interrupt it
(`Channel.shutdown()`, `Listener.close()`).  The waker is a latch (it is never drained),
so every later wait returns at once: after a shutdown nothing blocks again.  A `Deadline`
is an absolute point on the monotonic clock, so a loop of partial sends or receives
shares one budget instead of restarting a timeout per syscall.
"""

from __future__ import annotations

import enum
import math
import os
import select
import time

__all__ = ["Deadline", "Wait", "Waker", "wait_fd"]


class Wait(enum.Enum):
    """How a `wait_fd` ended."""

    READY = "ready"
    WOKEN = "woken"
    EXPIRED = "expired"


class Deadline:
    """`seconds` from now on the monotonic clock; `None` seconds is not allowed here."""

    __slots__ = ("_at", "seconds")

    def __init__(self, seconds: float) -> None:
        if not (isinstance(seconds, (int, float)) and seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"a timeout must be a finite number of seconds >= 0, not {seconds!r}")
        self.seconds = float(seconds)
        self._at = time.monotonic() + self.seconds

    @classmethod
    def after(cls, seconds: float | None) -> Deadline | None:
        """A deadline, or None (wait forever) when `seconds` is None."""
        return None if seconds is None else cls(seconds)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._at - time.monotonic())


class Waker:
    """A self-pipe latch: after `wake()` its read end stays readable until `close()`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()  # non-inheritable (O_CLOEXEC) by default
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.woken = False

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        """Interrupt every current and future `wait_fd` on this waker (idempotent)."""
        if self.woken:
            return
        self.woken = True
        try:
            os.write(self._write, b"!")
        except (BlockingIOError, OSError):
            pass  # already readable, or closed: either way nobody can block on it

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._read = self._write = -1


def wait_fd(fd: int, events: int, waker: Waker, deadline: Deadline | None) -> Wait:
    """Block until `fd` has one of `events` (or an error/hangup), the waker fires, or the
    deadline passes.  Waker first: after a wake-up, READY is never reported."""
    poller = select.poll()
    poller.register(waker.fileno(), select.POLLIN)
    poller.register(fd, events)
    while True:
        if waker.woken:
            return Wait.WOKEN
        timeout_ms = None if deadline is None else math.ceil(deadline.remaining() * 1000)
        ready = dict(poller.poll(timeout_ms))
        if waker.woken or waker.fileno() in ready:
            return Wait.WOKEN
        if fd in ready:
            return Wait.READY
        if deadline is not None and deadline.remaining() <= 0:
            return Wait.EXPIRED
