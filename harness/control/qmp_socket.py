"""Real QMP on a unix socket beside a peer's zmq control plane (`--qmp unix:PATH`).

Strategy: what QEMU 7.2 does with `-qmp unix:PATH,server=on,wait=off`, framed as it frames
it (docs/interop/qmp-spec.rst; monitor/qmp.c, qapi/qmp-dispatch.c), so qemu.qmp, qmp-shell
or libvirt-style tooling can drive a harness peer as if it were QEMU.  The socket listens
from startup without waiting for a client; each client gets the greeting, must negotiate
with `qmp_capabilities` (no optional capability: we offer no out-of-band execution), then
sends commands and receives every event.  Lines are written as QEMU writes them: compact
JSON with ", " and ": " separators, members in QEMU's order, ended by "\\r\\n".

Two pieces: `QmpSession` is the protocol of one client, sans-IO (bytes in; replies,
commands to dispatch and events out); `QmpSocketServer` is one thread with a selector
serving any number of clients at once.  Commands are not implemented here: each goes to
the peer's `ControlServer.call`, so it runs on the peer's serving thread through the very
handler a zmq client reaches; events arrive through `ControlServer.add_event_listener`
and are written before the reply of a command during which they were emitted.  A client
that stops reading is disconnected once 16 MiB wait for it; one read or write failure
ends only that client; the socket file is mode 0600 and removed on close.  At most
`MAX_CLIENTS` are served at once: one more is told so in one error line and closed; when
the process runs out of file descriptors (EMFILE), accepting pauses for `ACCEPT_PAUSE` s
while the clients already connected go on being served -- the thread never dies of it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness import __version__
from harness.control.address import MAX_IPC_PATH
from harness.control.errors import ControlError
from harness.control.messages import COMMAND_NOT_FOUND, GENERIC_ERROR, Error, Event, Return
from harness.control.qmp_json import JsonParseError, QmpJsonStream
from harness.control.server import ControlServer
from harness.transport.unix_mode import bind_private, is_listening

__all__ = ["QEMU_VERSION", "Dispatch", "QmpSession", "QmpSocketError", "QmpSocketServer",
           "SessionState", "parse_qmp_option", "query_version"]

log = logging.getLogger(__name__)

#: what `query-version` answers and the greeting carries: the QEMU whose protocol we speak
QEMU_VERSION: dict[str, Any] = {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                "package": f"migration-harness {__version__}"}
#: how long a command may take on the peer's serving thread before the client gets an error
COMMAND_TIMEOUT = 60.0
_MAX_PENDING = 16 << 20   # bytes waiting for a client that does not read: then it is dropped
_READ_SIZE = 65536
_CLOSE_FLUSH = 1.0        # seconds close() spends sending what clients have not yet read
_EOL = b"\r\n"            # monitor_puts turns each "\n" into "\r\n"
_NO_ID = object()
#: clients served at once; one more is refused (each costs a file descriptor)
MAX_CLIENTS = 64
#: how long accepting pauses when the process is out of file descriptors
ACCEPT_PAUSE = 0.2
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class QmpSocketError(ControlError):
    """The QMP socket could not be set up (the message names the `--qmp` value)."""


def query_version(_: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`query-version`'s answer (VersionInfo)."""
    return json.loads(json.dumps(QEMU_VERSION))  # a copy the caller may change


# ---------------------------------------------------------------------- the option
def parse_qmp_option(value: str) -> str:
    """The socket path of a `--qmp` value, checked; ValueError naming the option if bad.

    Accepts QEMU's spelling `unix:PATH[,server=on][,wait=off]` (also `server`, `nowait`):
    those are the only semantics we have.
    """
    where = f"--qmp {value!r}"
    if not value.startswith("unix:"):
        raise ValueError(f"{where}: expected unix:PATH (a unix socket to serve QMP on)")
    path, *options = value[len("unix:"):].split(",")
    for option in options:
        if option not in ("server", "server=on", "wait=off", "nowait"):
            raise ValueError(f"{where}: unsupported option {option!r} (the socket always "
                             f"listens as server=on,wait=off)")
    if not path:
        raise ValueError(f"{where}: the socket path is empty")
    size = len(os.fsencode(path))
    if size > MAX_IPC_PATH:
        raise ValueError(f"{where}: the socket path is {size} bytes, unix sockets allow "
                         f"{MAX_IPC_PATH}; use a shorter path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{where}: directory {directory} does not exist")
    return path


