"""The `/bin/sh -c CMD` child behind an `exec:` channel: spawn, judge, reap.

Strategy: the command runs in its own session (so it and everything it starts form one
process group that can be killed together) with its standard input and/or output being
pipes the channel owns, its stderr going to an anonymous temporary file (a pipe nobody
drains could block it), and every other fd closed.  The channel judges it twice: when a
write hits a broken pipe or a read hits EOF, `failure(wait=...)` gives an `ExecFailed`
naming the command, its exit status and the tail of its stderr; and on close, `reap()`
waits up to a deadline for it to exit on its own (it has seen EOF), then SIGKILLs the
group, and finally sweeps the group for stragglers (`exec:cmd &` leaves some).  Like
QEMU's `io/channel-command.c`, the status of a command is only an error if it is not 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from typing import IO

from .errors import ExecFailed

__all__ = ["ExecChild", "describe_status"]

SHELL = "/bin/sh"
_KILL_WAIT = 5.0
_STDERR_TAIL = 2048


def describe_status(status: int | None) -> str:
    """`exited with status 3`, `was killed by SIGKILL`, or (None) `did not exit`."""
    if status is None:
        return "did not exit"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


class ExecChild:
    """One running (or finished) migration command; `reap()` is the way out."""

    def __init__(self, command: str, process: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self.command = command
        self._process = process
        self._stderr = stderr
        self.killed = False

    @classmethod
    def spawn(cls, command: str, *, stdin: int, stdout: int) -> ExecChild:
        """Start `/bin/sh -c command` with the given fds (or `subprocess.DEVNULL`).

        Raises OSError when the shell cannot be started (the caller words it)."""
        stderr = tempfile.TemporaryFile(prefix="harness-exec-stderr-")  # noqa: SIM115 (owned by the child)
        try:
            process = subprocess.Popen([SHELL, "-c", command], stdin=stdin, stdout=stdout,
                                       stderr=stderr, close_fds=True, start_new_session=True)
        except BaseException:
            stderr.close()
            raise
        return cls(command, process, stderr)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def status(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else None."""
        return self._process.returncode

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the exit; the status, or None if still running."""
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def failure(self, *, wait: float) -> ExecFailed | None:
        """An `ExecFailed` if the command has failed (waiting up to `wait` s for it)."""
        status = self.wait(wait)
        if status is None or status == 0:
            return None
        return self._error(status, describe_status(status))

    def reap(self, exit_timeout: float) -> ExecFailed | None:
        """Wait for the exit (then kill), sweep the process group, release the stderr file.

        Returns an `ExecFailed` when the command failed; SIGPIPE deaths are not failures
        here (the command wrote to a channel its reader had already closed)."""
        status = self.wait(exit_timeout)
        if status is None:
            self._kill_group()
            self.killed = True
            self.wait(_KILL_WAIT)
        self._kill_group()  # stragglers the shell left behind, if any
        error = self._verdict(exit_timeout)
        self._stderr.close()
        return error

    def stderr_tail(self) -> str:
        """The last lines the command wrote to stderr (or "")."""
        with contextlib.suppress(OSError, ValueError):
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - _STDERR_TAIL))
            text = self._stderr.read().decode("utf-8", "replace").strip()
            return " | ".join(text.splitlines()[-5:])
        return ""

    def _verdict(self, exit_timeout: float) -> ExecFailed | None:
        if self.killed:
            return self._error(None, f"did not exit within {exit_timeout:g} s after its "
                                     "stream was closed, and was killed")
        status = self.status
        if status in (0, -signal.SIGPIPE, 128 + signal.SIGPIPE) or status is None:
            return None
        return self._error(status, describe_status(status))

    def _error(self, status: int | None, what: str) -> ExecFailed:
        tail = self.stderr_tail()
        message = f"migration command '{self.command}' {what}"
        return ExecFailed(message + (f"; its stderr: {tail}" if tail else ""),
                          command=self.command, status=status)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
