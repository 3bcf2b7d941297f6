"""`listen()`: the destination side of `migrate-incoming` -- a URI in, a `Listener` out.

Strategy: a `Listener` hands out exactly one `Channel`, as QEMU 7.2 accepts one main
channel and then stops listening (`migration/socket.c`) -- or `channels` of them (two with
postcopy-preempt: main, then the preempt channel; 7.2's backlog is that many).  Sockets
(tcp, unix, an inherited listening socket) get a `SocketListener`: `accept()` waits in
`poll()` on the listening socket plus a self-pipe, so it honours a timeout and `close()`
from any other thread interrupts it; after the last connection the listening socket is
closed (the port and the unix path are free again).  exec:, file: and an inherited connected fd are
connected from the start, so a `ReadyListener` just holds that channel until `accept()`.
Bind failures use QEMU's words ("Failed to bind socket to PATH: ...").  A unix socket
file left by a dead peer is removed first (QEMU unlinks too), but never a live one
(`unix_mode.is_listening`) nor anything that is not a socket; the new
socket is mode 0600 (`unix_mode`); on close the path is unlinked only if it is still ours.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import select
import socket
import stat
import threading
from collections.abc import Mapping
from typing import Any, Self

from .addresses import host_port, resolve, socket_address, uri_of
from .channel import Channel, FdChannel, SocketChannel, tune_socket
from .connect import NO_FDS
from .errors import ChannelClosed, ChannelTimeout, ListenFailed, TransportError
from .fds import claim_fd
from .pipes import exec_channel
from .unix_mode import bind_private, is_listening
from .uri import MigrationUri, parse_uri
from .waiting import Deadline, Wait, Waker, wait_fd

__all__ = ["Listener", "ListenerState", "ReadyListener", "SocketListener", "listen"]

log = logging.getLogger(__name__)

_RESOLVE_TIMEOUT = 10.0
_LEAVE_TIMEOUT = 5.0


class ListenerState(enum.Enum):
    LISTENING = "listening"
    ACCEPTED = "accepted"
    CLOSED = "closed"


def listen(uri: MigrationUri | str, *, fds: Mapping[str, int] = NO_FDS,
           return_path: bool = False, exit_timeout: float = 10.0,
           channels: int = 1) -> Listener:
    """Start waiting for the incoming migration named by `uri` (a string is parsed for the
    destination role).  For exec:, `return_path=True` connects the command's stdin as
    the return path (otherwise /dev/null); `exit_timeout` bounds reaping it on close.
    `channels`: how many connections a tcp:/unix: listener accepts before it stops."""
    parsed = parse_uri(uri, "destination") if isinstance(uri, str) else uri
    if parsed.kind in ("tcp", "unix"):
        listener = (_listen_tcp(parsed) if parsed.kind == "tcp"
                    else _listen_unix(parsed.path or ""))
        listener.expect_channels(channels)
        return listener
    if parsed.kind == "exec":
        return ReadyListener(parsed, _spawn_exec(parsed.command or "", return_path,
                                                 exit_timeout))
    if parsed.kind == "fd":
        return _listen_fd(parsed, fds)
    return ReadyListener(parsed, _open_file(parsed.path or ""))


class Listener:
    """Waits for the one incoming migration connection (abstract)."""

    def __init__(self, uri: MigrationUri) -> None:
        self.uri = uri
        self._state = ListenerState.LISTENING
        self._state_lock = threading.Lock()

    @property
    def state(self) -> ListenerState:
        return self._state

    @property
    def address(self) -> str:
        """The actual address as a URI (`tcp:127.0.0.1:43567` after port 0)."""
        return str(self.uri)

    @property
    def socket_address(self) -> dict[str, Any] | None:
        """QMP `query-migrate`'s `socket-address` entry (None for exec:, file:, fd: pipes)."""
        return None

    def accept(self, timeout: float | None = None) -> Channel:
        raise NotImplementedError

    def expect_channels(self, channels: int) -> None:
        """Accept `channels` connections: only a socket listener can take more than one."""
        if channels != 1:
            raise ValueError(f"{self.address} carries one channel, not {channels}")

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} {self._state.value}>"

    def _check_can_accept(self) -> None:
        if self._state is ListenerState.CLOSED:
            raise ChannelClosed(f"listener on {self.address} is closed")
        if self._state is ListenerState.ACCEPTED:
            raise TransportError(f"listener on {self.address} already accepted its one "
                                 "connection (QEMU accepts one main migration channel)")