def _listen(path: str) -> tuple[socket.socket, int]:
    """A listening unix socket at `path` and its inode; a stale socket file is replaced."""
    where = f"--qmp unix:{path}"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise QmpSocketError(f"{where}: {path} exists and is not a socket")
        if is_listening(path):
            raise QmpSocketError(f"{where}: a server already listens on {path}")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        bind_private(sock, path, 16)
        sock.setblocking(False)
        return sock, os.stat(path).st_ino
    except OSError as err:
        sock.close()
        raise QmpSocketError(f"{where}: cannot listen: {err.strerror or err}") from None


# ---------------------------------------------------------------------- the protocol
class SessionState(enum.Enum):
    NEGOTIATING = "capabilities-negotiation"  # only qmp_capabilities; no events
    COMMAND = "command"                       # every command; events delivered


@dataclass(frozen=True)
class Dispatch:
    """A command for the peer's dispatcher; `id` is the request's (any JSON), or _NO_ID."""

    command: str
    arguments: dict[str, Any]
    id: Any = _NO_ID


def _line(members: dict[str, Any]) -> bytes:
    """One QMP output line: QEMU's separators, non-ASCII as \\u escapes, CR LF."""
    return json.dumps(members).encode("ascii") + _EOL


def _error_line(error_class: str, desc: str, msg_id: Any = _NO_ID) -> bytes:
    error = {"class": error_class, "desc": desc}
    return _line({"error": error} if msg_id is _NO_ID else {"id": msg_id, "error": error})


class QmpSession:
    """One client's QMP conversation; no I/O.  `receive_data`, then `next_request` until
    None: each is reply bytes to send, or a `Dispatch` whose result goes to `reply`."""

    def __init__(self, version: Mapping[str, Any] | None = None) -> None:
        self.state = SessionState.NEGOTIATING
        self._version = dict(version or QEMU_VERSION)
        self._stream = QmpJsonStream()
        self._pending: deque[Any] = deque()

    def greeting(self) -> bytes:
        """monitor/qmp.c: qmp_greeting (no "oob": we have no out-of-band execution)."""
        return _line({"QMP": {"version": self._version, "capabilities": []}})

    def receive_data(self, data: bytes) -> None:
        self._pending.extend(self._stream.feed(data))

    def next_request(self) -> bytes | Dispatch | None:
        """The next thing to do for the input so far, in order; None when none is left."""
        if not self._pending:
            return None
        message = self._pending.popleft()
        if isinstance(message, JsonParseError):
            return _error_line(GENERIC_ERROR, message.desc)
        return self._request(message)

    def reply(self, request: Dispatch, result: Return | Error) -> bytes:
        """The reply line of a dispatched command, its id echoed."""
        if isinstance(result, Error):
            return _error_line(result.error_class, result.desc, request.id)
        members: dict[str, Any] = {"return": result.value}
        if request.id is not _NO_ID:
            members["id"] = request.id
        try:
            return _line(members)
        except (TypeError, ValueError) as err:  # a handler's bug must not end the session
            return _error_line(GENERIC_ERROR, f"the result is not JSON: {err}", request.id)

    def event(self, event: Event) -> bytes | None:
        """The event's line for this client; None before negotiation (QEMU sends none)."""
        if self.state is not SessionState.COMMAND:
            return None
        seconds = int(event.timestamp)
        micro = min(999_999, round((event.timestamp - seconds) * 1e6))
        members: dict[str, Any] = {"timestamp": {"seconds": seconds, "microseconds": micro},
                                   "event": event.name}
        if event.data:  # an event without members has no "data" (STOP, RESUME)
            members["data"] = event.data
        return _line(members)

    def _request(self, message: Any) -> bytes | Dispatch:
        # qapi/qmp-dispatch.c: qmp_dispatch / qmp_dispatch_check_obj
        if not isinstance(message, dict):
            return _error_line(GENERIC_ERROR, "QMP input must be a JSON object")
        msg_id = message.get("id", _NO_ID)
        problem = _unechoable(msg_id)  # QEMU's writer is C: it would echo it; ours cannot
        if problem:
            return _error_line(GENERIC_ERROR, f"QMP input member 'id' {problem}")
        problem = _check_request(message)
        if problem:
            return _error_line(GENERIC_ERROR, problem, msg_id)
        command, arguments = message["execute"], message.get("arguments", {})
        if command == "qmp_capabilities":
            return self._capabilities(arguments, msg_id)
        if self.state is SessionState.NEGOTIATING:
            # monitor/qmp.c: monitor_qmp_dispatch's "more useful error message"
            return _error_line(COMMAND_NOT_FOUND,
                               "Expecting capabilities negotiation with 'qmp_capabilities'",
                               msg_id)
        return Dispatch(command, arguments, msg_id)

    def _capabilities(self, arguments: dict[str, Any], msg_id: Any) -> bytes:
        # monitor/qmp-cmds-control.c: qmp_qmp_capabilities
        if self.state is SessionState.COMMAND:
            return _error_line(COMMAND_NOT_FOUND,
                               "Capabilities negotiation is already complete, command ignored",
                               msg_id)
        problem = _check_enable(arguments)
        if problem:
            return _error_line(GENERIC_ERROR, problem, msg_id)
        self.state = SessionState.COMMAND
        return _line({"return": {}} if msg_id is _NO_ID else {"return": {}, "id": msg_id})


