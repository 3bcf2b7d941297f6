"""TLS termination in the proxy: faults and triggers on the plaintext of a TLS migration.

Strategy: with `harness proxy --tls DIR` (a `tls:` scenario's work directory, whose
`tls-destination/` holds the server pair and `tls-source/` the client pair of the run's
CA) the proxy is the TLS server the source talks to and a TLS client of the destination:
each accepted connection gets a server handshake (the source checks the proxy's
certificate as it would the destination's: same CA, same SANs) and its connection to the
target a client handshake (the destination checks the run's client certificate), in the
accept thread, before the session starts -- so every channel (main, preempt, multifd) has
its own pair of sessions, as it has its own handshake between QEMUs (T6).  The session's
ends are then `TlsEndpoint`s: `Endpoint`s whose bytes in and out pass through a
`TlsState` (harness.transport.tls_channel), so the pumps, framers, frame faults and wire
triggers see the plaintext and a corrupted page is corrupted inside the TLS stream, where
the destination sees what a plaintext corruption gives.  With `--tls passthrough`
the proxy forwards the TLS bytes untouched and frames them as TLS records
(`TlsRecordFramer`: frame TLS_RECORD, header = the 5-byte record header), so a frame fault
can still aim somewhere: corrupting a record's byte is a TLS error at the destination
(bad record MAC), as it is for QEMU.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from harness.transport import parse_uri
from harness.transport.tls import TlsObjects, client_hostname, handshake
from harness.transport.tls_channel import READ_CHUNK, TlsState
from harness.transport.waiting import Deadline, Waker

from .endpoint import Endpoint, Quiet
from .framing import Frame, Framer, Framing

__all__ = ["TLS_RECORD", "ProxyTls", "TlsEndpoint", "TlsPassthrough", "TlsRecordFramer",
           "proxy_tls"]

#: the frame a passthrough proxy sees: one TLS record (RFC 8446 5.1: type, legacy
#: version, be16 length; then at most 2^14 + 256 bytes)
TLS_RECORD = "TLS_RECORD"
_RECORD_TYPES = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, data
_MAX_RECORD = (1 << 14) + 256

HANDSHAKE_TIMEOUT = 30.0


class TlsEndpoint(Endpoint):
    """An `Endpoint` carrying one established TLS session (plaintext in and out)."""

    def __init__(self, sock: socket.socket, label: str, waker: Waker, tls: TlsState) -> None:
        super().__init__(sock, label, waker)
        self.tls = tls
        self._scratch = memoryview(bytearray(READ_CHUNK))
        self._raw_eof = False
        self._send_lock = threading.Lock()  # ciphertext leaves in the order it was made

    def recv_into(self, view: memoryview, seconds: float | None = None) -> int:
        deadline = Deadline.after(seconds)
        while True:
            count = self.tls.decrypt(view, self.label)
            if count is not None:
                return count
            if self._raw_eof:
                return 0
            left = None if deadline is None else deadline.remaining()
            if left is not None and left <= 0:
                raise Quiet(f"{self.label}: nothing within {seconds} s")
            got = super().recv_into(self._scratch, left)
            if not got:
                self._raw_eof = True
                continue
            self.tls.feed(self._scratch[:got])

    def send(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_lock, memoryview(data) as view:
            flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            if len(flat):
                self.tls.encrypt([flat], len(flat), self.label)
            ciphertext = self.tls.ciphertext()
            if ciphertext:
                super().send(ciphertext)


def proxy_tls(option: str | Path | None) -> ProxyTls | TlsPassthrough | None:
    """`--tls DIR` (terminate with the run's certificates in DIR) or `--tls passthrough`."""
    if option is None:
        return None
    if str(option) == "passthrough":
        return TlsPassthrough()
    return ProxyTls(Path(option))


class TlsRecordFramer(Framer):
    """Frames of a TLS byte stream the proxy cannot decrypt: its records (header = the 5
    bytes before the ciphertext), so that frame faults can aim at a TLS_RECORD."""

    def __init__(self, flow: str) -> None:
        super().__init__()
        self.flow = flow
        self._next = 0  # where the next record starts
        self._frames: list[Frame] = []
        self._told = False  # the loss is reported once

    def _feed(self, data: memoryview) -> None:
        while self._next + 5 <= self.received:
            with self.view(self._next, self._next + 5) as header:
                kind, length = header[0], int.from_bytes(header[3:5], "big")
            if kind not in _RECORD_TYPES or length > _MAX_RECORD:
                self.lost = (f"framing lost at offset {self._next}: not a TLS record "
                             f"(type {kind}, length {length})")
                return
            end = self._next + 5 + length
            if end > self.received:
                return
            self._frames.append(Frame(TLS_RECORD, self._next, self._next + 5, end, "tls"))
            self._next = end

    def take(self) -> Framing:
        frames, self._frames = self._frames, []
        if self.lost is not None:
            told, self._told = self._told, True
            return Framing(frames=frames, boundary=self.received,
                           lost=None if told else self.lost)
        return Framing(frames=frames, boundary=self._next)


class TlsPassthrough:
    """`--tls passthrough`: TLS bytes forwarded untouched, framed as TLS records."""

    def terminate(self, source: socket.socket, target: socket.socket, target_uri: str
                  ) -> None:
        """Nothing: the peers' handshake passes through."""

    def endpoint(self, sock: socket.socket, label: str, waker: Waker) -> Endpoint:
        return Endpoint(sock, label, waker)

    def framer(self, flow: str, framer: Framer) -> Framer:
        return TlsRecordFramer(flow)


class ProxyTls:
    """The proxy's two credentials and the sessions made for connections not yet in a
    `Session` (keyed by socket)."""

    def __init__(self, directory: Path, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self._objects = TlsObjects()  # ValueError (one line) for unusable credentials
        self._objects.add("tls-creds-x509", {"id": "server", "endpoint": "server",
                                             "dir": str(directory / "tls-destination")})
        self._objects.add("tls-creds-x509", {"id": "client", "endpoint": "client",
                                             "dir": str(directory / "tls-source")})
        self._timeout = timeout
        self._sessions: dict[int, TlsState] = {}
        self._lock = threading.Lock()

    def terminate(self, source: socket.socket, target: socket.socket, target_uri: str) -> None:
        """Handshake with the source (as its server), then with the target (as a client);
        TlsError in QEMU's words.  The target socket is closed on failure (the caller
        closes the source's)."""
        try:
            server = handshake(source, self._objects.creds("server", "server"), True, None,
                               None, self._timeout)
            hostname = client_hostname(parse_uri(target_uri, "source"), "") or "localhost"
            client = handshake(target, self._objects.creds("client", "client"), False,
                               hostname, None, self._timeout)
        except BaseException:
            with contextlib.suppress(OSError):
                target.close()
            raise
        with self._lock:
            self._sessions[id(source)] = server
            self._sessions[id(target)] = client

    def endpoint(self, sock: socket.socket, label: str, waker: Waker) -> Endpoint:
        """The session's end for `sock`: TLS if `terminate` made it one."""
        with self._lock:
            state = self._sessions.pop(id(sock), None)
        return Endpoint(sock, label, waker) if state is None else TlsEndpoint(sock, label,
                                                                              waker, state)

    def framer(self, flow: str, framer: Framer) -> Framer:
        """The flow's own framer: it sees the plaintext."""
        return framer