class SocketListener(Listener):
    """A listening stream socket; owns it (and the unix path it created, if any)."""

    def __init__(self, sock: socket.socket, *, unix_path: str | None = None) -> None:
        super().__init__(uri_of(sock) if unix_path is None else MigrationUri("unix",
                                                                             path=unix_path))
        sock.setblocking(False)
        self._sock = sock
        self._socket_address = socket_address(sock)
        if unix_path is not None:
            self._socket_address = {"type": "unix", "path": unix_path}
        self._unix_path = unix_path
        self._unix_inode = os.stat(unix_path).st_ino if unix_path is not None else None
        self._waker = Waker()
        self._accept_lock = threading.Lock()
        self._channels = 1  # connections to accept before listening stops
        self._accepted = 0

    def expect_channels(self, channels: int) -> None:
        """Accept `channels` connections (before the first accept), backlog as many."""
        if channels < 1 or self._accepted:
            raise ValueError(f"cannot expect {channels} channels here")
        self._channels = channels
        if channels > 1:
            self._sock.listen(channels)

    @property
    def socket_address(self) -> dict[str, Any] | None:
        return dict(self._socket_address)

    def accept(self, timeout: float | None = None) -> Channel:
        """The one incoming connection; ChannelTimeout after `timeout` seconds,
        ChannelClosed when `close()` is called meanwhile (from any thread)."""
        deadline = Deadline.after(timeout)
        if not self._accept_lock.acquire(blocking=False):
            self._check_can_accept()
            raise TransportError(f"listener on {self.address}: two threads accept at once")
        try:
            self._check_can_accept()
            conn = self._accept_one(deadline)
            with self._state_lock:
                if self._state is ListenerState.CLOSED:
                    conn.close()
                    raise ChannelClosed(f"listener on {self.address} was closed")
                self._accepted += 1
                last = self._accepted >= self._channels
                if last:
                    self._state = ListenerState.ACCEPTED
            if last:
                self._stop_listening()
        finally:
            self._accept_lock.release()
        return SocketChannel(conn, self._peer_of(conn))

    def close(self) -> None:
        """Stop listening (idempotent); interrupts a concurrent `accept()`."""
        with self._state_lock:
            if self._state is ListenerState.CLOSED:
                return
            self._state = ListenerState.CLOSED
        self._waker.wake()
        if not self._accept_lock.acquire(timeout=_LEAVE_TIMEOUT):
            log.warning("listener on %s: accept() did not return; leaking its socket",
                        self.address)
            return
        try:
            self._stop_listening()
            self._waker.close()
        finally:
            self._accept_lock.release()

    def _accept_one(self, deadline: Deadline | None) -> socket.socket:
        while True:
            try:
                conn, _ = self._sock.accept()
                conn.setblocking(True)
                return conn
            except BlockingIOError:
                pass
            except OSError as exc:
                if self._state is ListenerState.CLOSED:
                    break
                raise ListenFailed(f"accept on {self.address} failed: {exc.strerror}") from exc
            outcome = wait_fd(self._sock.fileno(), select.POLLIN, self._waker, deadline)
            if outcome is Wait.WOKEN:
                break
            if outcome is Wait.EXPIRED:
                assert deadline is not None
                raise ChannelTimeout(f"no incoming migration connection on {self.address} "
                                     f"within {deadline.seconds:g} s")
        raise ChannelClosed(f"listener on {self.address} was closed while waiting for "
                            "the incoming migration")

    def _peer_of(self, conn: socket.socket) -> str:
        if conn.family == socket.AF_UNIX:
            return self.address
        with contextlib.suppress(OSError):
            return str(uri_of(conn, remote=True))
        return self.address

    def _stop_listening(self) -> None:
        self._sock.close()
        path, self._unix_path = self._unix_path, None
        if path is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == self._unix_inode:
                os.unlink(path)


class ReadyListener(Listener):
    """exec:, file:, an inherited connected fd: the channel exists already."""

    def __init__(self, uri: MigrationUri, channel: Channel) -> None:
        super().__init__(uri)
        self._channel: Channel | None = channel

    def accept(self, timeout: float | None = None) -> Channel:
        with self._state_lock:
            self._check_can_accept()
            channel, self._channel = self._channel, None
            self._state = ListenerState.ACCEPTED
        assert channel is not None
        return channel

    def close(self) -> None:
        """Close the channel if nobody accepted it (idempotent)."""
        with self._state_lock:
            channel, self._channel = self._channel, None
            self._state = ListenerState.CLOSED
        if channel is not None:
            channel.shutdown()  # nobody used it: its command's exit status is moot
            channel.close()


def _listen_tcp(uri: MigrationUri) -> Listener:
    host, port = uri.host or "", uri.port or 0
    where = host_port(host, port)
    try:
        infos = resolve(host, port, _RESOLVE_TIMEOUT, passive=True)
    except (OSError, TimeoutError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ListenFailed(f"address resolution failed for {where}: {reason}") from None
    if not host and socket.has_dualstack_ipv6():
        infos = [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", ("::", port, 0, 0))]
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            return SocketListener(_bound_socket(family, kind, proto, address))
        except OSError as exc:
            last = exc
    if last is not None and last.errno == errno.EADDRINUSE:
        raise ListenFailed(f"Failed to find an available port: Address already in use "
                           f"({uri})")
    reason = last.strerror if last is not None else "no usable address"
    raise ListenFailed(f"Failed to bind socket: {reason} ({uri})")


def _bound_socket(family: int, kind: int, proto: int, address: Any) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address[0] == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_unix(path: str) -> Listener:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tune_socket(sock)  # accepted sockets start from the listener's buffer sizes
        bind_private(sock, path, 1)
        return SocketListener(sock, unix_path=path)
    except OSError as exc:
        sock.close()
        raise ListenFailed(f"Failed to bind socket to {path}: {exc.strerror}") from None


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenFailed(f"Failed to bind socket to {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ListenFailed(f"Failed to bind socket to {path}: the path exists and is not "
                           "a socket (not removing it)")
    if is_listening(path):
        raise ListenFailed(f"Failed to bind socket to {path}: Address already in use (a live "
                           "socket is there; not removing it)")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _spawn_exec(command: str, return_path: bool, exit_timeout: float) -> Channel:
    try:
        return exec_channel(command, "destination", return_path=return_path,
                            exit_timeout=exit_timeout)
    except OSError as exc:
        raise ListenFailed(f"cannot start migration command '{command}': {exc}") from None


def _open_file(path: str) -> Channel:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ListenFailed(f"Failed to open file '{path}': {exc.strerror}") from None
    return FdChannel(f"file:{path}", read_fd=fd, write_fd=None)


def _listen_fd(uri: MigrationUri, fds: Mapping[str, int]) -> Listener:
    claimed = claim_fd(uri.name or "", fds, "destination")
    if isinstance(claimed, socket.socket):
        return SocketListener(claimed)
    return ReadyListener(uri, claimed)