def _unechoable(msg_id: Any) -> str:
    """Why `msg_id` cannot be echoed as JSON, or ""."""
    if msg_id is _NO_ID:
        return ""
    try:
        json.dumps(msg_id, allow_nan=False)
    except ValueError as err:  # a number beyond a double (5000 digits) is inf: not JSON
        if "out of range" in str(err).lower():
            return "is a number out of range"
        return "is nested too deeply"
    except (TypeError, RecursionError):
        return "is nested too deeply"
    return ""


def _check_request(message: dict[str, Any]) -> str:
    """qmp_dispatch_check_obj's complaint about a request object, or ""."""
    for name, value in message.items():
        if name == "execute":
            if not isinstance(value, str):
                return "QMP input member 'execute' must be a string"
        elif name == "arguments":
            if not isinstance(value, dict):
                return "QMP input member 'arguments' must be an object"
        elif name != "id":
            return f"QMP input member '{name}' is unexpected"
    if "execute" not in message:
        return "QMP input lacks member 'execute'"
    return ""


def _check_enable(arguments: dict[str, Any]) -> str:
    """What is wrong with qmp_capabilities' arguments (we offer no capability), or ""."""
    for name in arguments:
        if name != "enable":
            return f"Parameter '{name}' is unexpected"
    enable = arguments.get("enable", [])
    if not isinstance(enable, list):
        return "Invalid parameter type for 'enable', expected: array"
    for n, capability in enumerate(enable):
        if not isinstance(capability, str):
            return f"Invalid parameter type for 'enable[{n}]', expected: string"
        if capability != "oob":
            return f"Parameter 'enable[{n}]' does not accept value '{capability}'"
    return f"Capability {', '.join(enable)} not available" if enable else ""


# ---------------------------------------------------------------------- the server
class ServerState(enum.Enum):
    LISTENING = "listening"  # bound (clients wait in the backlog): start, close
    SERVING = "serving"      # the thread runs: close
    CLOSED = "closed"        # close() done: close (a no-op)


@dataclass
class _Client:
    sock: socket.socket
    session: QmpSession
    out: bytearray
    writing: bool = False  # registered for EVENT_WRITE


