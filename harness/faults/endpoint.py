"""The proxy's sockets: a listener that accepts again and again, and interruptible ends.

Strategy: the transport package's `Listener` accepts one connection, as QEMU does; the
proxy must accept every connection the source makes on one address (postcopy recovery
reconnects to it), so `ProxyListener` keeps its socket (tcp: or unix:) open until closed.
Each accepted connection and its connection to the target (made with the transport's
`connect`, QEMU's words in its errors) become `Endpoint`s: non-blocking sockets whose
threads only ever wait in `poll()` together with the session's `Waker` (the transport's
self-pipe latch), so stopping a session never needs a shutdown that the peers would
see, and a reset can really be a reset: SO_LINGER 0, then close (the peer gets RST).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import stat
import struct
import termios
import time
from typing import Literal

from harness.transport import MigrationUri, connect, parse_uri
from harness.transport.addresses import resolve, uri_of
from harness.transport.channel import SocketChannel, tune_socket
from harness.transport.unix_mode import bind_private, is_listening
from harness.transport.waiting import Deadline, Wait, Waker, wait_fd

__all__ = ["Endpoint", "ProxyListener", "Quiet", "Stopped", "connect_target", "proxy_uri"]

_LINGER_RESET = struct.pack("ii", 1, 0)


class Stopped(Exception):
    """The session was stopped while this thread waited."""


class Quiet(Exception):
    """Nothing arrived within the time a receive was given."""


def proxy_uri(uri: str, role: Literal["source", "destination"]) -> MigrationUri:
    """A tcp: or unix: URI (the proxy forwards sockets only), parsed for `role`."""
    parsed = parse_uri(uri, role)
    if parsed.kind not in ("tcp", "unix"):
        raise ValueError(f"the proxy forwards tcp: and unix: sockets, not {parsed.kind}: "
                         f"({uri})")
    return parsed


class ProxyListener:
    """A listening socket that accepts any number of connections, one at a time."""

    def __init__(self, uri: str) -> None:
        parsed = proxy_uri(uri, "destination")
        self._unix_path: str | None = None
        if parsed.kind == "unix":
            self._sock = _listen_unix(parsed.path or "")
            self._unix_path = parsed.path
            self.address = f"unix:{parsed.path}"
        else:
            self._sock = _listen_tcp(parsed.host or "", parsed.port or 0)
            self.address = str(uri_of(self._sock))
        self._sock.setblocking(False)

    def accept(self, waker: Waker, timeout: float) -> socket.socket | None:
        """A new connection, or None after `timeout` s; Stopped when `waker` fires."""
        deadline = Deadline(timeout)
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                pass
            else:
                tune_socket(conn)
                return conn
            outcome = wait_fd(self._sock.fileno(), select.POLLIN, waker, deadline)
            if outcome is Wait.WOKEN:
                raise Stopped("the listener was closed")
            if outcome is Wait.EXPIRED:
                return None

    def close(self) -> None:
        self._sock.close()
        path, self._unix_path = self._unix_path, None
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _listen_tcp(host: str, port: int) -> socket.socket:
    infos = resolve(host, port, 10.0, passive=True)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(8)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise OSError(last.errno if last else 0,
                  f"cannot listen on {host}:{port}: {last.strerror if last else 'no address'}")


def _listen_unix(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"cannot listen on {path}: it exists and is not a socket")
        if is_listening(path):
            raise OSError(f"cannot listen on {path}: a live socket is there (not removing it)")
        os.unlink(path)  # a stale socket of an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tune_socket(sock)
        bind_private(sock, path, 8)  # mode 0600
    except OSError:
        sock.close()
        raise
    return sock


def connect_target(uri: str, timeout: float) -> socket.socket:
    """A socket connected to `uri` within `timeout` s (ConnectFailed / ConnectTimeout)."""
    channel = connect(proxy_uri(uri, "source"), timeout=timeout)
    assert isinstance(channel, SocketChannel)
    sock = socket.socket(fileno=channel.sock.detach())  # the channel keeps nothing open
    channel.close()
    return sock


class Endpoint:
    """One end of a session: the connection to the source, or to the destination.

    One thread receives and one sends at a time; `shut_write`, `reset` and `close`
    happen once no thread is inside a call (the session stops them first)."""

    def __init__(self, sock: socket.socket, label: str, waker: Waker) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.label = label
        self.is_tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._waker = waker
        self._fd = sock.fileno()
        self.write_shut = False

    def recv_into(self, view: memoryview, seconds: float | None = None) -> int:
        """Up to len(view) bytes; 0 at end of input; Stopped when the session stops;
        Quiet when `seconds` pass with nothing to read."""
        deadline = Deadline.after(seconds)
        while True:
            try:
                return self.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                pass
            outcome = wait_fd(self._fd, select.POLLIN, self._waker, deadline)
            if outcome is Wait.WOKEN:
                raise Stopped(f"{self.label}: stopped while receiving")
            if outcome is Wait.EXPIRED:
                raise Quiet(f"{self.label}: nothing within {seconds} s")

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """All of `data`; Stopped when the session stops first."""
        with memoryview(data) as view:
            sent, size = 0, len(view)
            while sent < size:
                try:
                    sent += self.sock.send(view[sent:], socket.MSG_NOSIGNAL)
                    continue
                except (BlockingIOError, InterruptedError):
                    pass
                if wait_fd(self._fd, select.POLLOUT, self._waker, None) is Wait.WOKEN:
                    raise Stopped(f"{self.label}: stopped while sending")

    def shut_write(self) -> None:
        """Tell the peer there is no more data (it reads EOF); idempotent."""
        if not self.write_shut:
            self.write_shut = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def drain(self, seconds: float) -> None:
        """Wait (bounded) until the kernel has passed on what we sent (TCP: TIOCOUTQ)."""
        if not self.is_tcp:
            return
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                if struct.unpack("i", fcntl.ioctl(self._fd, termios.TIOCOUTQ, b"\0" * 4))[0] == 0:
                    return
                time.sleep(0.002)

    def close(self, reset: bool = False) -> None:
        """Close; `reset`: the peer sees a connection reset (TCP RST), not an EOF."""
        if reset and self.is_tcp:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.sock.close()
