"""TLS for migration channels: QEMU 7.2's credentials objects, handshakes and words.

Strategy: a peer holds its `-object`s in one `TlsObjects` (`--object` on the command
line, QMP `object-add`), as QEMU holds them in its object root.  `tls-creds-x509` reads
QEMU's fixed file names from `dir` (crypto/tlscredsx509.c) and checks its own
certificates' times when it is created, as QEMU's sanity check does; the `ssl` context
is built then, so a bad directory fails at once.  `authz-simple` is an identity string.
`client_channel` (source: main, return path = the same session, preempt, each multifd
channel) and `server_channel` (destination: every accepted connection, before its role
is decided) look the credentials up the way migration/tls.c does
(`migration_tls_get_creds`), run the handshake on the connected socket within a
deadline, check the hostname (tls-hostname, else the tcp: host: T2) and the authz
identity against the client certificate's DN as GnuTLS prints it (T3), and return
a `TlsChannel`.  A server sends no session tickets (`num_tickets = 0`, T5: a 7.2 source
never reads them and loses the end of its stream when it closes over them) unless the
testing knob `x-session-tickets=N` asks for N, as a default OpenSSL server does.
Failures are `TlsError`s in crypto/tlssession.c's words.  GnuTLS priority strings
cannot be honoured by OpenSSL: `priority` is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .channel import Channel, SocketChannel
from .tls_channel import READ_CHUNK, TlsChannel, TlsError, TlsState
from .waiting import Deadline

__all__ = ["AuthzSimple", "TlsError", "TlsListener", "TlsObjects", "X509Creds",
           "client_hostname", "gnutls_dn", "handshake",
           "parse_object_option", "peer_dn"]

CA_CERT, CA_CRL = "ca-cert.pem", "ca-crl.pem"
CERT = {"server": "server-cert.pem", "client": "client-cert.pem"}
KEY = {"server": "server-key.pem", "client": "client-key.pem"}
CREDS_TYPE, AUTHZ_TYPE = "tls-creds-x509", "authz-simple"
HANDSHAKE_TIMEOUT = 30.0
_BOOLS = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}
_CREDS_PROPS = {"id", "dir", "endpoint", "verify-peer", "priority", "x-session-tickets"}
_AUTHZ_PROPS = {"id", "identity"}
#: OpenSSL verify codes -> crypto/tlssession.c qcrypto_tls_session_check_certificate
_UNKNOWN_ISSUER = frozenset({2, 18, 19, 20, 21})
_HOSTNAME_MISMATCH = frozenset({62, 64})


@dataclass(frozen=True)
class AuthzSimple:
    """`authz-simple,id=..,identity=..` (authz/simple.c): one allowed identity."""

    id: str
    identity: str


@dataclass(frozen=True)
class X509Creds:
    """`tls-creds-x509`: files in `dir` under QEMU's names; `context` built at creation."""

    id: str
    dir: Path
    endpoint: str
    verify_peer: bool
    session_tickets: int
    context: ssl.SSLContext


def parse_object_option(text: str) -> tuple[str, dict[str, str]]:
    """`TYPE,key=value,...` as QEMU's `-object` takes it (`,,` is a literal comma)."""
    parts, current, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    qom_type, props = parts[0], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"--object {qom_type}: '{part}' is not KEY=VALUE")
        props[key] = value
    if not qom_type or "=" in qom_type:
        raise ValueError(f"--object '{text}': the first item must be the object type")
    return qom_type, props