class QmpSocketServer:
    """QMP on a unix socket for the peer whose commands `control` dispatches.

    Binds at once (QmpSocketError if it cannot); clients are served once `start()` ran.
    """

    def __init__(self, path: str, control: ControlServer, *,
                 command_timeout: float = COMMAND_TIMEOUT) -> None:
        self.path = path
        self._control = control
        self._timeout = command_timeout
        self._listener, self._inode = _listen(path)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()  # guards _events and state against the listener
        self._events: deque[Event] = deque()
        self._stop = threading.Event()
        self._accept_paused_until: float | None = None  # out of fds: not accepting
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # what ended the thread, if not close()
        self.state = ServerState.LISTENING
        control.add_event_listener(self._on_event)
        log.debug("QMP socket %s listening", path)

    def start(self) -> None:
        """Serve clients from a thread of our own.  LISTENING only."""
        if self.state is not ServerState.LISTENING:
            raise QmpSocketError(f"QMP socket {self.path}: start() when {self.state.value}")
        self.state = ServerState.SERVING
        self._thread = threading.Thread(target=self._serve, name="qmp-socket", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Send what clients were owed (within about a second), close every connection
        and the socket, remove the socket file.  Any state; idempotent."""
        with self._lock:
            if self.state is ServerState.CLOSED:
                return
            serving, self.state = self.state is ServerState.SERVING, ServerState.CLOSED
        self._stop.set()
        self._wake()  # the pipe is closed only by _release, below
        if serving and self._thread is not None:
            self._thread.join(_CLOSE_FLUSH + 5.0)
        if not serving or (self._thread is not None and not self._thread.is_alive()):
            self._release()
        else:
            log.error("QMP socket %s: the serving thread did not stop", self.path)

    def __repr__(self) -> str:
        return f"<QmpSocketServer {self.path} {self.state.value} {len(self._clients)} clients>"

    # ------------------------------------------------------------------ events
    def _on_event(self, event: Event) -> None:
        """ControlServer's listener: runs in the emitting thread, only queues."""
        with self._lock:  # so the pipe cannot be closed (and its fd reused) meanwhile
            if self.state is ServerState.CLOSED:
                return
            self._events.append(event)
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake-up is pending
            os.write(self._wake_w, b"!")

    def _deliver_events(self) -> None:
        with self._lock:
            if not self._events:
                return
            batch, self._events = self._events, deque()
        for event in batch:
            for client in list(self._clients.values()):
                line = client.session.event(event)
                if line is not None:
                    self._queue(client, line)

    # ------------------------------------------------------------------ the thread
    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                paused = self._accept_paused_until
                timeout = 1.0 if paused is None else max(0.0, paused - time.monotonic())
                for key, mask in self._selector.select(timeout=timeout):
                    self._ready(key, mask)
                self._resume_accepting()
                self._deliver_events()
                self._update_interest()
        except Exception as exc:  # noqa: BLE001 -- logged once, kept for whoever looks
            self.failure = exc
            log.error("QMP socket %s stopped: %s: %s", self.path, type(exc).__name__, exc)
        finally:
            self._deliver_events()
            self._flush_all(time.monotonic() + _CLOSE_FLUSH)

    def _ready(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.data == "accept":
            self._accept()
        elif key.data == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        else:
            client = self._clients.get(key.fd)
            if client is None:
                return
            if mask & selectors.EVENT_READ:
                try:
                    self._read(client)
                except Exception as exc:  # noqa: BLE001 -- a bug must end one client only
                    log.error("QMP socket %s: client %d: %s: %s", self.path, key.fd,
                              type(exc).__name__, exc)
                    self._drop(client, "failed")
            if mask & selectors.EVENT_WRITE and key.fd in self._clients:
                self._write(client)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno not in _OUT_OF_FDS:
                    raise
                return self._pause_accepting(err)
            if len(self._clients) >= MAX_CLIENTS:
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    sock.send(_error_line(GENERIC_ERROR, f"too many QMP clients: "
                                                         f"{MAX_CLIENTS} are connected"))
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, QmpSession(), bytearray())
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, "client")
            self._queue(client, client.session.greeting())
            self._write(client)
            log.debug("QMP socket %s: client %d connected", self.path, sock.fileno())

    def _pause_accepting(self, err: OSError) -> None:
        if self._accept_paused_until is None:
            log.warning("QMP socket %s: cannot accept a client (%s): not accepting for "
                        "%.1f s", self.path, err.strerror or err, ACCEPT_PAUSE)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
        self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE

    def _resume_accepting(self) -> None:
        if self._accept_paused_until is not None and \
                time.monotonic() >= self._accept_paused_until:
            self._accept_paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ, "accept")

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            return self._drop(client, f"read failed: {err}")
        if not data:
            return self._drop(client, "disconnected")
        client.session.receive_data(data)
        while (request := client.session.next_request()) is not None:
            if isinstance(request, Dispatch):
                result = self._control.call(request.command, request.arguments, self._timeout)
                self._deliver_events()  # emitted while it ran: before its reply, as QEMU
                request = client.session.reply(request, result)
            if not self._queue(client, request):
                return
        self._write(client)

    def _queue(self, client: _Client, data: bytes) -> bool:
        client.out += data
        if len(client.out) > _MAX_PENDING:
            self._drop(client, f"not reading: {len(client.out)} bytes wait for it")
            return False
        return True

    def _write(self, client: _Client) -> None:
        if not client.out:
            return
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            return self._drop(client, f"write failed: {err}")
        del client.out[:sent]

    def _update_interest(self) -> None:
        for client in self._clients.values():
            wants = bool(client.out)
            if wants != client.writing:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
                self._selector.modify(client.sock, events, "client")
                client.writing = wants

    def _drop(self, client: _Client, why: str) -> None:
        fd = client.sock.fileno()
        log.info("QMP socket %s: client %d %s; closing it", self.path, fd, why)
        self._clients.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        client.sock.close()

    def _flush_all(self, deadline: float) -> None:
        """Send what each client is owed, blocking until `deadline` at most."""
        for client in list(self._clients.values()):
            left = deadline - time.monotonic()
            if not client.out or left <= 0:
                continue
            try:
                client.sock.settimeout(left)
                client.sock.sendall(client.out)
            except OSError as err:
                log.info("QMP socket %s: could not finish a reply: %s", self.path, err)

    def _release(self) -> None:
        for client in list(self._clients.values()):
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
            client.sock.close()
        self._clients.clear()
        self._selector.close()
        self._listener.close()
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        with contextlib.suppress(OSError):  # remove it unless someone replaced it
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        log.debug("QMP socket %s closed", self.path)
