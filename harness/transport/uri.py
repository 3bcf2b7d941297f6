"""Migration URIs (`tcp:`, `unix:`, `exec:`, `fd:`, `file:`) -> a validated `MigrationUri`.

Strategy: one pure function, `parse_uri(uri, role)`, turns the string a user gives to
`migrate` (role "source") or `migrate-incoming` (role "destination") into a frozen
dataclass, and rejects everything else with a `UriError` whose words are QEMU 7.2's
(`migration/migration.c: qmp_migrate` for the source, `qemu_start_incoming_migration`
for the destination), so the harness and a real QEMU fail alike on the same input.  Where
QEMU would go on and fail later (a port out of range, an over-long unix path) the check
happens here and the message names the bad part.  No sockets, files or processes are
touched: resolving `fd:` names against the fds a peer inherited is `check_fd_name`, and
opening anything is `connect()`/`listen()`'s job.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import UriError

__all__ = [
    "UNIX_PATH_MAX",
    "Kind",
    "MigrationUri",
    "Role",
    "check_fd_name",
    "parse_uri",
]

Kind = Literal["tcp", "unix", "exec", "fd", "file"]
Role = Literal["source", "destination"]

#: sun_path is 108 bytes including the terminating NUL
UNIX_PATH_MAX = 107

SOURCE_INVALID = "Parameter 'uri' expects a valid migration protocol"
DESTINATION_UNKNOWN = "unknown migration protocol: {uri}"
RDMA_UNSUPPORTED = "RDMA is not supported by this harness (rdma: URIs need RDMA hardware)"
VSOCK_UNSUPPORTED = "vsock: URIs are not supported by this harness (use tcp: or unix:)"

_HOSTNAME = re.compile(r"[A-Za-z0-9._-]+")
_FD_NAME = re.compile(r"[^\s=,:]+")
_REQUIRED: dict[str, tuple[str, ...]] = {
    "tcp": ("host", "port"), "unix": ("path",), "exec": ("command",),
    "fd": ("name",), "file": ("path",),
}


@dataclass(frozen=True)
class MigrationUri:
    """One parsed migration URI; `str()` gives it back in canonical form.

    tcp: `host` ("" = every interface, destination only) and `port` (0 = pick a free
    one, destination only); unix and file: `path`; exec: `command` (run by /bin/sh);
    fd: `name` (a name from the peer's `--fd NAME=FD` arguments).
    """

    kind: Kind
    host: str | None = None
    port: int | None = None
    path: str | None = None
    command: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        missing = [f for f in _REQUIRED.get(self.kind, ()) if getattr(self, f) is None]
        if self.kind not in _REQUIRED or missing:
            raise UriError(f"MigrationUri(kind={self.kind!r}) needs {', '.join(missing)}"
                           if missing else f"unknown migration URI kind {self.kind!r}")

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in (self.host or "") else self.host
            return f"tcp:{host}:{self.port}"
        value = {"unix": self.path, "file": self.path, "exec": self.command,
                 "fd": self.name}[self.kind]
        return f"{self.kind}:{value}"

    def with_port(self, port: int) -> MigrationUri:
        """The same tcp URI with another port (a listener's actual port after port 0)."""
        return dataclasses.replace(self, port=port)


def parse_uri(uri: str, role: Role, *, fds: Mapping[str, int] | None = None) -> MigrationUri:
    """Parse `uri` as the source (`migrate`) or the destination (`migrate-incoming`) would.

    With `fds`, an `fd:NAME` URI is also checked against the names the peer inherited.
    Raises `UriError` with QEMU 7.2's message for unknown or malformed URIs.
    """
    if role not in ("source", "destination"):
        raise UriError(f"role must be 'source' or 'destination', not {role!r}")
    if not isinstance(uri, str):
        raise UriError(f"a migration URI must be a string, not {type(uri).__name__}")
    scheme, sep, rest = uri.partition(":")
    if scheme == "rdma" and sep:
        raise UriError(RDMA_UNSUPPORTED)
    if scheme == "vsock" and sep:
        raise UriError(VSOCK_UNSUPPORTED)
    parser = _PARSERS.get(scheme) if sep else None
    if parser is None:
        raise UriError(_invalid(uri, role))
    parsed = parser(rest, uri, role)
    if parsed.kind == "fd" and fds is not None:
        check_fd_name(parsed.name or "", fds)
    return parsed


def check_fd_name(name: str, fds: Mapping[str, int]) -> int:
    """The fd number the peer inherited under `name`, or a `UriError` listing the names."""
    if name in fds:
        return fds[name]
    known = ", ".join(fds)
    started = f"with fds: {known}" if known else "with no fds (pass --fd NAME=FD)"
    raise UriError(f"fd '{name}' not found: the peer was started {started}")


def _invalid(uri: str, role: Role, hint: str = "") -> str:
    """QEMU's message for a URI it does not understand, plus an optional hint."""
    base = SOURCE_INVALID if role == "source" else DESTINATION_UNKNOWN.format(uri=uri)
    if not hint:
        return base
    return f"{base} ({uri}: {hint})" if role == "source" else f"{base} ({hint})"


def _parse_tcp(rest: str, uri: str, role: Role) -> MigrationUri:
    host, port_text = _split_host_port(rest, uri, role)
    if not host and role == "source":
        raise UriError(_invalid(uri, role, "the source needs a host to connect to"))
    return MigrationUri("tcp", host=host, port=_parse_port(port_text, uri, role))


def _split_host_port(rest: str, uri: str, role: Role) -> tuple[str, str]:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port text); the host is checked here."""
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise UriError(_invalid(uri, role, "expected tcp:[IPV6-ADDRESS]:PORT"))
        if not _is_ipv6(host):
            raise UriError(_invalid(uri, role, f"'{host}' is not an IPv6 address"))
        return host, after[1:]
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise UriError(_invalid(uri, role, "expected tcp:HOST:PORT"))
    if ":" in host:
        raise UriError(_invalid(uri, role, "an IPv6 address needs brackets: tcp:[::1]:PORT"))
    if host and not _HOSTNAME.fullmatch(host):
        raise UriError(_invalid(uri, role, f"'{host}' is not a host name or address"))
    return host, port_text


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _parse_port(text: str, uri: str, role: Role) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise UriError(f"invalid port '{text}' in migration URI '{uri}': "
                       "expected a number from 1 to 65535")
    port = int(text)
    if port == 0 and role == "source":
        raise UriError(f"port 0 in migration URI '{uri}' is only valid for the destination "
                       "(where it means: pick a free port); the source must name a real port")
    return port


def _parse_unix(rest: str, uri: str, role: Role) -> MigrationUri:
    if not rest:
        raise UriError(_invalid(uri, role, "expected unix:PATH"))
    _check_path(rest, uri, role)
    size = len(os.fsencode(rest))
    if size > UNIX_PATH_MAX:
        raise UriError(f"UNIX socket path '{rest}' is too long ({size} bytes; "
                       f"at most {UNIX_PATH_MAX} fit in sun_path)")
    return MigrationUri("unix", path=rest)


def _parse_exec(rest: str, uri: str, role: Role) -> MigrationUri:
    if not rest.strip():
        raise UriError(_invalid(uri, role, "expected exec:SHELL-COMMAND"))
    if "\0" in rest:
        raise UriError(_invalid(uri, role, "the command contains a NUL character"))
    return MigrationUri("exec", command=rest)


def _parse_fd(rest: str, uri: str, role: Role) -> MigrationUri:
    if not _FD_NAME.fullmatch(rest):
        raise UriError(_invalid(uri, role, "expected fd:NAME, a name given with --fd NAME=FD"))
    return MigrationUri("fd", name=rest)


def _parse_file(rest: str, uri: str, role: Role) -> MigrationUri:
    if not rest:
        raise UriError(_invalid(uri, role, "expected file:PATH"))
    _check_path(rest, uri, role)
    if ",offset=" in rest:
        raise UriError(f"file: URIs with ',offset=' (QEMU 8.2+) are not supported by this "
                       f"harness: {uri}")
    return MigrationUri("file", path=rest)


def _check_path(path: str, uri: str, role: Role) -> None:
    if "\0" in path:
        raise UriError(_invalid(uri, role, "the path contains a NUL character"))


_PARSERS = {"tcp": _parse_tcp, "unix": _parse_unix, "exec": _parse_exec,
            "fd": _parse_fd, "file": _parse_file}
