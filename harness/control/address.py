"""Control-plane endpoints: checking them, and making short unique ipc ones.

Strategy: zmq takes endpoint strings (`ipc://PATH`, `tcp://HOST:PORT`, `inproc://NAME`);
the one trap is that an ipc PATH is a unix socket path, limited to 107 bytes by
`sockaddr_un.sun_path`, which the deep temporary directories of pytest easily exceed, and
zmq's own error for it is a bare "File name too long".  So endpoints are checked up front
with a message that says what to do, and `new_ipc_address` makes a unique path in a short
temporary directory.  `ipc_path` tells the server which file to remove when it closes.
"""

from __future__ import annotations

import os
import secrets
import tempfile

__all__ = ["MAX_IPC_PATH", "check_address", "ipc_path", "new_ipc_address"]

#: sizeof(sockaddr_un.sun_path) - 1 on Linux: the longest unix socket path
MAX_IPC_PATH = 107
_SCHEMES = ("ipc://", "tcp://", "inproc://")


def check_address(address: str) -> None:
    """Raise ValueError, saying why, unless `address` is an endpoint we can bind or connect."""
    if not address.startswith(_SCHEMES):
        raise ValueError(f"control address {address!r}: expected ipc://PATH, tcp://HOST:PORT "
                         f"or inproc://NAME")
    path = ipc_path(address)
    if path is not None and len(os.fsencode(path)) > MAX_IPC_PATH:
        raise ValueError(f"control address {address!r}: the ipc path is "
                         f"{len(os.fsencode(path))} bytes, unix sockets allow {MAX_IPC_PATH}; "
                         f"use a shorter path (harness.control.new_ipc_address() makes one)")


def ipc_path(address: str) -> str | None:
    """The socket file of an `ipc://` endpoint; None for other schemes and abstract sockets."""
    if not address.startswith("ipc://"):
        return None
    path = address[len("ipc://"):]
    if path.startswith("@") or path == "*":  # Linux abstract namespace / a wildcard
        return None
    return path


def new_ipc_address(tag: str = "ctl") -> str:
    """A fresh `ipc://` endpoint in a short temporary directory, unique across processes."""
    directory = tempfile.gettempdir()
    if len(os.fsencode(directory)) > MAX_IPC_PATH - 40:
        directory = "/tmp"
    name = f"mh-{os.getpid()}-{secrets.token_hex(4)}-{tag}.sock"
    return "ipc://" + os.path.join(directory, name)
