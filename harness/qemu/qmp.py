"""A small synchronous QMP client, and the QMP chores tests need (migration polling, dumps).

Strategy: QMP is newline-delimited JSON over a unix socket (QEMU's `docs/interop/qmp-spec`):
a greeting, then `qmp_capabilities`, then one `{"execute", "arguments", "id"}` per
command, answered by `{"return"|"error", "id"}`; asynchronous `{"event", ...}` messages
may arrive at any time.  The client is blocking and single-threaded on purpose: tests
issue one command at a time, so there is nothing to multiplex.  Every read runs against a
deadline (the socket timeout is the time left), so no call can hang; events read while
waiting for a reply are queued in `events`; replies are matched by `id`, so the late
answer to a command that timed out is dropped instead of answering the next one.  A
closed socket (QEMU exited) is `QMPError("ConnectionClosed", ...)`.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from harness.errors import ControlFailure

__all__ = ["QMPClient", "QMPError", "pmemsave", "read_phys", "wait_migration"]

_READ_CHUNK = 65536


class QMPError(ControlFailure):
    """A QMP error reply (`error_class` as QEMU names it), or a transport failure.

    Transport failures use the classes "ConnectionClosed", "Timeout" and "ProtocolError".
    """

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(f"{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc


class QMPClient:
    """One QMP session over a connected unix stream socket."""

    def __init__(self, sock: socket.socket, greeting_timeout: float = 10.0) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.eof = False  # QEMU closed the socket (take_available saw it)
        self.greeting: dict[str, Any] = self._read_greeting(greeting_timeout)

    @classmethod
    def connect(cls, path: str | os.PathLike[str], timeout: float = 10.0) -> QMPClient:
        """Connect to QEMU's QMP socket at `path` and read the greeting."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            return cls(sock, timeout)
        except BaseException:
            sock.close()
            raise

    # ------------------------------------------------------------------ session
    def negotiate(self, timeout: float = 10.0) -> None:
        """Leave capabilities-negotiation mode (no optional capabilities)."""
        self.execute("qmp_capabilities", timeout=timeout)

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 10.0) -> Any:
        """Run one command; its `return` value, or QMPError(class, desc)."""
        msg_id = next(self._ids)
        request: dict[str, Any] = {"execute": command, "id": msg_id}
        if arguments is not None:
            request["arguments"] = arguments
        deadline = time.monotonic() + timeout
        self._send(request, command)
        while True:
            reply = self._read_message(deadline, f"reply to {command!r}")
            if "event" in reply:
                self.events.append(reply)
            elif reply.get("id") == msg_id:
                return _result(reply)
            # else: a late reply to an earlier command that timed out; drop it

    def hmp(self, command_line: str, timeout: float = 10.0) -> str:
        """Run a human-monitor command (e.g. "xp /8xb 0x10000"); its text output."""
        out = self.execute("human-monitor-command", {"command-line": command_line}, timeout)
        return str(out)

    def get_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The oldest queued event called `name`, else the next one to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("event") == name:
                    return self.events.pop(i)
            message = self._read_message(deadline, f"event {name}")
            if "event" in message:
                self.events.append(message)

    def fileno(self) -> int:
        """The socket's descriptor, to wait on with a poller (readable: events or EOF)."""
        return self._sock.fileno()

    def pending_line(self) -> bool:
        """Whether a whole message already sits in the buffer (read, not yet parsed)."""
        return b"\n" in self._buf

    def take_available(self) -> list[dict[str, Any]]:
        """Read what QEMU sent without waiting; the events among it (late replies are
        dropped).  Marks `eof` when QEMU closed the socket."""
        previous = self._sock.gettimeout()
        self._sock.settimeout(0.0)  # (a socket with a timeout would wait for data first)
        try:
            self._read_what_arrived()
        finally:
            self._sock.settimeout(previous)  # `_send` (sendall) must block as before
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "event" in message:
                self.events.append(message)
        events, self.events[:] = list(self.events), []
        return events

    def _read_what_arrived(self) -> None:
        while not self.eof:
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self._buf += chunk

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ wire
    def _read_greeting(self, timeout: float) -> dict[str, Any]:
        greeting = self._read_message(time.monotonic() + timeout, "greeting")
        if "QMP" not in greeting:
            raise QMPError("ProtocolError", f"expected the QMP greeting, got {greeting!r}")
        return greeting

    def _send(self, request: dict[str, Any], what: str) -> None:
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise QMPError("ConnectionClosed", f"sending {what!r}: {exc}") from exc

    def _read_message(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        line = self._read_line(deadline, waiting_for)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise QMPError("ProtocolError", f"not JSON: {line[:200]!r}") from exc
        if not isinstance(message, dict):
            raise QMPError("ProtocolError", f"not a JSON object: {line[:200]!r}")
        return message

    def _read_line(self, deadline: float, waiting_for: str) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            self._fill(deadline, waiting_for)
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        return line

    def _fill(self, deadline: float, waiting_for: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise QMPError("Timeout", f"no {waiting_for} from QEMU in time")
        self._sock.settimeout(left)
        try:
            chunk = self._sock.recv(_READ_CHUNK)
        except TimeoutError as exc:
            raise QMPError("Timeout", f"no {waiting_for} from QEMU in time") from exc
        except OSError as exc:
            raise QMPError("ConnectionClosed", f"waiting for {waiting_for}: {exc}") from exc
        if not chunk:
            raise QMPError("ConnectionClosed", f"QEMU closed QMP while waiting for {waiting_for}")
        self._buf += chunk


def _result(reply: dict[str, Any]) -> Any:
    if "error" in reply:
        error = reply["error"]
        raise QMPError(str(error.get("class", "GenericError")), str(error.get("desc", "")))
    if "return" not in reply:
        raise QMPError("ProtocolError", f"reply without return or error: {reply!r}")
    return reply["return"]


# ---------------------------------------------------------------------- chores
def wait_migration(qmp: QMPClient, done: Iterable[str] = ("completed", "failed", "cancelled"),
                   timeout: float = 30.0, interval: float = 0.02) -> dict[str, Any]:
    """Poll `query-migrate` (source or destination) until its status is one of `done`."""
    finals = frozenset(done)
    deadline = time.monotonic() + timeout
    while True:
        left = max(deadline - time.monotonic(), 0.001)
        info: dict[str, Any] = qmp.execute("query-migrate", timeout=min(left, 10.0))
        if info.get("status") in finals:
            return info
        if time.monotonic() >= deadline:
            raise QMPError("Timeout", f"migration status still {info.get('status')!r} after "
                                      f"{timeout}s (waiting for one of {sorted(finals)})")
        time.sleep(min(interval, max(deadline - time.monotonic(), 0)))


def pmemsave(qmp: QMPClient, addr: int, size: int, path: str | os.PathLike[str],
             timeout: float = 30.0) -> None:
    """Dump guest-physical memory [addr, addr+size) to `path` (written by QEMU itself)."""
    filename = os.path.abspath(os.fspath(path))  # QEMU resolves relative to its own cwd
    qmp.execute("pmemsave", {"val": addr, "size": size, "filename": filename}, timeout)


def read_phys(qmp: QMPClient, addr: int, size: int, workdir: str | os.PathLike[str],
              timeout: float = 30.0) -> bytes:
    """Guest-physical memory [addr, addr+size) as bytes, through a pmemsave temp file."""
    fd, name = tempfile.mkstemp(prefix="pmem-", suffix=".bin", dir=os.fspath(workdir))
    os.close(fd)
    try:
        pmemsave(qmp, addr, size, name, timeout)
        data = Path(name).read_bytes()
    finally:
        os.unlink(name)
    if len(data) != size:
        raise QMPError("ProtocolError", f"pmemsave wrote {len(data)} bytes, expected {size}")
    return data
