"""Unix sockets the harness creates are mode 0600: only the user it runs as may connect.

Strategy: a unix socket's file takes its mode from the umask at bind(), and whoever may
write the file may connect.  A socket we bind ourselves is bound, chmod-ed 0600, and only
then listens: before listen() no connection can complete, so no other user slips in
between.  zmq binds and listens an ipc:// endpoint in one call, so there the umask is
narrowed to 077 around the bind (under a lock: the umask belongs to the whole process,
and 077 only ever makes what another thread creates meanwhile more private) and the file
chmod-ed 0600 right after: from its first moment only its owner can connect.

`is_listening` tells a live socket file (never to be removed) from a dead peer's leftover.
It looks in /proc/net/unix first, which disturbs nobody; only a socket not found there by
name (bound by a relative path, or in another network namespace) is probed with a
connect, which the listener sees as one empty connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

__all__ = ["SOCKET_MODE", "bind_private", "is_listening", "private_umask"]

SOCKET_MODE = 0o600
_UMASK_LOCK = threading.Lock()
_ACCEPTCON = 0x10000  # /proc/net/unix Flags: a listening socket (__SO_ACCEPTCON)


def bind_private(sock: socket.socket, path: str, backlog: int) -> None:
    """Bind `sock` (AF_UNIX, stream) at `path` with mode 0600, then listen (OSError)."""
    sock.bind(path)
    os.chmod(path, SOCKET_MODE)
    sock.listen(backlog)


@contextlib.contextmanager
def private_umask(path: str | None) -> Iterator[None]:
    """Around a bind that creates the socket file `path` (None: no file, nothing to do):
    it is created owner-only and left mode 0600."""
    if path is None:
        yield
        return
    with _UMASK_LOCK:
        old = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(old)
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, SOCKET_MODE)


def is_listening(path: str) -> bool:
    """Whether a server listens on the unix socket file `path`."""
    names = {path, os.path.abspath(path), os.path.realpath(path)}
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
            for line in table.read().splitlines()[1:]:
                fields = line.split(None, 7)
                if len(fields) == 8 and int(fields[3], 16) & _ACCEPTCON and fields[7] in names:
                    return True
    except (OSError, ValueError):
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:  # ECONNREFUSED: nobody listens there
            return False
    return True
