"""ZeroMQ CURVE keys for agents: making them, loading them, and who may bind without them.

Strategy: an agent starts processes on request, so whoever can talk to it can run code on
its host.  It therefore binds loopback by default, and any other address only with CURVE
(`harness agent keygen DIR` makes the keys): the agent's ROUTER is a CURVE server with the
server secret key, and a ZAP handler (`zmq.auth.thread.ThreadAuthenticator`) accepts only
the client public keys found in one explicit directory -- never CURVE_ALLOW_ANY -- so a
client without a key, with a wrong server key, or with a key nobody authorized never
completes the handshake: its messages never reach the agent at all.

One DIR serves both ends on one machine; across machines each end needs its half:

    DIR/server.key            the agent's public key     (the runner needs it)
    DIR/server.key_secret     the agent's keypair        (the agent only; mode 0600)
    DIR/client.key_secret     the runner's keypair       (the runner only; mode 0600)
    DIR/client.key            the runner's public key
    DIR/authorized/           client public keys the agent accepts (client.key is copied here)
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth

from harness.errors import EnvironmentFailure

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

__all__ = ["AUTHORIZED", "KEYS_ENV", "ClientKeys", "KeyError_", "ServerKeys",
           "bind_needs_keys", "check_bind", "keygen", "load_client_keys", "load_server_keys",
           "make_curve_server", "start_authenticator"]

AUTHORIZED = "authorized"
SERVER, CLIENT = "server", "client"
#: where the runner looks for keys when a host has no `keys:`
KEYS_ENV = "HARNESS_AGENT_KEYS"


class KeyError_(EnvironmentFailure, ValueError):
    """Keys missing or unreadable; the message names the file and how to make it."""


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path  # directory of client public keys


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make `sock` a CURVE client of the agent (before it connects)."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


def keygen(directory: Path) -> list[Path]:
    """Write a server and a client keypair into `directory` (secret files 0600) and
    authorize the client; the files written.  Refuses to overwrite existing keys."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = [directory / f"{name}.key_secret" for name in (SERVER, CLIENT)
                if (directory / f"{name}.key_secret").exists()]
    if existing:
        raise KeyError_(f"{existing[0]} exists already: remove the old keys first, or use "
                        f"another directory")
    authorized = directory / AUTHORIZED
    authorized.mkdir(exist_ok=True)
    old_umask = os.umask(0o077)  # secret files are never readable by others, not even briefly
    try:
        written = []
        for name in (SERVER, CLIENT):
            public, secret = zmq.auth.create_certificates(str(directory), name)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
            written += [Path(public), Path(secret)]
    finally:
        os.umask(old_umask)
    copy = authorized / f"{CLIENT}.key"
    shutil.copyfile(directory / f"{CLIENT}.key", copy)
    os.chmod(copy, 0o644)
    return [*written, copy]


def load_server_keys(directory: Path) -> ServerKeys:
    """The agent's keypair and its directory of authorized client keys."""
    public, secret = _load(directory / f"{SERVER}.key_secret", secret_needed=True)
    authorized = directory / AUTHORIZED
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise KeyError_(f"{authorized}: no authorized client keys (*.key) -- copy each "
                        f"runner's client.key there (harness agent keygen {directory} makes one)")
    assert secret is not None
    return ServerKeys(public, secret, authorized)


def load_client_keys(directory: Path) -> ClientKeys:
    """The runner's keypair and the agent's public key, from one directory."""
    public, secret = _load(directory / f"{CLIENT}.key_secret", secret_needed=True)
    server_public, _ = _load(directory / f"{SERVER}.key", secret_needed=False)
    assert secret is not None
    return ClientKeys(public, secret, server_public)


def _load(path: Path, secret_needed: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeyError_(f"{path}: no such key file (harness agent keygen {path.parent} "
                        f"writes one)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as err:
        raise KeyError_(f"{path}: not a CURVE key file: {err}") from None
    if secret_needed and not secret:
        raise KeyError_(f"{path}: holds no secret key")
    if secret_needed and os.stat(path).st_mode & 0o077:
        raise KeyError_(f"{path}: a secret key must not be readable by others "
                        f"(chmod 600 {path})")
    return public, secret


def start_authenticator(context: zmq.Context[Any], keys: ServerKeys) -> ThreadAuthenticator:
    """A ZAP handler accepting exactly the client keys in `keys.authorized`."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.authorized))
    return auth


def make_curve_server(sock: zmq.Socket[Any], keys: ServerKeys) -> None:
    """Make `sock` a CURVE server (before it binds)."""
    sock.curve_server = True
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


def check_bind(address: str) -> None:
    """ValueError, saying what is expected, unless `address` is an endpoint an agent binds."""
    import re

    found = re.fullmatch(r"tcp://(\[[^\]]+\]|[^:/\s]+):(\*|\d+)", address)
    if address.startswith("ipc://") and len(address) > len("ipc://"):
        return
    if found is None or (found[2] != "*" and int(found[2]) > 65535):
        raise ValueError(f"--bind {address}: expected tcp://ADDR:PORT (PORT 0-65535, 0 or *: "
                         f"any free port) or ipc://PATH")


def bind_needs_keys(address: str) -> bool:
    """Whether binding `address` exposes the agent beyond this host (so CURVE is required).

    Loopback TCP addresses, ipc:// and inproc:// are local; every other address is not
    (a wildcard `*` or 0.0.0.0 included)."""
    if address.startswith(("ipc://", "inproc://")):
        return False
    if not address.startswith("tcp://"):
        return True
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a hostname or an interface name: it may be anything
        return True
