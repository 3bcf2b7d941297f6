"""`TlsChannel`: a `SocketChannel` whose bytes on the wire are one TLS session.

Strategy: OpenSSL's `SSL` object must not be used by two threads at once, but a channel
has a reader (the return path, the loader) and a writer (the migration thread) at the
same time.  So the session is a `TlsState`: an `ssl.SSLObject` over two `MemoryBIO`s,
touched only under its lock for the microseconds one chunk's encryption or decryption
takes; the socket I/O itself runs outside it, through `SocketChannel`'s primitives (its
deadlines, its poll with the waker, its `shutdown()` from any thread).  A receive first
asks the session for plaintext it already holds (records read earlier, bytes left from
the handshake) and only then reads ciphertext from the socket: a poll on the fd alone
would miss those pending bytes.  A send encrypts at most `WRITE_CHUNK` bytes and pushes
the ciphertext out under `_wire_lock` (ciphertext must leave in the order it was made);
what a read produces (an alert) is pushed by the next send.  EOF without close_notify is
EOF, as QEMU 7.2 closes its TLS channels without `gnutls_bye` (io/channel-tls.c).  The
proxy's TLS ends (harness/faults/tls_endpoint.py) use the same `TlsState`.

Nothing may write the socket directly: `sock` is None (the destination's guest writes
its page requests through the return path instead, and a compiled gathered send from
guest RAM is off: `send_gathered` is None, so the frame buffer copies pages in first).
Closing drains what the peer sent and was never read (an OpenSSL server's session
tickets, T5), so the kernel ends the connection with FIN, not RST -- an RST would drop
the tail of the stream still queued in our socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

from .channel import SocketChannel
from .errors import ChannelClosed, ExecFailed
from .waiting import Deadline

__all__ = ["READ_CHUNK", "WRITE_CHUNK", "TlsChannel", "TlsError", "TlsState"]

#: plaintext encrypted per `_write_once` (64 TLS records)
WRITE_CHUNK = 1 << 20
#: ciphertext read from the socket at once
READ_CHUNK = 256 << 10
#: recv calls at most when draining unread bytes before close
_DRAIN_READS = 64


class TlsError(ChannelClosed):
    """A TLS handshake or session failed; the message is QEMU 7.2's where it has one."""


class TlsState:
    """One established session: an `SSLObject` over two `MemoryBIO`s, used under one
    lock by any thread (the channel's and the proxy's ends share it)."""

    def __init__(self, session: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self.session = session
        self._in = incoming
        self._out = outgoing
        self._lock = threading.Lock()

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        """(cipher, protocol version, secret bits)."""
        return self.session.cipher()

    @property
    def has_ciphertext(self) -> bool:
        return self._out.pending > 0

    def feed(self, ciphertext: memoryview | bytes) -> None:
        with self._lock:
            self._in.write(ciphertext)

    def ciphertext(self) -> bytes:
        """What the session made to send, in order (b"": nothing)."""
        with self._lock:
            return self._out.read()

    def decrypt(self, view: memoryview, peer: str) -> int | None:
        """Plaintext the session holds, as many records as fit (None: it needs more
        ciphertext first; 0: close_notify)."""
        if not len(view):
            return 0
        total = 0
        with self._lock:
            while total < len(view):
                try:
                    count = self.session.read(len(view) - total, view[total:])
                except ssl.SSLWantReadError:
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return total
                except ssl.SSLError as exc:
                    raise TlsError(f"{peer}: Cannot read from TLS channel: Input/output "
                                   f"error ({_words(exc)})") from None
                if not count:
                    break
                total += count
        return total or None

    def encrypt(self, views: list[memoryview], limit: int, peer: str) -> int:
        """Encrypt up to `limit` bytes of `views` (ciphertext() has it); the count."""
        total = 0
        with self._lock:
            for view in views:
                part = view[:limit - total]
                try:
                    self.session.write(part)
                except ssl.SSLError as exc:
                    raise TlsError(f"{peer}: Cannot write to TLS channel: Input/output "
                                   f"error ({_words(exc)})") from None
                total += len(part)
                if total >= limit:
                    break
        return total


def _words(exc: ssl.SSLError) -> str:
    """GnuTLS's text where OpenSSL's reason names the same failure (QEMU 7.2 itself
    prints only io/channel-tls.c's "Cannot read from TLS channel: Input/output error",
    seen live for a corrupted record)."""
    reason = exc.reason or str(exc)
    if "BAD_RECORD_MAC" in reason or "DECRYPTION_FAILED" in reason:
        return f"Decryption has failed.: {reason}"
    return reason


class TlsChannel(SocketChannel):
    """A connected socket carrying one established TLS session (see the module doc)."""

    #: a compiled send straight from guest RAM would bypass the encryption
    send_gathered = None  # type: ignore[assignment]

    def __init__(self, sock: socket.socket, peer: str, tls: TlsState) -> None:
        super().__init__(sock, peer)
        self.tls = tls
        self._wire_lock = threading.Lock()
        self._wire_out = memoryview(b"")
        self._scratch = memoryview(bytearray(READ_CHUNK))
        self._raw_eof = False  # the peer's FIN (a half-closed socket can still send)

    @property
    def sock(self) -> socket.socket | None:  # type: ignore[override]
        """None: the socket carries ciphertext; use `raw_socket` for socket options."""
        return None

    @property
    def raw_socket(self) -> socket.socket:
        return self._sock

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        """(cipher, protocol version, secret bits) of the session."""
        return self.tls.cipher

    # -- receive -------------------------------------------------------------------------

    def _read_once(self, view: memoryview, deadline: Deadline | None) -> int:
        while True:
            count = self.tls.decrypt(view, self.peer)
            if count is not None:
                return count
            if self._raw_eof:
                return 0
            self._flush_if_free()
            got = super()._read_once(self._scratch, deadline)
            if not got:  # the BIO is not told: its session could not send any more
                self._raw_eof = True
                continue
            self.tls.feed(self._scratch[:got])

    # -- send ----------------------------------------------------------------------------

    def _write_once(self, views: list[memoryview], deadline: Deadline | None) -> int:
        total = self.tls.encrypt(views, WRITE_CHUNK, self.peer)
        self._flush(deadline)
        return total

    def _flush(self, deadline: Deadline | None) -> None:
        """Send all ciphertext made so far, in order."""
        with self._wire_lock:
            while True:
                if not len(self._wire_out):
                    data = self.tls.ciphertext()
                    if not data:
                        return
                    self._wire_out = memoryview(data)
                sent = SocketChannel._write_once(self, [self._wire_out], deadline)
                self._wire_out = self._wire_out[sent:]

    def _flush_if_free(self) -> None:
        """A read may have made ciphertext (an alert): send it unless a writer is busy
        (that writer sends it next)."""
        if self.tls.has_ciphertext and self._wire_lock.acquire(blocking=False):
            self._wire_lock.release()
            with contextlib.suppress(OSError):
                self._flush(Deadline(1.0))

    # -- close ---------------------------------------------------------------------------

    def _release(self, abandoned: bool) -> ExecFailed | None:
        """Read and drop what was never read, so that close() sends FIN, not RST."""
        with contextlib.suppress(OSError):
            for _ in range(_DRAIN_READS):
                if not self._sock.recv(READ_CHUNK, socket.MSG_DONTWAIT):
                    break
        return super()._release(abandoned)
