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
the destination sees what a plaintext corruption gives.  Without `--tls` the proxy
forwards TLS bytes untouched (passthrough): its framer loses the stream at once
(FRAMING_LOST) and only byte-level faults make sense; corrupting a byte there is a TLS
error at the destination, as it is for QEMU.
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

__all__ = ["ProxyTls", "TlsEndpoint"]

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
