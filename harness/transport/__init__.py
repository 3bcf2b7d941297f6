"""Migration URIs -> connected byte channels, for both peers of a migration.

Strategy: `parse_uri` validates a URI the way QEMU 7.2 does (same error words);
`connect()` (source, `migrate`) and `listen()` + `Listener.accept()` (destination,
`migrate-incoming`) turn it into a `Channel`: one connected stream that carries the
migration stream one way and the return path the other, with deadlines on every wait
and a `shutdown()` that any thread can use to stop it (`migrate_cancel`).  Sockets,
pipes to an `exec:` command, inherited `fd:`s and `file:`s all look the same above this
package.  Errors are typed, all under `TransportError`.
"""

from __future__ import annotations

from .channel import Channel, ChannelState, FdChannel, SocketChannel
from .connect import connect
from .errors import (
    ChannelClosed,
    ChannelTimeout,
    ConnectFailed,
    ConnectTimeout,
    ExecFailed,
    ListenFailed,
    TransportError,
    UriError,
)
from .fds import parse_fd_args, socketpair_for_fd_uri
from .listen import Listener, ListenerState, listen
from .uri import MigrationUri, parse_uri

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelState",
    "ChannelTimeout",
    "ConnectFailed",
    "ConnectTimeout",
    "ExecFailed",
    "FdChannel",
    "ListenFailed",
    "Listener",
    "ListenerState",
    "MigrationUri",
    "SocketChannel",
    "TransportError",
    "UriError",
    "connect",
    "listen",
    "parse_fd_args",
    "parse_uri",
    "socketpair_for_fd_uri",
]
