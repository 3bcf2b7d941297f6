"""Delivering one flow's bytes to its receiver: at once, or shaped in time.

Strategy: the forwarding thread of a flow hands each range of bytes to the flow's
`Outlet`.  With no shaping fault active and nothing queued, the outlet sends it at once
from the thread's own buffer (no copy: the fast path).  While a delay, jitter or
bandwidth fault is active, or bytes are still queued from one, each chunk is copied into
a queue with the time it is due, and a writer thread (started on first need) sends the
queue in order: late by `delay`, by a seeded random delay in [0, 2 x delay] that never
reorders, or through a token bucket at `rate` bytes/s.  The queue is bounded, so a slow
receiver still pushes back on the sender.  A blackhole stops the flow where it is (the
forwarding thread stops reading, the writer stops sending) until its window ends;
`Holds` stop every flow while a hold is on.  Every wait has a deadline or watches the
session's stop event, so stopping a session never leaves a thread behind.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .endpoint import Endpoint, Stopped

__all__ = ["HOLD_DEADLINE", "Holds", "Outlet"]

log = logging.getLogger(__name__)

HOLD_DEADLINE = 10.0  # a hold nobody releases ends by itself after this
QUEUE_LIMIT = 64 << 20  # bytes queued by a shaping fault before the sender waits
_SLICE = 0.05  # s: how often a waiting thread looks at the stop event
_TIMER_JOIN = 5.0  # s: a cancelled hold timer's thread ends at once, unless the machine is busy
_FOREVER = math.inf


class Holds:
    """Holds raised by wire triggers (`hold: true`): while one is on, no flow moves."""

    def __init__(self, emit: Callable[[str, dict[str, Any]], None],
                 deadline: float = HOLD_DEADLINE) -> None:
        self._emit = emit
        self.deadline = deadline
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self._active: dict[str, tuple[threading.Timer, float]] = {}

    @property
    def active(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def hold(self, hold_id: str) -> None:
        timer = threading.Timer(self.deadline, self.release, (hold_id, "deadline"))
        timer.name = f"proxy hold {hold_id}"
        timer.daemon = True
        with self._lock:  # started under the lock: a release never joins an unstarted timer
            if hold_id in self._active:
                return
            self._active[hold_id] = (timer, time.monotonic())
            self._open.clear()
            timer.start()

    def release(self, hold_id: str, by: str = "x-proxy-release") -> bool:
        """End a hold; False if it was not on."""
        with self._lock:
            entry = self._active.pop(hold_id, None)
            if entry is None:
                return False
            if not self._active:
                self._open.set()
        timer, since = entry
        if threading.current_thread() is not timer:
            timer.cancel()
            timer.join(_TIMER_JOIN)  # a cancelled timer's thread is over when this returns
        if by == "deadline":
            log.warning("hold %s was not released within %g s: forwarding again", hold_id,
                        self.deadline)
        self._emit("HOLD_RELEASED", {"id": hold_id, "by": by,
                                     "held": round(time.monotonic() - since, 6)})
        return True

    def wait_open(self, stopped: threading.Event) -> None:
        """Return when no hold is on; Stopped if the session stops first."""
        while not self._open.wait(_SLICE):
            if stopped.is_set():
                raise Stopped("stopped during a hold")

    def close(self) -> None:
        with self._lock:
            entries = list(self._active.values())
            self._active.clear()
            self._open.set()
        for timer, _ in entries:
            timer.cancel()
            timer.join(_TIMER_JOIN)


@dataclass
class _Item:
    due: float
    data: bytes
    shut: bool = False  # a half-close marker: shut the receiver's writing side here


@dataclass
class _Window:
    value: float = 0.0
    until: float = 0.0  # monotonic; inf = until the session ends

    def on(self, now: float) -> bool:
        return now < self.until


class Outlet:
    """The delivery end of one flow of one session."""

    def __init__(self, flow: str, sink: Endpoint, *, stopped: threading.Event, holds: Holds,
                 rng: random.Random, count: Callable[[str, str, int], None],
                 on_error: Callable[[BaseException], None]) -> None:
        self.flow = flow
        self.sink = sink
        self._stopped = stopped
        self._holds = holds
        self._rng = rng
        self._count = count  # (flow, "forwarded" | "discarded", bytes)
        self._on_error = on_error
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._busy = False
        self._last_due = 0.0
        self.writer: threading.Thread | None = None
        self.closed = False  # half-closed: nothing more reaches the receiver
        self.blackhole_until = 0.0
        self.delay = _Window()
        self.jitter = _Window()
        self.rate = _Window()
        self._tokens = 0.0
        self._refilled = 0.0

    # ------------------------------------------------------------------ faults
    def blackhole(self, seconds: float | None) -> None:
        self.blackhole_until = _until(seconds)

    def shape(self, kind: str, value: float, seconds: float | None) -> None:
        window = {"net.delay": self.delay, "net.jitter": self.jitter,
                  "net.bandwidth": self.rate}[kind]
        with self._cond:
            window.value, window.until = value, _until(seconds)
            if kind == "net.bandwidth":
                self._tokens, self._refilled = 0.0, time.monotonic()

    def close_write(self) -> None:
        """From here on nothing more reaches the receiver: what is queued goes first, then
        its side is shut for writing (it reads EOF); later bytes are discarded."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            if self._queue or self._busy:
                self._queue.append(_Item(0.0, b"", shut=True))
                self._cond.notify_all()
                return
        self.sink.shut_write()

    # ------------------------------------------------------------------ delivery
    def deliver(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` now, or queue a copy of it when shaped; discard after close_write."""
        self.wait_moving()
        size = len(data)
        if self.closed:
            self._count(self.flow, "discarded", size)
            return
        now = time.monotonic()
        with self._cond:
            direct = not (self._queue or self._busy or self._shaped(now))
            if not direct:
                self._enqueue(data, now)
                return
        self._send(self.sink.send, data)

    def _send(self, send: Callable[[Any], None], data: bytes | bytearray | memoryview) -> None:
        """Send and count; a send that fails because the flow was closed meanwhile (a
        half-close from another thread) discards the bytes instead."""
        try:
            send(data)
        except OSError:
            if not self.closed:
                raise
            self._count(self.flow, "discarded", len(data))
            return
        self._count(self.flow, "forwarded", len(data))

    def wait_moving(self) -> None:
        """Return once no hold is on and no blackhole covers this flow."""
        while True:
            self._holds.wait_open(self._stopped)
            left = self.blackhole_until - time.monotonic()
            if left <= 0:
                return
            if self._stopped.wait(min(left, _SLICE)):
                raise Stopped(f"{self.flow}: stopped in a blackhole")

    def finish(self, seconds: float) -> None:
        """At the end of input: let the queue drain (bounded), then shut the receiver's
        writing side (it reads EOF, as the sender closed)."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while (self._queue or self._busy) and not self._stopped.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%s: %d queued bytes not delivered within %g s at the end of "
                                "the input", self.flow, self._queued_bytes, seconds)
                    break
                self._cond.wait(min(left, _SLICE))
        self.sink.shut_write()

    def _shaped(self, now: float) -> bool:
        return self.delay.on(now) or self.jitter.on(now) or self.rate.on(now)

    def _enqueue(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """(under the lock) Queue a copy due when the delay faults say; wait for room."""
        due = now
        if self.delay.on(now):
            due += self.delay.value
        if self.jitter.on(now):
            due += self._rng.uniform(0.0, 2.0 * self.jitter.value)
        due = max(due, self._last_due)  # order is kept
        self._last_due = due
        while self._queued_bytes > QUEUE_LIMIT:
            if self._stopped.is_set():
                raise Stopped(f"{self.flow}: stopped while the queue was full")
            self._cond.wait(_SLICE)
        self._queue.append(_Item(due, bytes(data)))
        self._queued_bytes += len(data)
        if self.writer is None:
            self.writer = threading.Thread(target=self._write_queue, daemon=True,
                                           name=f"proxy {self.flow} writer")
            self.writer.start()
        self._cond.notify_all()

    # ------------------------------------------------------------------ the writer
    def _write_queue(self) -> None:
        try:
            while self._next():
                pass
        except Stopped:
            pass
        except Exception as exc:  # noqa: BLE001 -- reported to the session, never silent
            self._on_error(exc)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _next(self) -> bool:
        """Send the head of the queue when it is due; False when the writer is done."""
        with self._cond:
            while not self._queue:
                if self._stopped.is_set():
                    return False
                self._cond.wait(_SLICE)
            item = self._queue[0]
            self._busy = True
        self._sleep_until(item.due)
        if item.shut:
            self.sink.shut_write()
        else:
            self.wait_moving()
            self._send(self._send_limited, item.data)
        with self._cond:
            self._queue.popleft()
            self._queued_bytes -= len(item.data)
            self._busy = False
            self._cond.notify_all()
        return not item.shut

    def _sleep_until(self, due: float) -> None:
        while (left := due - time.monotonic()) > 0:
            if self._stopped.wait(min(left, _SLICE)):
                raise Stopped(f"{self.flow}: stopped while delaying")

    def _send_limited(self, data: bytes) -> None:
        """Send through the token bucket while the bandwidth fault is on."""
        view = memoryview(data)
        while view:
            now = time.monotonic()
            if not self.rate.on(now):
                self.sink.send(view)
                return
            rate = self.rate.value
            burst = min(max(rate / 50.0, 1024.0), float(1 << 20))
            self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            need = max(1.0, min(float(len(view)), burst / 4))
            if self._tokens < need:
                self._sleep_until(now + min((need - self._tokens) / rate + 1e-4, _SLICE))
                continue
            n = int(min(self._tokens, len(view)))
            self.sink.send(view[:n])
            self._tokens -= n
            view = view[n:]


def _until(seconds: float | None) -> float:
    return _FOREVER if seconds is None else time.monotonic() + seconds