class TlsObjects:
    """A peer's credentials and authz objects, by id (QEMU's object root)."""

    def __init__(self) -> None:
        self._objects: dict[str, X509Creds | AuthzSimple] = {}

    def add_option(self, text: str) -> None:
        qom_type, props = parse_object_option(text)
        self.add(qom_type, props)

    def add(self, qom_type: str, props: dict[str, Any]) -> None:
        """object-add / -object; ValueError (one line) for what QEMU would refuse."""
        props = dict(props)
        oid = props.get("id")
        if not isinstance(oid, str) or not oid:
            raise ValueError("Parameter 'id' is missing")
        if oid in self._objects:
            raise ValueError(f"attempt to add duplicate property '{oid}' to object "
                             "(type 'container')")
        if qom_type == CREDS_TYPE:
            self._objects[oid] = _make_creds(props)
        elif qom_type == AUTHZ_TYPE:
            _check_props(qom_type, props, _AUTHZ_PROPS)
            self._objects[oid] = AuthzSimple(oid, str(props.get("identity", "")))
        else:
            raise ValueError(f"invalid object type: {qom_type} (the harness peer has "
                             f"{CREDS_TYPE} and {AUTHZ_TYPE})")

    def delete(self, oid: str) -> None:
        if self._objects.pop(oid, None) is None:
            raise ValueError(f"object '{oid}' not found")

    def creds(self, oid: str, endpoint: str) -> X509Creds:
        """migration/tls.c: migration_tls_get_creds, with its words."""
        found = self._objects.get(oid)
        if found is None:
            raise TlsError(f"No TLS credentials with id '{oid}'")
        if not isinstance(found, X509Creds):
            raise TlsError(f"Object with id '{oid}' is not TLS credentials")
        if found.endpoint != endpoint:  # crypto/tlscreds.c: qcrypto_tls_creds_check_endpoint
            raise TlsError(f"Expected TLS credentials for a {endpoint} endpoint")
        return found

    def client_channel(self, channel: Channel, uri: Any, parameters: dict[str, Any],
                       timeout: float = HANDSHAKE_TIMEOUT) -> Channel:
        """The source's channel after its TLS handshake (as it is, without tls-creds)."""
        oid = parameters.get("tls-creds") or ""
        if not oid:
            return channel
        try:
            creds = self.creds(oid, "client")
            hostname = client_hostname(uri, parameters.get("tls-hostname") or "")
            if creds.verify_peer and hostname is None:
                raise TlsError("No hostname for certificate validation")
            sock = _take_socket(channel, uri)
        except BaseException:
            channel.close()
            raise
        return _establish(sock, channel.peer, creds, False, hostname, None, timeout)

    def server_channel(self, channel: Channel, parameters: dict[str, Any],
                       timeout: float = HANDSHAKE_TIMEOUT) -> Channel:
        """An accepted channel after the server handshake and the authz check."""
        oid = parameters.get("tls-creds") or ""
        if not oid:
            return channel
        try:
            creds = self.creds(oid, "server")
            authz = self._authz(parameters.get("tls-authz") or "")
            sock = _take_socket(channel, channel.peer)
        except BaseException:
            channel.close()
            raise
        return _establish(sock, channel.peer, creds, True, None, authz, timeout)

    def _authz(self, oid: str) -> AuthzSimple | None:
        if not oid:
            return None
        found = self._objects.get(oid)
        if found is None:  # authz/base.c: qauthz_is_allowed_by_id
            raise TlsError(f"Cannot find QAuthZ object ID {oid}")
        if not isinstance(found, AuthzSimple):
            raise TlsError(f"Object '{oid}' is in not a QAuthZ subclass")
        return found


class TlsListener:
    """A `Listener` whose accepted channels come out of `server_channel` (with the
    parameters of the moment: tls-creds set after migrate-incoming counts)."""

    def __init__(self, listener: Any, objects: TlsObjects,
                 parameters: Callable[[], dict[str, Any]]) -> None:
        self._listener = listener
        self._objects = objects
        self._parameters = parameters

    def accept(self, timeout: float | None = None) -> Channel:
        channel = self._listener.accept(timeout)
        # the handshake has its own deadline: an accept's may be short (a poll for more)
        return self._objects.server_channel(channel, self._parameters(), HANDSHAKE_TIMEOUT)

    def __getattr__(self, name: str) -> Any:  # close, expect_channels, socket_address...
        return getattr(self._listener, name)


def client_hostname(uri: Any, tls_hostname: str) -> str | None:
    """T2: tls-hostname if set, else the host of a tcp: URI; None for unix/fd/exec."""
    if tls_hostname:
        return tls_hostname
    if getattr(uri, "kind", None) == "tcp" and uri.host:
        return str(uri.host).strip("[]")
    return None


def peer_dn(der: bytes) -> str:
    """The certificate subject as QEMU 7.2's GnuTLS prints it (gnutls_x509_crt_get_dn)."""
    from cryptography import x509

    return gnutls_dn(x509.load_der_x509_certificate(der).subject)


