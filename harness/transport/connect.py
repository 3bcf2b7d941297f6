"""`connect()`: the source side of `migrate` -- a URI in, a connected `Channel` out.

Strategy: one small function per URI kind, all bounded by the caller's `timeout`
(name resolution and the TCP handshake included) and all failing with QEMU 7.2's words
(`util/qemu-sockets.c`: "Failed to connect to '127.0.0.1:4444': Connection refused").
Like QEMU there is no retry: the destination must already be listening.  `exec:` runs
`/bin/sh -c CMD` with its stdin as the stream; QEMU leaves the command's stdout on
/dev/null (`io/channel-command.c`, O_WRONLY), the harness does too unless the caller asks
for a return path over it (`return_path=True`, for commands like `socat - TCP:...`).
Everything opened is closed again if a later step fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .addresses import host_port, resolve
from .channel import Channel, FdChannel, SocketChannel
from .errors import ConnectFailed, ConnectTimeout
from .fds import claim_fd
from .pipes import exec_channel
from .uri import MigrationUri, parse_uri
from .waiting import Deadline

__all__ = ["NO_FDS", "connect"]

NO_FDS: Mapping[str, int] = MappingProxyType({})


def connect(uri: MigrationUri | str, *, timeout: float, fds: Mapping[str, int] = NO_FDS,
            return_path: bool = False, exit_timeout: float = 10.0) -> Channel:
    """Open the outgoing migration channel named by `uri` (a string is parsed for the
    source role).  `return_path` only matters for exec: (see the module docstring);
    `exit_timeout` is how long closing an exec: channel waits for the command."""
    parsed = parse_uri(uri, "source") if isinstance(uri, str) else uri
    deadline = Deadline(timeout)
    if parsed.kind == "tcp":
        return _connect_tcp(parsed, deadline)
    if parsed.kind == "unix":
        return _connect_unix(parsed, deadline)
    if parsed.kind == "exec":
        return _connect_exec(parsed.command or "", return_path, exit_timeout)
    if parsed.kind == "fd":
        channel = claim_fd(parsed.name or "", fds, "source")
        assert isinstance(channel, Channel)  # claim_fd refuses listening sockets here
        return channel
    return _connect_file(parsed.path or "")


def _connect_tcp(uri: MigrationUri, deadline: Deadline) -> Channel:
    host, port = uri.host or "", uri.port or 0
    where = host_port(host, port)
    try:
        infos = resolve(host, port, deadline.remaining(), passive=False)
    except TimeoutError as exc:
        raise ConnectTimeout(f"Failed to connect to '{where}': {exc}") from None
    except OSError as exc:
        raise ConnectFailed(f"address resolution failed for {where}: {exc.strerror}") from None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            sock = _connect_socket(family, kind, proto, address, deadline, where)
        except OSError as exc:
            last = exc
            continue
        return SocketChannel(sock, str(uri))
    reason = last.strerror if last is not None and last.strerror else str(last)
    raise ConnectFailed(f"Failed to connect to '{where}': {reason}")


def _connect_unix(uri: MigrationUri, deadline: Deadline) -> Channel:
    path = uri.path or ""
    try:
        sock = _connect_socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, path, deadline, path)
    except OSError as exc:
        raise ConnectFailed(f"Failed to connect to '{path}': {exc.strerror or exc}") from None
    return SocketChannel(sock, str(uri))


def _connect_socket(family: int, kind: int, proto: int, address: Any,
                    deadline: Deadline, where: str) -> socket.socket:
    """A socket connected within the deadline (ConnectTimeout), else the OSError."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.settimeout(deadline.remaining())
        sock.connect(address)
    except TimeoutError:
        sock.close()
        raise ConnectTimeout(f"Failed to connect to '{where}': Connection timed out "
                             f"(no answer within {deadline.seconds:g} s)") from None
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def _connect_exec(command: str, return_path: bool, exit_timeout: float) -> Channel:
    try:
        return exec_channel(command, "source", return_path=return_path,
                            exit_timeout=exit_timeout)
    except OSError as exc:
        raise ConnectFailed(f"cannot start migration command '{command}': {exc}") from None


def _connect_file(path: str) -> Channel:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConnectFailed(f"Failed to open file '{path}': {exc.strerror}") from None
    return FdChannel(f"file:{path}", read_fd=None, write_fd=fd)
