"""The runner's end of a peer's control plane: a zmq DEALER speaking QMP-shaped JSON.

Strategy: single-threaded and synchronous, like `harness.qemu.qmp`, but built so one
coordinator loop can own many clients: `register(poller)` (or `socket`) for its poller,
`handle_readable()` to take in whatever arrived; nothing in here starts a thread.
`execute` sends one command and waits for the reply with that id, always against a
deadline; events that arrive meanwhile are queued for `events()` / `wait_event()`, and a
late reply to a command that already timed out is dropped, never mistaken for the next one.

A dead peer is an ordinary condition, not a hang: a zmq socket monitor reports the
connection's CONNECTED / DISCONNECTED, so a peer process that exits or is killed while we
wait becomes `PeerGone` within 50 ms, and every later call fails at once (a stopped peer,
whose socket stays open, becomes `ControlTimeout` at the deadline).  The runner, which
owns the process handles, may also declare a peer dead with `mark_peer_gone`.  Waiting is
a blocking recv on the data socket in 50 ms slices, the monitor read between them: about
25 us cheaper per command than polling both sockets.  Our routing id is fixed, so when zmq
reconnects after a network blip the peer still knows us and keeps sending us events.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Self

import zmq
from zmq.utils.monitor import recv_monitor_message

from harness.control.address import check_address
from harness.control.errors import (
    CommandError,
    ControlError,
    ControlTimeout,
    PeerGone,
    ProtocolMessageError,
)
from harness.control.messages import (
    Error,
    Event,
    Execute,
    Hello,
    Message,
    Return,
    encode,
    from_frames,
)

__all__ = ["ControlClient", "LinkState"]

log = logging.getLogger(__name__)

_RECV_HWM = 100_000  # queued messages from the peer before zmq pushes back
_LINK_CHECK = 0.05   # s: how often a waiting call reads the connection monitor


class LinkState(enum.Enum):
    """The connection to the peer, as far as we know."""

    CONNECTING = "connecting"  # never connected yet (peer not up): commands wait, queued
    UP = "up"                  # connected
    DOWN = "down"              # was up, connection lost (zmq keeps retrying): PeerGone
    GONE = "gone"              # declared dead by mark_peer_gone: PeerGone, for good
    CLOSED = "closed"          # close() done: every method but close() raises ControlError


class ControlClient:
    """One runner-side session with one peer's `ControlServer`."""

    def __init__(self, address: str, *, timeout: float,
                 context: zmq.Context[Any] | None = None) -> None:
        check_address(address)
        self.address = address
        self.timeout = timeout
        self.state = LinkState.CONNECTING  # as of the last time we read the monitor
        self.greeting: Hello | None = None
        self.protocol_errors = 0  # malformed messages from the peer (logged, dropped)
        self._ids = itertools.count(1)
        self._awaiting: set[int] = set()
        self._replies: dict[int, Return | Error] = {}
        self._events: deque[Event] = deque()
        self._gone_reason = ""
        self._down_since = 0.0
        self._rcvtimeo = -1
        self._sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._monitor = self._connect(address)

    def _connect(self, address: str) -> zmq.Socket[Any]:
        sock = self._sock
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, _RECV_HWM)
        sock.setsockopt(zmq.ROUTING_ID, b"mh-" + secrets.token_bytes(8))
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            raise ControlError(f"cannot connect a control client to {address}: {exc}") from None
        return monitor

    # ------------------------------------------------------------------ commands
    def hello(self, timeout: float | None = None) -> Hello:
        """Negotiate like QMP (`qmp_capabilities`); the peer's greeting.  Waits for the peer
        to come up, within the deadline."""
        self.execute("qmp_capabilities", timeout=timeout)
        self._drain_monitor()  # so that `state` says UP from here on
        if self.greeting is None:
            raise ProtocolMessageError(f"{self.address} answered qmp_capabilities without "
                                       f"sending its greeting first")
        return self.greeting

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Run `command` on the peer; its return value.

        Raises CommandError for an error reply, ControlTimeout when no reply comes within
        `timeout` s (default: the client's), PeerGone when the connection is known lost.
        CONNECTING and UP only.
        """
        return self._call(command, arguments, timeout).value

    def execute_blob(self, command: str, arguments: dict[str, Any] | None = None,
                     timeout: float | None = None) -> tuple[Any, bytes | None]:
        """Like `execute`, for commands that answer with bulk bytes: (value, blob)."""
        reply = self._call(command, arguments, timeout)
        return reply.value, reply.blob

    def submit(self, command: str, arguments: dict[str, Any] | None = None) -> int:
        """Send `command` without waiting; `reply(id)` later says how it ended.  For a loop
        that must not block on a slow command (an agent applying a link fault)."""
        self._check_link(f"send {command!r}")
        msg_id = next(self._ids)
        self._awaiting.add(msg_id)
        try:
            self._sock.send(encode(Execute(command, dict(arguments or {}), msg_id)), zmq.NOBLOCK)
        except zmq.Again:
            self._awaiting.discard(msg_id)
            raise ControlTimeout(f"could not send {command!r} to {self.address}: its send "
                                 f"queue is full") from None
        return msg_id

    def reply(self, msg_id: int) -> Return | None:
        """The reply to a `submit`ted command once it arrived, else None (still waiting);
        CommandError for an error reply, PeerGone once the link is lost."""
        self.handle_readable()
        reply = self._replies.pop(msg_id, None)
        if reply is None:
            self._check_link("wait for a reply")
            return None
        self._awaiting.discard(msg_id)
        if isinstance(reply, Error):
            raise CommandError(reply.error_class, reply.desc)
        return reply

    def forget(self, msg_id: int) -> None:
        """Stop waiting for a `submit`ted command (its reply, if it comes, is dropped)."""
        self._awaiting.discard(msg_id)
        self._replies.pop(msg_id, None)

    def _call(self, command: str, arguments: dict[str, Any] | None,
              timeout: float | None) -> Return:
        self._check_link(f"send {command!r}")
        seconds = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        msg_id = next(self._ids)
        frame = encode(Execute(command, dict(arguments or {}), msg_id))
        self._awaiting.add(msg_id)
        try:
            self._send(frame, command, seconds, deadline)
            reply = self._await_reply(msg_id, command, seconds, deadline)
        finally:
            self._awaiting.discard(msg_id)
        if isinstance(reply, Error):
            raise CommandError(reply.error_class, reply.desc)
        return reply

    def _send(self, frame: bytes, command: str, seconds: float, deadline: float) -> None:
        while True:
            try:
                self._sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise ControlTimeout(f"could not send {command!r} to {self.address} within "
                                     f"{seconds:g} s (send queue full)")
            self._sock.poll(_ms(left), zmq.POLLOUT)

    def _await_reply(self, msg_id: int, command: str, seconds: float,
                     deadline: float) -> Return | Error:
        while True:
            reply = self._replies.pop(msg_id, None)
            if reply is not None:
                return reply
            self._check_link(f"wait for the reply to {command!r}")
            if not self._wait(deadline):
                raise ControlTimeout(f"no reply to {command!r} from {self.address} within "
                                     f"{seconds:g} s")

    # ------------------------------------------------------------------ events
    def events(self) -> list[Event]:
        """Every queued event, oldest first, and empty the queue (takes in what arrived)."""
        self._require_open("events")
        self.handle_readable()
        drained = list(self._events)
        self._events.clear()
        return drained

    def wait_event(self, name: str, predicate: Callable[[Event], bool] | None = None,
                   timeout: float | None = None) -> Event:
        """The oldest queued event `name` (matching `predicate`), else the next to arrive.

        Only that event leaves the queue.  ControlTimeout at the deadline; PeerGone if the
        connection is lost first.  CONNECTING and UP only (queued events: any open state).
        """
        seconds = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        while True:
            event = self._take_event(name, predicate)
            if event is not None:
                return event
            self._check_link(f"wait for event {name}")
            if not self._wait(deadline):
                raise ControlTimeout(f"no {name} event from {self.address} within "
                                     f"{seconds:g} s")

    def _take_event(self, name: str, predicate: Callable[[Event], bool] | None) -> Event | None:
        for i, event in enumerate(self._events):
            if event.name == name and (predicate is None or predicate(event)):
                del self._events[i]
                return event
        return None

    # ------------------------------------------------------------------ coordinator hooks
    @property
    def socket(self) -> zmq.Socket[Any]:
        """The DEALER, for a coordinator's poller (see also `register`)."""
        return self._sock

    def pollables(self) -> list[zmq.Socket[Any]]:
        """The sockets news arrives on (data and connection monitor), for a poller."""
        return [] if self.state is LinkState.CLOSED else [self._sock, self._monitor]

    def register(self, poller: zmq.Poller) -> None:
        """Register our sockets (data and connection monitor) with `poller` for POLLIN."""
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)

    def unregister(self, poller: zmq.Poller) -> None:
        """Undo `register`."""
        poller.unregister(self._sock)
        poller.unregister(self._monitor)

    def handle_readable(self) -> int:
        """Take in every message and connection change that arrived, without waiting.

        Returns the number of messages taken in.  Malformed ones are logged and counted in
        `protocol_errors`, never raised.  Any open state.
        """
        if self.state is LinkState.CLOSED:
            return 0
        taken = self._drain_messages()
        self._drain_monitor()
        return taken

    def mark_peer_gone(self, reason: str) -> None:
        """Declare the peer dead (e.g. its process exited): from now on PeerGone at once."""
        if self.state is not LinkState.CLOSED:
            self.state = LinkState.GONE
            self._gone_reason = reason

    def close(self) -> None:
        """Close both sockets (linger 0).  Any state; idempotent."""
        if self.state is LinkState.CLOSED:
            return
        self.state = LinkState.CLOSED
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ControlClient {self.address} {self.state.value}>"

    # ------------------------------------------------------------------ internals
    def _wait(self, deadline: float) -> bool:
        """Take in the next message, waiting until `deadline` at most; False once it passed.

        A blocking recv on the data socket (cheaper than polling two sockets), in slices
        of `_LINK_CHECK` s, between which the connection monitor is read.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ms = _ms(min(left, _LINK_CHECK))
        if ms != self._rcvtimeo:
            self._sock.setsockopt(zmq.RCVTIMEO, ms)
            self._rcvtimeo = ms
        try:
            frames = self._sock.recv_multipart()
        except zmq.Again:
            self._drain_monitor()
            return True
        self._accept(frames)
        return True

    def _drain_messages(self) -> int:
        taken = 0
        while self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._accept(self._sock.recv_multipart(zmq.NOBLOCK))
            taken += 1
        return taken

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_CONNECTED and self.state in (
                    LinkState.CONNECTING, LinkState.DOWN):
                self.state = LinkState.UP
            elif event["event"] == zmq.EVENT_DISCONNECTED and self.state is LinkState.UP:
                self._drain_messages()  # what the peer sent before it went is still ours
                self.state = LinkState.DOWN
                self._down_since = time.monotonic()
                log.info("control client %s: connection lost", self.address)

    def _accept(self, frames: list[bytes]) -> None:
        try:
            msg = from_frames(frames)
        except ProtocolMessageError as exc:
            self._protocol_error(str(exc))
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        match msg:
            case Event():
                self._events.append(msg)
            case Return() | Error():
                self._take_reply(msg)
            case Hello():
                self._take_greeting(msg)
            case Execute():
                self._protocol_error(f"the peer sent us a command ({msg.command!r})")

    def _take_reply(self, reply: Return | Error) -> None:
        msg_id = reply.id
        if msg_id is None and len(self._awaiting) == 1:
            msg_id = next(iter(self._awaiting))  # the peer could not read our request
        if msg_id in self._awaiting:
            self._replies[msg_id] = reply
        else:
            log.debug("control client %s: dropped late reply %s", self.address, reply.id)

    def _take_greeting(self, hello: Hello) -> None:
        if self.greeting is not None and self.greeting.pid != hello.pid:
            log.warning("control client %s: peer restarted (pid %d, was %d)", self.address,
                        hello.pid, self.greeting.pid)
        self.greeting = hello

    def _protocol_error(self, text: str) -> None:
        self.protocol_errors += 1
        log.warning("control client %s: dropped a malformed message: %s", self.address, text)

    def _require_open(self, method: str) -> None:
        if self.state is LinkState.CLOSED:
            raise ControlError(f"ControlClient.{method}: client for {self.address} is closed")

    def _check_link(self, doing: str) -> None:
        if self.state is LinkState.CLOSED:
            raise ControlError(f"cannot {doing}: the client for {self.address} is closed")
        if self.state is LinkState.GONE:
            raise PeerGone(f"cannot {doing}: peer at {self.address} is gone "
                           f"({self._gone_reason})")
        if self.state is LinkState.DOWN:
            ago = time.monotonic() - self._down_since
            raise PeerGone(f"cannot {doing}: connection to {self.address} lost {ago:.1f} s "
                           f"ago (peer process gone?)")


def _ms(seconds: float) -> int:
    """A poll timeout in ms, rounded up so that a wait never spins at 0 ms."""
    return max(1, math.ceil(seconds * 1000))