def gnutls_dn(name: Any) -> str:
    """A `cryptography` Name as GnuTLS prints it: the RDNs in the certificate's order
    (seen live: a subject made O first, then CN, gave `O=migration-harness,CN=...`;
    T3's `CN=qemu-client,O=WireFacts` came from a subject made CN first), each in RFC
    4514 form."""
    return ",".join(rdn.rfc4514_string() for rdn in name.rdns)


# -- creation -------------------------------------------------------------------------------

def _check_props(qom_type: str, props: dict[str, Any], known: set[str]) -> None:
    for key in props:
        if key not in known:
            raise ValueError(f"Property '{qom_type}.{key}' not found")


def _flag(props: dict[str, Any], key: str, default: bool) -> bool:
    value = props.get(key, default)
    if isinstance(value, bool):
        return value
    if str(value).lower() in _BOOLS:
        return _BOOLS[str(value).lower()]
    raise ValueError(f"Parameter '{key}' expects 'on' or 'off'")


def _make_creds(props: dict[str, Any]) -> X509Creds:
    _check_props(CREDS_TYPE, props, _CREDS_PROPS)
    if "priority" in props:
        raise ValueError(f"{CREDS_TYPE}'s 'priority' (a GnuTLS priority string) is not "
                         "implemented by the harness peer")
    endpoint = str(props.get("endpoint", "client"))
    if endpoint not in ("client", "server"):
        raise ValueError(f"Parameter 'endpoint' does not accept value '{endpoint}'")
    if "dir" not in props:  # crypto/tlscreds.c: qcrypto_tls_creds_get_path
        raise ValueError("Missing 'dir' property value")
    directory = Path(str(props["dir"]))
    verify = _flag(props, "verify-peer", True)
    tickets = props.get("x-session-tickets", 0)
    try:
        tickets = int(tickets)
    except (TypeError, ValueError):
        raise ValueError("Parameter 'x-session-tickets' expects an integer") from None
    if not 0 <= tickets <= 16 or (tickets and endpoint != "server"):
        raise ValueError("Parameter 'x-session-tickets' expects 0 to 16, on a server endpoint")
    context = _context(directory, endpoint, verify, tickets)
    return X509Creds(str(props["id"]), directory, endpoint, verify, tickets, context)


def _path(directory: Path, name: str, required: bool) -> Path | None:
    path = directory / name
    try:
        with path.open("rb"):
            return path
    except FileNotFoundError:
        if not required:
            return None
        raise ValueError(f"Unable to access credentials {path}: No such file or "
                         "directory") from None
    except OSError as exc:
        raise ValueError(f"Unable to access credentials {path}: {exc.strerror}") from None


def _context(directory: Path, endpoint: str, verify: bool, tickets: int) -> ssl.SSLContext:
    """crypto/tlscredsx509.c: qcrypto_tls_creds_x509_load, with OpenSSL."""
    server = endpoint == "server"
    ca = _path(directory, CA_CERT, True)
    crl = _path(directory, CA_CRL, False)
    cert = _path(directory, CERT[endpoint], server)
    key = _path(directory, KEY[endpoint], server)
    assert ca is not None
    ca_cert = _check_times(ca, "CA")
    if cert is not None:
        _check_issuer(_check_times(cert, endpoint), ca_cert, cert, ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cert is not None and key is not None:
            ctx.load_cert_chain(cert, key)
        if verify:
            ctx.load_verify_locations(cafile=str(ca))
            if crl is not None:
                ctx.load_verify_locations(cafile=str(crl))
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"Unable to load credentials in {directory}: "
                         f"{getattr(exc, 'reason', None) or exc}") from None
    if server:
        ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        ctx.num_tickets = tickets
    else:
        ctx.check_hostname = verify
        ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    return ctx


