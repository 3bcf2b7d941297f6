"""Socket addresses: name resolution with a deadline, and addresses as URIs and QMP dicts.

Strategy: `getaddrinfo` cannot be interrupted, so a host name (not a numeric address) is
resolved on a daemon thread that the caller waits for with a deadline; a numeric address
never leaves the calling thread.  A bound or connected socket's address is given back
the two ways the rest of the harness speaks: a `MigrationUri` (`tcp:[::1]:4444`) and the
`socket-address` entry of QMP `query-migrate` (`{"type": "inet", "host": "127.0.0.1",
"port": "4444", "ipv4": true}`, as QEMU 7.2 prints it).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

from .uri import MigrationUri

__all__ = ["AddrInfo", "host_port", "resolve", "socket_address", "uri_of"]

AddrInfo = tuple[Any, Any, int, str, Any]


def host_port(host: str, port: int) -> str:
    """`host:port` as QEMU 7.2 prints it in errors (IPv6 without brackets)."""
    return f"{host}:{port}"


def resolve(host: str, port: int, seconds: float, *, passive: bool) -> list[AddrInfo]:
    """Stream-socket addresses for (host, port) within `seconds`.

    Raises `socket.gaierror` (the resolver's answer) or `TimeoutError`."""
    flags = socket.AI_PASSIVE if passive else 0
    query = (host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, flags)
    if not host or _is_numeric(host):
        return socket.getaddrinfo(*query)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(*query)
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"resolving '{host}' took longer than {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return list(outcome["infos"])


def _is_numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def uri_of(sock: socket.socket, *, remote: bool = False) -> MigrationUri:
    """The URI of a socket's local (or remote) address."""
    address = sock.getpeername() if remote else sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = address.decode(errors="replace") if isinstance(address, bytes) else address
        return MigrationUri("unix", path=path or "(unnamed)")
    return MigrationUri("tcp", host=address[0], port=address[1])


def socket_address(sock: socket.socket) -> dict[str, Any]:
    """QMP's `socket-address` entry for a listening socket."""
    uri = uri_of(sock)
    if uri.kind == "unix":
        return {"type": "unix", "path": uri.path}
    family = "ipv6" if sock.family == socket.AF_INET6 else "ipv4"
    return {"type": "inet", "host": uri.host, "port": str(uri.port), family: True}
