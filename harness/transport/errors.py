"""Typed errors of the transport layer, one root so callers can catch all of them.

Strategy: every failure a caller can meet is one of a few classes under `TransportError`,
each also a standard exception (`ValueError`, `ConnectionError`, `TimeoutError`,
`OSError`) so generic handlers keep working.  Messages say which peer or URI was involved
and reuse QEMU 7.2's words where QEMU has words for the same failure
(`migration/migration.c`, `util/qemu-sockets.c`), so a log line reads the same whichever
peer is real.
"""

from __future__ import annotations

from harness.errors import EnvironmentFailure

__all__ = [
    "ChannelClosed",
    "ChannelTimeout",
    "ConnectFailed",
    "ConnectTimeout",
    "ExecFailed",
    "ListenFailed",
    "TransportError",
    "UriError",
]


class TransportError(EnvironmentFailure):
    """Root of every error raised by `harness.transport`."""


class UriError(TransportError, ValueError):
    """A migration URI (or an `fd:` name, or an `--fd` argument) is not acceptable."""


class ChannelClosed(TransportError, ConnectionError):
    """The channel cannot carry data any more: EOF, reset, local shutdown or close."""


class ChannelTimeout(TransportError, TimeoutError):
    """A send, receive or accept did not complete before its deadline."""


class ConnectFailed(TransportError, ConnectionError):
    """`connect()` could not reach the destination (or could not start the command)."""


class ConnectTimeout(ConnectFailed, ChannelTimeout):
    """`connect()` ran out of time; both a `ConnectFailed` and a `ChannelTimeout`."""


class ListenFailed(TransportError, OSError):
    """`listen()` could not bind, open or start what the URI names."""


class ExecFailed(ChannelClosed):
    """The command of an `exec:` channel failed (non-zero exit status, killed by a signal).

    `command` is the shell command and `status` its exit status as `subprocess` reports
    it (negative: killed by that signal; None: did not exit and was killed by us).
    """

    def __init__(self, message: str, *, command: str, status: int | None) -> None:
        super().__init__(message)
        self.command = command
        self.status = status
