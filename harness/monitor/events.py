"""Events as they arrive: printed above the prompt, and the console-side triggers fired.

Strategy: one background thread with its own `Link` (its own zmq sockets) polls every
peer, prints each event as one line (`HH:MM:SS.mmm source MIGRATION status=active`)
and does what must happen the moment an event arrives: fire the triggers the console
watches itself (pass, status, time, remaining, progress), carry out the effect of a
wire trigger the proxy holds the stream for (then release it), continue a peer frozen
for a `duration`.  Printing goes through `Output`, which at the prompt clears the line,
prints, and redraws the prompt with what was typed so far (readline keeps the buffer);
that is all the terminal handling there is.  The thread never dies silently: an
unexpected error is printed once and kept in `error`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TextIO

import zmq

from harness.control import ControlError, LinkState
from harness.control.messages import Event

from .actions import carry_out, proxy_id
from .hmp import MonitorError
from .session import Link, Session
from .steps import Observed, Trigger, TriggerBook, needs_stats, occurred

POLL_MS = 50
STATS_PERIOD = 0.1  # s between query-migrate polls while a remaining/progress trigger waits


class Output:
    """Every line the console prints, from any thread, without mangling the prompt line."""

    def __init__(self, stream: TextIO | None = None, redraw: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.redraw = redraw  # a terminal with readline: clear and redraw the prompt line
        self.prompt = ""
        self.at_prompt = False
        self._lock = threading.RLock()

    def lines(self, lines: Iterable[str]) -> None:
        with self._lock:
            for line in lines:
                self.stream.write(line + "\n")
            self.stream.flush()

    def event(self, text: str, at: float | None = None) -> None:
        """A line stamped with the time (`at`, by the clock of the process it comes from,
        else now), printed above the prompt if one is showing."""
        when = datetime.fromtimestamp(at) if at else datetime.now()
        stamp = when.strftime("%H:%M:%S.%f")[:-3]
        with self._lock:
            if self.at_prompt and self.redraw:
                import readline

                typed = readline.get_line_buffer()
                self.stream.write(f"\r\x1b[K{stamp} {text}\n{self.prompt}{typed}")
            else:
                self.stream.write(f"{stamp} {text}\n")
            self.stream.flush()


def event_line(role: str, event: Event, book: TriggerBook) -> str:
    """`source MIGRATION status=active`, `proxy FAULT t2 net.blackhole channel=main ...`."""
    data = dict(event.data)
    head = [role, event.name]
    if "id" in data and role == "proxy":
        head.append(short_id(str(data.pop("id")), book))
    if event.name == "FAULT":
        head.append(str(data.pop("kind", "")))
        data.update(data.pop("detail", None) or {})
    elif event.name == "SESSION":
        head += [str(data.pop("n", "")), str(data.pop("event", ""))]
        if not data.get("reason"):
            data.pop("reason", None)
    elif event.name == "WIRE":
        head += _pairs(data.pop("trigger", None) or {})
        if data.pop("held", False):
            head.append("held")
    return " ".join(head + _pairs(data))


def short_id(proxy_ident: str, book: TriggerBook) -> str:
    trigger = book.by_proxy_id(proxy_ident)
    if trigger is not None:
        return trigger.name
    return proxy_ident.split("-", 1)[1] if proxy_ident.startswith(proxy_id("")) else proxy_ident


def _pairs(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if value is None or value == {}:
            continue
        if isinstance(value, dict):
            out += _pairs(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


class EventPump(threading.Thread):
    """The thread that owns `link` from `start()` on: nobody else may use it."""

    def __init__(self, session: Session, link: Link, out: Output, book: TriggerBook) -> None:
        super().__init__(name="monitor events", daemon=True)
        self.session, self.link, self.out, self.book = session, link, out, book
        self.seen = Observed()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._lost: set[str] = set()
        self._stats_at = 0.0

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.ident is not None:
            self.join(timeout)

    def run(self) -> None:
        poller = zmq.Poller()
        for client in self.link.clients.values():
            client.register(poller)
        try:
            while not self._stop_event.is_set():
                poller.poll(POLL_MS)
                self._drain()
                self._watch_links()
                self._tick()
                for role, pids in self.session.frozen.thaw_due():
                    self.out.event(f"monitor THAW target={role} pids="
                                   f"{','.join(map(str, pids))}")
        except Exception as err:  # noqa: BLE001 - said once, kept for whoever joins us
            self.error = err
            self.out.event(f"monitor: the event thread stopped: {type(err).__name__}: {err}")
        finally:
            self.link.close()

    # ------------------------------------------------------------------ events
    def _drain(self) -> None:
        for role, client in list(self.link.clients.items()):
            try:
                events = client.events()
            except ControlError:
                continue
            for event in events:
                self._seen(role, event)
                self.out.event(event_line(role, event, self.book), event.timestamp)
                if role == "proxy" and event.name == "WIRE":
                    self._wire(event.data)

    def _seen(self, role: str, event: Event) -> None:
        if event.name == "MIGRATION" and role in self.seen.statuses:
            self.seen.statuses[role].append((time.monotonic(), str(event.data.get("status"))))
        elif event.name == "MIGRATION_PASS" and role == "source":
            self.seen.passes = int(event.data.get("pass", 0))

    def _watch_links(self) -> None:
        for role, client in self.link.clients.items():
            down = client.state in (LinkState.DOWN, LinkState.GONE)
            if down and role not in self._lost:
                self._lost.add(role)
                code = self._exit_code(role)
                self.out.event(f"{role} connection lost" + (
                    f" (exited with status {code})" if code is not None else
                    " (the process is gone?)"))
            elif not down and role in self._lost:
                self._lost.discard(role)
                self.out.event(f"{role} connection back")

    def _exit_code(self, role: str) -> int | None:
        deadline = time.monotonic() + 0.3
        while True:
            code = self.session.exit_code(role)
            if code is not None or time.monotonic() > deadline or not self.session.started:
                return code
            time.sleep(0.02)

    # ------------------------------------------------------------------ triggers
    def _tick(self) -> None:
        local = self.book.armed_local()
        if not local:
            return
        now = time.monotonic()
        if needs_stats(local) and now - self._stats_at >= STATS_PERIOD:
            self._stats_at = now
            try:
                info = self.link.execute("source", "query-migrate", timeout=2) or {}
                self.seen.ram = dict(info.get("ram") or {})
            except MonitorError:
                pass
        for trigger in local:
            if occurred(trigger, self.seen) and self.book.draw(trigger):
                self._fire(trigger)

    def _fire(self, trigger: Trigger) -> None:
        trigger.state = "fired"
        try:
            text = carry_out(trigger.effect, self.link, self.session, trigger.name)
        except MonitorError as err:
            text = f"Error: {err}"
        trigger.result = text
        self.out.event(f"monitor TRIGGER {trigger.name} fired ({trigger.describe()}): {text}")

    def _wire(self, data: dict[str, Any]) -> None:
        """The proxy saw a trigger of ours; if it holds the stream, act, then release."""
        ident = str(data.get("id"))
        trigger = self.book.by_proxy_id(ident)
        if trigger is None or trigger.state == "fired":
            return
        if not data.get("held"):
            trigger.state = "fired"
            trigger.result = f"{trigger.effect.describe()} (applied by the proxy)"
            self.out.event(f"monitor TRIGGER {trigger.name} fired ({trigger.describe()}): "
                           f"{trigger.result}")
            return
        try:
            self._fire(trigger)
        finally:
            try:
                self.link.execute("proxy", "x-proxy-release", {"id": ident})
            except MonitorError as err:
                self.out.event(f"monitor: releasing the proxy's hold {trigger.name}: {err}")
