"""`fd:NAME` URIs: naming inherited fds on a peer's command line and wrapping them.

Strategy: the runner (or a test) makes a connected pair with `socketpair_for_fd_uri()`,
hands one end to each peer with `subprocess`'s `pass_fds`, and tells each peer
`--fd NAME=NUMBER`; `parse_fd_args` turns those arguments into the `{name: fd}` mapping
that `connect()`/`listen()` take.  As in QEMU (`monitor_get_fd` hands the fd over), an
`fd:` URI *consumes* its fd: the channel owns and closes it, so the other side sees EOF.
A second use of the same name is caught (the fd is closed, or now another file) instead
of silently reading someone else's fd.  What the fd is decides the channel: a connected
stream socket -> `SocketChannel` (with a return path), a listening socket -> accept on
it, a pipe/FIFO/file -> a one-way `FdChannel` whose direction must suit the role.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import threading
from collections.abc import Iterable, Mapping

from .channel import UNIX_SOCKET_BUFFER, FdChannel, SocketChannel, tune_socket
from .errors import UriError
from .uri import Role, check_fd_name

__all__ = ["claim_fd", "parse_fd_args", "socketpair_for_fd_uri"]

_consumed_lock = threading.Lock()
_consumed: set[tuple[int, int, int]] = set()  # (fd, st_dev, st_ino) handed to a channel


def socketpair_for_fd_uri() -> tuple[socket.socket, socket.socket]:
    """Two connected unix stream sockets (4 MiB buffers), one for each peer.

    Pass `a.fileno()` to one child with `pass_fds` and `--fd NAME=FD`, the other end to
    the other peer, then close both in the parent (the children hold their copies)."""
    first, second = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (first, second):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UNIX_SOCKET_BUFFER)
    return first, second


def parse_fd_args(args: Iterable[str]) -> dict[str, int]:
    """`["mig=3", "rp=4"]` -> `{"mig": 3, "rp": 4}`; a bare number `"3"` names fd 3 "3".

    Each fd must be open in this process.  Raises UriError naming the bad argument."""
    fds: dict[str, int] = {}
    for arg in args:
        name, number = _split_fd_arg(arg)
        if name in fds:
            raise UriError(f"--fd {arg}: the name '{name}' is given twice")
        try:
            os.fstat(number)
        except OSError:
            raise UriError(f"--fd {arg}: fd {number} is not open in this process "
                           "(was it passed with pass_fds?)") from None
        fds[name] = number
    return fds


def _split_fd_arg(arg: str) -> tuple[str, int]:
    name, _, number = arg.rpartition("=") if "=" in arg else (arg, "", arg)
    bad = (not name or not number.isascii() or not number.isdigit()
           or any(c.isspace() or c in ",:=" for c in name))
    if bad:
        raise UriError(f"invalid --fd argument '{arg}': expected NAME=FD (e.g. mig=3) or FD")
    return name, int(number)


def claim_fd(name: str, fds: Mapping[str, int],
             role: Role) -> SocketChannel | FdChannel | socket.socket:
    """Wrap the fd named `name` for `role`, once: a channel, or (destination only) the
    listening socket it is.  UriError when the name is unknown, the fd closed, already
    used, or of the wrong kind or direction."""
    fd = check_fd_name(name, fds)
    try:
        info = os.fstat(fd)
    except OSError:
        raise UriError(f"fd '{name}' (fd {fd}) is not open in this process; an fd: URI "
                       "consumes its fd, so each name can be used once") from None
    key = (fd, info.st_dev, info.st_ino)
    with _consumed_lock:
        if key in _consumed:
            raise UriError(f"fd '{name}' (fd {fd}) was already used by an earlier migration; "
                           "an fd: URI consumes its fd, so each name can be used once")
        wrapped = _wrap(name, fd, info.st_mode, role)
        _consumed.add(key)
    return wrapped


def _wrap(name: str, fd: int, mode: int, role: Role) -> SocketChannel | FdChannel | socket.socket:
    peer = f"fd:{name} (fd {fd})"
    if stat.S_ISSOCK(mode):
        return _wrap_socket(name, fd, role, peer)
    if stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISCHR(mode):
        return _wrap_one_way(name, fd, role, peer)
    raise UriError(f"fd '{name}' (fd {fd}) is neither a socket, a pipe nor a file")


def _wrap_socket(name: str, fd: int, role: Role, peer: str) -> SocketChannel | socket.socket:
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise UriError(f"fd '{name}' (fd {fd}) is not a stream socket")
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        if role == "source":
            sock.detach()
            raise UriError(f"fd '{name}' (fd {fd}) is a listening socket; the source needs "
                           "a connected one")
        tune_socket(sock)
        return sock
    return SocketChannel(sock, peer)


def _wrap_one_way(name: str, fd: int, role: Role, peer: str) -> FdChannel:
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if role == "source":
        if access == os.O_RDONLY:
            raise UriError(f"fd '{name}' (fd {fd}) is open read-only; the source writes "
                           "the migration stream into it")
        return FdChannel(peer, read_fd=None, write_fd=fd)
    if access == os.O_WRONLY:
        raise UriError(f"fd '{name}' (fd {fd}) is open write-only; the destination reads "
                       "the migration stream from it")
    return FdChannel(peer, read_fd=fd, write_fd=None)
