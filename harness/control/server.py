"""The control server inside each peer process: QMP-shaped commands and events over zmq.

Strategy: one zmq ROUTER, touched only by the thread that serves it (`serve_once` from a
peer's own loop, or `serve_forever`).  A client is known by its zmq routing id from its
first message on; it gets our `Hello` greeting before its first reply, and every event
from then on.  Handlers are plain functions `handler(arguments) -> result`; raising
`CommandError` answers with that QMP error, any other exception with a GenericError (logged
as one line, and the server keeps serving).

`emit` may be called from any thread: it encodes the event in the caller's thread (so a
bad payload fails where it was made), appends it to a queue and, unless one is already on
its way, sends an empty wake-up message to our own ROUTER from an inproc DEALER (under a
lock: the only socket other threads touch).  So the serving thread waits on one socket, a
blocking `recv` with a timeout, the cheapest wait zmq has, and a peer with its own poller
polls `socket`.  Queued events go to every client in emission order, and are always
flushed before a reply, so an event a handler emits precedes its return, as in QEMU.

Bounded and private: the ROUTER takes messages of `MAX_MESSAGE` bytes at most (a bigger
one ends that client's connection, never grows the process), an ipc:// socket file is
mode 0600, and with `keys` (`curve.ServerKeys`) it is a CURVE server whose ZAP handler
accepts only the authorized client keys, as an agent's.

Sends never block: the ROUTER is in mandatory mode, a client whose queue is full loses
that message (counted in `dropped`, logged on the first loss), a client that is gone is
forgotten.

Other front ends (the QMP unix socket, `harness.control.qmp_socket`) share the one
dispatch path: `call` hands a command over from their thread through the same queue and
wake-up as events, the serving thread runs it, and `add_event_listener` gives them every
event in the order the zmq clients get it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import zmq

from harness import __version__
from harness.control.address import check_address, ipc_path, new_ipc_address
from harness.control.curve import ServerKeys, make_curve_server, start_authenticator
from harness.control.errors import CommandError, ControlError, ProtocolMessageError
from harness.control.messages import (
    COMMAND_NOT_FOUND,
    GENERIC_ERROR,
    MAX_MESSAGE,
    Error,
    Event,
    Execute,
    Hello,
    Return,
    encode,
    from_frames,
    to_frames,
)
from harness.transport.unix_mode import private_umask

__all__ = ["BlobResult", "ControlServer", "Handler", "ServerState"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any]
EventListener = Callable[[Event], None]

#: messages queued per client before we drop (events are small; a stalled client must not
#: make the peer block or grow without bound)
_SEND_HWM = 100_000
#: requests handled per `serve_once` call before queued events get their turn again
_BATCH = 256
#: routing id of the inproc DEALER that wakes the serving thread for queued events
_WAKE_ID = b"mh-control-wake"


class ServerState(enum.Enum):
    OPEN = "open"      # bound: serve_once, serve_forever, emit, register, close
    CLOSED = "closed"  # close() done: only close() (a no-op) and emit() (dropped) accepted


@dataclass
class _Call:
    """A command handed over by `ControlServer.call`: run on the serving thread."""

    request: Execute
    done: threading.Event = field(default_factory=threading.Event)
    reply: Return | Error | None = None

    def answer(self, reply: Return | Error) -> None:
        self.reply = reply
        self.done.set()


@dataclass(frozen=True)
class BlobResult:
    """What a handler returns to send bulk bytes beside its JSON `value`."""

    value: Any
    blob: bytes | bytearray | memoryview


class ControlServer:
    """A peer's control endpoint.  All methods but `emit`, `wakeup`, `call` and
    `add_event_listener` belong to the serving thread.

    `address`: `ipc://PATH` (`ipc://*`: a fresh short path), `tcp://HOST:PORT` (port `*` or
    0: any free port); `.address` is the endpoint actually bound.
    """

    def __init__(self, address: str, *, role: str = "peer",
                 context: zmq.Context[Any] | None = None, keys: ServerKeys | None = None
                 ) -> None:
        if address == "ipc://*":  # zmq's own wildcard makes a directory in the cwd
            address = new_ipc_address(role)
        check_address(address)
        self.role = role
        self._auth = (start_authenticator(context or zmq.Context.instance(), keys)
                      if keys is not None else None)
        self._router = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        self._configure_and_bind(address, keys)
        self.address: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)  # before inproc
        self._ipc_path = ipc_path(self.address)
        self._wake_lock = threading.Lock()  # guards _waker, _events, _wake_pending, state
        self._waker = self._connect_waker(context)
        self._wake_pending = False
        self._events: deque[bytes] = deque()
        self._calls: deque[_Call] = deque()         # from `call`, guarded by _wake_lock
        self._listeners: list[EventListener] = []
        self._rcvtimeo = -1
        self._clients: dict[bytes, None] = {}  # routing ids in order of first contact
        self.dropped: dict[bytes, int] = {}     # messages lost per client (queue full)
        self._greeting = encode(Hello(role, os.getpid(), __version__))
        self._handlers: dict[str, Handler] = {
            "qmp_capabilities": lambda arguments: {},
            "query-commands": lambda arguments: [{"name": n} for n in sorted(self._handlers)],
        }
        self.state = ServerState.OPEN
        log.debug("control server %s (%s) bound", self.address, role)

    def _configure_and_bind(self, address: str, keys: ServerKeys | None) -> None:
        sock = self._router
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable -> EHOSTUNREACH, not silence
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a client reconnecting keeps its session
        sock.setsockopt(zmq.SNDHWM, _SEND_HWM)
        sock.setsockopt(zmq.RCVHWM, _SEND_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        if keys is not None:
            make_curve_server(sock, keys)
        try:
            _refuse_live_ipc(address)
            with private_umask(ipc_path(address)):
                sock.bind(address)
        except (zmq.ZMQError, OSError) as exc:
            sock.close(linger=0)
            self._stop_auth()
            raise ControlError(f"cannot bind the control server to {address}: {exc}") from None

    def _connect_waker(self, context: zmq.Context[Any] | None) -> zmq.Socket[Any]:
        endpoint = f"inproc://mh-control-wake-{id(self):x}"
        self._router.bind(endpoint)
        waker = (context or zmq.Context.instance()).socket(zmq.DEALER)
        waker.setsockopt(zmq.LINGER, 0)
        waker.setsockopt(zmq.ROUTING_ID, _WAKE_ID)
        waker.connect(endpoint)
        return waker

    # ------------------------------------------------------------------ public API
    @property
    def socket(self) -> zmq.Socket[Any]:
        """The ROUTER: a peer with its own zmq poller polls it for POLLIN, then serve_once(0)."""
        return self._router

    @property
    def clients(self) -> list[bytes]:
        """Routing ids of the clients that have talked to us (they receive events)."""
        return list(self._clients)

    def register(self, command: str, handler: Handler) -> None:
        """Answer `command` with `handler(arguments)`.  OPEN only; one handler per name.

        Handlers run on the serving thread: one that takes long (a migration) should start
        the work elsewhere and return, reporting progress with `emit`, as QEMU's do.
        """
        self._require_open("register")
        if command in self._handlers:
            raise ValueError(f"command {command!r} already has a handler")
        self._handlers[command] = handler

    def emit(self, name: str, data: Mapping[str, Any] | None = None,
             timestamp: float | None = None) -> None:
        """Queue event `name` for every client; thread-safe, never blocks.

        `timestamp` (seconds since the epoch) is when it happened, if not now: a relayed
        event keeps its source's (QEMU's, harness/qemu/served.py).

        Raises ProtocolMessageError (in the caller's thread) if `data` is not JSON.
        After close() the event is dropped.
        """
        event = Event(name, dict(data or {}), time.time() if timestamp is None else timestamp)
        frame = encode(event)
        with self._wake_lock:
            if self.state is ServerState.CLOSED:
                log.debug("control server %s closed: event %s dropped", self.address, name)
                return
            self._events.append(frame)
            for listener in self._listeners:  # under the lock: the zmq clients' order
                listener(event)
            self._wake_locked()

    def add_event_listener(self, listener: EventListener) -> None:
        """Also hand every event emitted from now on to `listener`, in emission order.

        It runs in the emitting thread under the server's lock: it must only queue the
        event and return (never block, never call back into this server).  OPEN only.
        """
        with self._wake_lock:
            self._require_open("add_event_listener")
            self._listeners.append(listener)

    def call(self, command: str, arguments: Mapping[str, Any], timeout: float) -> Return | Error:
        """Run `command` as if a zmq client had sent it, from any other thread.

        The request is queued and the serving thread woken; it runs the handler (handlers
        always run there) and this returns its reply, or a GenericError when the server
        closed or did not answer within `timeout` s.  The Return's `id` is meaningless.
        """
        pending = _Call(Execute(command, dict(arguments), 0))
        with self._wake_lock:
            if self.state is ServerState.CLOSED:
                return Error(GENERIC_ERROR, f"the peer is shutting down: {command} not run", None)
            self._calls.append(pending)
            self._wake_locked()
        if not pending.done.wait(timeout):
            return Error(GENERIC_ERROR, f"the peer did not run {command} within {timeout:g} s",
                         None)
        assert pending.reply is not None
        return pending.reply

    def wakeup(self) -> None:
        """Make the serving thread's wait return now (e.g. after setting serve_forever's
        `stop`).  Thread-safe; a no-op after close()."""
        with self._wake_lock:
            if self.state is ServerState.OPEN:
                self._wake_locked()

    def _wake_locked(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(zmq.Again):  # cannot fill: one wake-up at a time
                self._waker.send(b"", zmq.NOBLOCK)

    def serve_once(self, timeout: float) -> bool:
        """Wait up to `timeout` s for requests or events, handle all that arrived.

        True if anything was handled.  OPEN only.
        """
        self._require_open("serve_once")
        frames = self._recv(timeout)
        handled = 0
        while frames is not None and handled < _BATCH:
            handled += self._serve_frames(frames[0], frames[1:])
            frames = self._recv(0) if self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN else None
        handled += self._run_calls()
        return self._flush_events() > 0 or handled > 0

    def serve_forever(self, stop: threading.Event, poll_interval: float = 0.05) -> None:
        """Serve until `stop` is set (noticed within `poll_interval` s, or at once if the
        setter calls `wakeup()`).  OPEN only.

        An unexpected failure of the server itself is logged once and re-raised.
        """
        try:
            while not stop.is_set():
                self.serve_once(poll_interval)
        except Exception as exc:
            log.error("control server %s stopped: %s: %s", self.address, type(exc).__name__, exc)
            raise

    def close(self) -> None:
        """Close the socket (linger 0), remove the ipc socket file.  Any state; idempotent.

        Call it from the serving thread, or once the serving loop has returned.
        """
        with self._wake_lock:
            if self.state is ServerState.CLOSED:
                return
            self.state = ServerState.CLOSED
            self._waker.close(linger=0)
            calls, self._calls = self._calls, deque()
        for pending in calls:
            pending.answer(Error(GENERIC_ERROR, f"the peer is shutting down: "
                                                f"{pending.request.command} not run", None))
        self._router.close(linger=0)
        self._stop_auth()
        if self._ipc_path is not None:
            try:
                os.unlink(self._ipc_path)
            except FileNotFoundError:
                pass
        log.debug("control server %s closed", self.address)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ControlServer {self.address} {self.role} {self.state.value}>"

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # ------------------------------------------------------------------ requests
    def _require_open(self, method: str) -> None:
        if self.state is not ServerState.OPEN:
            raise ControlError(f"ControlServer.{method}: server {self.address} is "
                               f"{self.state.value}")

    def _recv(self, timeout: float) -> list[bytes] | None:
        """One message from the ROUTER, waiting up to `timeout` s; None if none came."""
        ms = max(0, round(timeout * 1000))
        if ms != self._rcvtimeo:
            self._router.setsockopt(zmq.RCVTIMEO, ms)
            self._rcvtimeo = ms
        try:
            return self._router.recv_multipart()
        except zmq.Again:
            return None

    def _serve_frames(self, sender: bytes, frames: list[bytes]) -> int:
        if sender == _WAKE_ID:
            with self._wake_lock:
                self._wake_pending = False  # events queued from now on send a new wake-up
            return 0
        self._serve_request(sender, frames)
        return 1

    def _serve_request(self, client: bytes, frames: list[bytes]) -> None:
        if client not in self._clients:
            self._clients[client] = None
            self._send(client, [self._greeting])
        reply = self._answer(frames)
        self._flush_events()  # events a handler emitted go out before its return
        try:
            out = to_frames(reply)
        except ProtocolMessageError as exc:
            log.error("control server %s: reply %s is not JSON: %s", self.address, reply.id, exc)
            out = to_frames(Error(GENERIC_ERROR, f"the result is not JSON: {exc}", reply.id))
        self._send(client, out)

    def _answer(self, frames: list[bytes]) -> Return | Error:
        try:
            request = from_frames(frames)
        except ProtocolMessageError as exc:
            log.warning("control server %s: bad request: %s", self.address, exc)
            return Error(GENERIC_ERROR, str(exc), None)
        if not isinstance(request, Execute):
            msg_id = getattr(request, "id", None)
            return Error(GENERIC_ERROR, f"Expected 'execute', got a {request.kind.value} "
                                        f"message", msg_id if isinstance(msg_id, int) else None)
        return self._dispatch(request)

    def _dispatch(self, request: Execute) -> Return | Error:
        handler = self._handlers.get(request.command)
        if handler is None:
            # qapi/qmp-dispatch.c: qmp_dispatch
            return Error(COMMAND_NOT_FOUND, f"The command {request.command} has not been found",
                         request.id)
        try:
            result = handler(dict(request.arguments))
        except CommandError as exc:
            return Error(exc.error_class, exc.desc, request.id)
        except Exception as exc:  # noqa: BLE001 -- any handler bug becomes a GenericError
            log.error("control server %s: command %s failed at %s: %s: %s", self.address,
                      request.command, _where(exc), type(exc).__name__, exc)
            return Error(GENERIC_ERROR, f"{type(exc).__name__}: {exc}", request.id)
        if isinstance(result, BlobResult):
            blob = result.blob if isinstance(result.blob, bytes) else bytes(result.blob)
            return Return(result.value, request.id, blob)
        return Return(result, request.id)

    def _run_calls(self) -> int:
        with self._wake_lock:
            if not self._calls:
                return 0
            batch, self._calls = self._calls, deque()
        for pending in batch:
            pending.answer(self._dispatch(pending.request))
        return len(batch)

    # ------------------------------------------------------------------ sending
    def _flush_events(self) -> int:
        with self._wake_lock:
            if not self._events:
                return 0
            batch, self._events = self._events, deque()
        for frame in batch:
            for client in list(self._clients):
                self._send(client, [frame])
        return len(batch)

    def _send(self, client: bytes, frames: list[bytes]) -> None:
        try:
            self._router.send_multipart([client, *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped[client] = self.dropped.get(client, 0) + 1
            if self.dropped[client] == 1:
                log.warning("control server %s: client %r is not reading; dropping messages "
                            "(counted in .dropped)", self.address, client)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            log.info("control server %s: client %r is gone; forgetting it", self.address, client)
            self._clients.pop(client, None)


def _refuse_live_ipc(address: str) -> None:
    """zmq silently unlinks an existing ipc socket file when it binds: fine for the stale
    file of a killed peer, wrong for a live one, so look first (a connect succeeds only if
    someone is listening)."""
    path = ipc_path(address)
    if path is None or not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # ECONNREFUSED: stale, zmq may take it over
    raise OSError(errno.EADDRINUSE, "a live server already listens there")


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