def _check_times(path: Path, who: str) -> Any:
    """crypto/tlscredsx509.c: qcrypto_tls_creds_check_cert_times; the certificate."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ValueError(f"Unable to import certificate {path}") from None
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise ValueError(f"The {who} certificate {path} has expired")
    if cert.not_valid_before_utc > now:
        raise ValueError(f"The {who} certificate {path} is not yet active")
    return cert


def _check_issuer(cert: Any, ca_cert: Any, cert_path: Path, ca_path: Path) -> None:
    """crypto/tlscredsx509.c: qcrypto_tls_creds_check_authority_chain's words for an own
    certificate its CA did not issue."""
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError(f"Our own certificate {cert_path} failed validation against "
                         f"{ca_path}: The certificate hasn't got a known issuer") from None


# -- handshake ------------------------------------------------------------------------------

def _take_socket(channel: Channel, uri: Any) -> socket.socket:
    """The connected socket out of a plain channel (which is closed, owning nothing)."""
    if not isinstance(channel, SocketChannel) or isinstance(channel, TlsChannel):
        raise TlsError(f"TLS over {uri} is not implemented by the harness peer (only "
                       "over a socket)")
    fd = channel.sock.detach()
    channel.close()
    return socket.socket(fileno=fd)


def _establish(sock: socket.socket, peer: str, creds: X509Creds, server_side: bool,
               hostname: str | None, authz: AuthzSimple | None, timeout: float) -> TlsChannel:
    try:
        state = handshake(sock, creds, server_side, hostname, authz, timeout)
    except BaseException:
        sock.close()
        raise
    return TlsChannel(sock, peer, state)


def handshake(sock: socket.socket, creds: X509Creds, server_side: bool,
              hostname: str | None, authz: AuthzSimple | None, timeout: float) -> TlsState:
    """The TLS handshake on a connected socket (left blocking, no timeout) and the
    checks after it: the established session, or TlsError in QEMU's words."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = creds.context.wrap_bio(incoming, outgoing, server_side=server_side,
                                     server_hostname=None if server_side else hostname)
    _handshake(sock, session, incoming, outgoing, Deadline(timeout), hostname)
    if server_side and creds.verify_peer and authz is not None:
        dn = peer_dn(session.getpeercert(binary_form=True) or b"")
        if dn != authz.identity:  # crypto/tlssession.c: check_certificate
            raise TlsError(f"TLS x509 authz check for {dn} is denied")
    sock.settimeout(None)
    return TlsState(session, incoming, outgoing)


def _handshake(sock: socket.socket, session: ssl.SSLObject, incoming: ssl.MemoryBIO,
               outgoing: ssl.MemoryBIO, deadline: Deadline, hostname: str | None) -> None:
    try:
        while True:
            try:
                session.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            _send_pending(sock, outgoing, deadline)
            sock.settimeout(max(deadline.remaining(), 0.001))
            data = sock.recv(READ_CHUNK)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
        _send_pending(sock, outgoing, deadline)
    except ssl.SSLError as exc:
        with contextlib.suppress(OSError):  # the alert tells the peer why
            _send_pending(sock, outgoing, deadline)
        raise _handshake_error(exc, hostname) from None
    except TimeoutError:
        raise TlsError(f"TLS handshake timed out after {deadline.seconds:g} s") from None
    except OSError as exc:  # gnutls: GNUTLS_E_PULL_ERROR / PUSH_ERROR
        raise TlsError(f"TLS handshake failed: {exc.strerror or exc}") from None


def _send_pending(sock: socket.socket, outgoing: ssl.MemoryBIO, deadline: Deadline) -> None:
    data = outgoing.read()
    if data:
        sock.settimeout(max(deadline.remaining(), 0.001))
        sock.sendall(data)


def _handshake_error(exc: ssl.SSLError, hostname: str | None) -> TlsError:
    """QEMU 7.2's words (crypto/tlssession.c) for what OpenSSL reports."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _HOSTNAME_MISMATCH:
            return TlsError(f"Certificate does not match the hostname {hostname}")
        if code in _UNKNOWN_ISSUER:
            return TlsError("The certificate hasn't got a known issuer")
        if code == 23:
            return TlsError("The certificate has been revoked")
        return TlsError("The certificate is not trusted")
    if isinstance(exc, ssl.SSLEOFError):
        return TlsError("TLS handshake failed: The TLS connection was non-properly "
                        "terminated.")
    if "ALERT" in (exc.reason or ""):
        return TlsError(f"TLS handshake failed: A TLS fatal alert has been received. "
                        f"({exc.reason})")
    return TlsError(f"TLS handshake failed: {exc.reason or exc}")
