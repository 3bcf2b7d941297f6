"""The proxy between source and destination: sessions, armed triggers and faults.

Strategy: the source connects to the proxy; for each connection the proxy connects to
the target (the destination's current URI) and a `Session` runs two `Pump`s, one per
flow (main: source -> destination; return-path: back).  The `Proxy` owns what outlives
a connection: the listening socket and its accept thread, the arms (`x-proxy-arm`),
pending frame faults, holds, counters, and the stream memory that lets a reconnection
without file magic (postcopy recovery) continue the stream it interrupted.  Pumps ask
the proxy, once per chunk, where armed triggers match in what they just framed
(`firings`) and which frame faults wait for a frame (`frame_faults`); the proxy's lock
is taken per chunk, never per frame.  Every thread it starts (accept, pumps, writers,
hold timers) is joined on `close()`, within deadlines; a thread that fails logs once,
reports the error (`query-proxy` and a PROXY_ERROR event) and aborts its session only.
A real machine's stream is framed exactly with the `MachineLayout` the proxy is given
(`set_layout`); what a precopy stream's own vmdesc adds to it is merged, stored back in
the layout cache and used from the next connection on (a LAYOUT_LEARNED event).
With postcopy-preempt on (`preempt`), the connection that follows a main connection is
that session's preempt channel (QEMU's destination tells them apart by that order too,
migration.c: postcopy_preempt_new_channel): a `Session` of its own, one flow (`preempt`,
bare RAM page records framed by `PreemptFramer`), connected to the target right after
its main one (the accept thread connects in the order it accepts), linked both ways
(`main`, `preempt`).  A connection-wide fault goes to the session of the channel it names,
whichever channel's trigger fired it; a recovery's pair of connections is again main, then
preempt.  With multifd (`multifd` = N channels), the N connections that follow a main one
are its multifd channels, connected to the target in the order they were accepted (QEMU
7.2's destination assigns them by that order, migration.c:
migration_ioc_process_incoming; facts M1/M2), each a `Session` of one flow framed by
`MultifdFramer` and named `multifd-<id>` once its MultifdInit says the id (faults and
triggers waiting for that channel act from then on).  postcopy-preempt together with
multifd is refused (the order of their connections is not defined in 7.2).
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import random
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.qemu.layout import MachineLayout, remember
from harness.transport import TransportError
from harness.transport.waiting import Waker

from .endpoint import Endpoint, ProxyListener, Stopped, connect_target, proxy_uri
from .framing import (
    MAIN,
    PREEMPT,
    RETURN_PATH,
    Frame,
    Framer,
    Framing,
    ReturnPathFramer,
    StreamFramer,
    StreamMemory,
)
from .multifd import MULTIFD, MultifdFramer, is_multifd, multifd_flows
from .netfaults import FRAME_FAULTS, SHAPING_FAULTS, Armed, FrameFault, fault_flows, parse_fault
from .outlet import HOLD_DEADLINE, Holds, Outlet
from .preempt import PreemptFramer
from .pump import Pump
from .recording import Recording
from .stats import Stats
from .triggers import parse_trigger

__all__ = ["CONNECT_TIMEOUT", "Proxy", "ProxyState", "Session"]

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]
CONNECT_TIMEOUT = 10.0  # s to reach the target for an accepted connection
GRACE = 2.0  # s a truncated session waits for the peers to close before it closes
JOIN_TIMEOUT = 5.0
_ACCEPT_SLICE = 0.2  # s between two looks at the sessions (deadlines, reaping)


class Session:
    """One connection through the proxy: two flows, each with its pump and outlet; or,
    given `main` (the session it follows), that session's preempt channel: one flow."""

    def __init__(self, proxy: Proxy, n: int, source: socket.socket,
                 destination: socket.socket, main: Session | None = None,
                 kind: str = PREEMPT) -> None:
        self.proxy = proxy
        self.n = n
        self.channel = MAIN if main is None else kind
        self.main = main
        self.preempt: Session | None = None
        self.multifd: list[Session] = []  # a main session's multifd channels, accepted
        self.waker = Waker()
        self.stopped = threading.Event()
        label = f"session {n}" + (f" ({kind})" if main is not None else "")
        make = Endpoint if proxy.tls is None else proxy.tls.endpoint  # tls_endpoint.py
        self.source = make(source, f"{label} source", self.waker)
        self.destination = make(destination, f"{label} destination", self.waker)
        self.state = "open"  # open | closing | closed
        self.reason = ""
        self.close_deadline: float | None = None
        self._reset = False
        self._lock = threading.Lock()
        self._done = 0
        if main is not None and kind == MULTIFD:
            self.pumps = {MULTIFD: self._pump(MULTIFD, MultifdFramer(proxy.multifd))}
            return
        if main is not None:
            self.pumps = {PREEMPT: self._pump(PREEMPT, PreemptFramer(main.main_decoder))}
            return
        self.pumps = {MAIN: self._pump(MAIN, StreamFramer(proxy.memory)),
                      RETURN_PATH: self._pump(RETURN_PATH, ReturnPathFramer())}

    def _pump(self, flow: str, framer: Framer) -> Pump:
        inlet, sink = ((self.destination, self.source) if flow == RETURN_PATH
                       else (self.source, self.destination))
        if self.proxy.tls is not None:  # passthrough: TLS records (tls_endpoint.py)
            framer = self.proxy.tls.framer(flow, framer)
        return Pump(self, flow, inlet, self._outlet(flow, sink), framer)

    def main_decoder(self) -> Any:
        """The decoder of this (main) session's stream, None before its first bytes."""
        framer = self.pumps[MAIN].framer
        return framer.decoder if isinstance(framer, StreamFramer) else None

    def _outlet(self, flow: str, sink: Endpoint) -> Outlet:
        return Outlet(flow, sink, stopped=self.stopped, holds=self.proxy.holds,
                      rng=random.Random(f"{self.proxy.seed}/jitter/{self.n}/{flow}"),
                      count=self.proxy.stats.add,
                      on_error=functools.partial(self._writer_failed, flow))

    def start(self) -> None:
        for pump in self.pumps.values():
            pump.thread.start()

    def identified(self, pump: Pump, flow: str) -> None:
        """A multifd channel's init named it (`flow`: multifd-<id>)."""
        with self._lock:
            self.pumps = {flow: pump}  # a new dict: whoever iterates the old one may go on
            self.channel = flow
        self.proxy.channel_identified(self)

    @property
    def guessed(self) -> int:
        """Device sections of this connection skipped to a footer found by searching."""
        pump = self.pumps.get(MAIN)
        return pump.framer.guessed if pump and isinstance(pump.framer, StreamFramer) else 0

    @property
    def continued(self) -> bool:
        pump = self.pumps.get(MAIN)
        return pump is not None and isinstance(pump.framer, StreamFramer) \
            and pump.framer.continued

    def summary(self) -> dict[str, Any]:
        out = {"n": self.n, "state": self.state, "reason": self.reason,
               "continued": self.continued,
               "forwarded": {flow: pump.forwarded for flow, pump in self.pumps.items()}}
        if self.proxy.preempt or self.proxy.multifd:
            out["channel"] = self.channel
            if self.main is not None:
                out["main"] = self.main.n
            elif self.preempt is not None:
                out["preempt"] = self.preempt.n
            elif self.multifd:
                out["multifd"] = [s.n for s in self.multifd]
        framer = next(iter(self.pumps.values())).framer
        if isinstance(framer, MultifdFramer):
            out["packets"] = framer.counters()
        return out

    # ------------------------------------------------------------------ ending
    def _set_reason(self, reason: str) -> None:
        with self._lock:
            if not self.reason:
                self.reason = reason

    def abort(self, reason: str, *, reset: bool) -> None:
        """Stop both flows now; on closing, `reset` makes TCP peers see a reset."""
        self._set_reason(reason)
        with self._lock:
            self._reset = self._reset or reset
        self.stopped.set()
        self.waker.wake()

    def close_gracefully(self, reason: str) -> None:
        """Both receivers get EOF; input is discarded; closed when both peers closed
        (or after GRACE seconds)."""
        self._set_reason(reason)
        self.state = "closing"
        self.close_deadline = time.monotonic() + GRACE
        for pump in self.pumps.values():
            pump.outlet.close_write()

    def check_deadline(self, now: float) -> None:
        if self.close_deadline is not None and now > self.close_deadline \
                and not self.stopped.is_set():
            self.abort(self.reason, reset=False)

    def input_ended(self, flow: str) -> None:
        who = "destination" if flow == RETURN_PATH else "source"
        if self.state == "open":
            self._set_reason(f"the {who} closed the connection")

    def broken(self, flow: str, exc: OSError) -> None:
        who = "destination" if flow == RETURN_PATH else "source"
        self.abort(f"{flow} flow: the connection to the {who} or back failed: "
                   f"{exc.strerror or exc}", reset=True)

    def crashed(self, what: str, exc: BaseException) -> None:
        log.error("proxy session %d: %s failed", self.n, what, exc_info=exc)
        self.proxy.report_error(self, what, exc)
        self.abort(f"{what} failed: {type(exc).__name__}: {exc}", reset=True)

    def _writer_failed(self, flow: str, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            self.broken(flow, exc)
        else:
            self.crashed(f"{flow} writer", exc)

    def pump_done(self, pump: Pump) -> None:
        with self._lock:
            self._done += 1
            last = self._done == len(self.pumps)
        if not last:
            if pump.ended != "eof" and not self.stopped.is_set():
                self.abort(f"the {pump.flow} flow stopped", reset=False)
            return
        self._finish()

    def _finish(self) -> None:
        """In the last pump's thread: stop the writers, close both sockets."""
        self.stopped.set()
        self.waker.wake()
        for pump in self.pumps.values():
            writer = pump.outlet.writer
            if writer is not None and writer is not threading.current_thread():
                writer.join(JOIN_TIMEOUT)
        if self._reset:  # what was forwarded before the reset reaches the peers first
            self.destination.drain(0.5)
            self.source.drain(0.5)
        self.source.close(reset=self._reset)
        self.destination.close(reset=self._reset)
        self.waker.close()
        self.state = "closed"
        self.proxy.session_closed(self)

    def join(self, seconds: float) -> None:
        for pump in self.pumps.values():
            if pump.thread.ident is not None:
                pump.thread.join(seconds)
            if pump.thread.is_alive():
                log.error("proxy session %d: %s thread did not stop within %g s", self.n,
                          pump.flow, seconds)


class ProxyState(enum.Enum):
    RUNNING = "running"
    CLOSED = "closed"


class Proxy:
    """Listens on `listen`, forwards each connection to `target`; faults on command.

    Public methods are thread-safe (the control server's thread calls them while pumps
    run); `start` once, `close` once at the end (idempotent)."""

    def __init__(self, listen: str, target: str, *, seed: int = 0, emit: Emit | None = None,
                 hold_deadline: float = HOLD_DEADLINE, layout: MachineLayout | None = None,
                 layout_cache: Path | None = None, record: Path | None = None,
                 preempt: bool = False, multifd: int = 0, tls: Any = None) -> None:
        if preempt and multifd:
            raise ValueError("postcopy-preempt together with multifd is not implemented by "
                             "the proxy (which connection is which is not defined in 7.2)")
        if not 0 <= multifd <= 255:
            raise ValueError(f"multifd channels: {multifd} is not between 1 and 255")
        self.target = str(proxy_uri(target, "source"))
        self.seed = seed
        self.preempt = preempt  # postcopy-preempt: each main connection brings a second
        self.multifd = multifd  # multifd-channels: each main connection brings N more
        self.tls = tls  # tls_endpoint.ProxyTls: TLS terminated here (None: passed through)
        self._emit_to = emit
        self.stats = Stats(preempt, multifd_flows(multifd))
        self.holds = Holds(self.emit, hold_deadline)
        self.memory = StreamMemory(layout, self._learn)
        self.layout_cache = layout_cache  # None: the default cache (harness.qemu.layout)
        self.learned: list[dict[str, Any]] = []
        #: what it delivered, kept (harness run --record with no harness peer recording)
        self.recording = Recording(record, preempt, multifd) if record is not None else None
        self.state = ProxyState.RUNNING
        self._lock = threading.RLock()
        self._armed: dict[str, Armed] = {}
        self._triggers: dict[str, list[Armed]] = defaultdict(list)
        self._frame_faults: dict[str, list[FrameFault]] = defaultdict(list)
        self._next_session: list[Armed] = []
        self.sessions: list[Session] = []
        #: preempt: the next connection is this main session's preempt channel (False:
        #: the next one is a main connection; None: it follows a main that failed)
        self._awaiting: Session | None | bool = False
        self._multifd_left = 0  # multifd: connections still to come for the last main one
        self._numbers = itertools.count(1)
        self.faults: list[dict[str, Any]] = []
        self.framing_errors: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._listener = ProxyListener(listen)
        self.address = self._listener.address
        self._waker = Waker()
        self._thread = threading.Thread(target=self._accept_loop, name="proxy accept",
                                        daemon=True)

    def emit(self, name: str, data: dict[str, Any]) -> None:
        log.debug("event %s %s", name, data)
        if self._emit_to is not None:
            self._emit_to(name, data)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------------ commands
    def arm(self, arm_id: str, trigger: Mapping[str, Any] | None,
            fault: Mapping[str, Any] | None, hold: bool = False,
            probability: float | None = None) -> dict[str, Any]:
        """x-proxy-arm (ValueError says what is wrong).  `probability` overrides the
        trigger's; each occurrence is drawn from the proxy's seed and the id."""
        if not isinstance(arm_id, str) or not arm_id:
            raise ValueError("x-proxy-arm needs an id (a non-empty string)")
        if trigger is None and fault is None and not hold:
            raise ValueError(f"x-proxy-arm {arm_id}: nothing to do (give a trigger, a fault "
                             f"or hold: true)")
        wire = None if trigger is None else parse_trigger(
            trigger, probability=probability, draw_seed=f"{self.seed}/{arm_id}")
        spec = parse_fault(fault) if fault is not None else None
        armed = Armed(arm_id, wire, spec, bool(hold), fault_flows(spec) if spec else ())
        self._check_channels(arm_id, (*armed.flows, *((wire.flow,) if wire else ())))
        with self._lock:
            if arm_id in self._armed:
                raise ValueError(f"x-proxy-arm: id {arm_id!r} is already used")
            self._armed[arm_id] = armed
            if wire is not None:
                if wire.kind == "bytes":
                    wire.start_total = self.stats.total_received(wire.flow)
                self._triggers[wire.flow].append(armed)
                return armed.describe()
        armed.state = "fired"
        armed.fired = {"at": "arm"}
        if spec is not None:
            self._act(armed, self._live_session(), None, 0)
        if armed.hold:
            self.holds.hold(arm_id)
        return armed.describe()

    def _check_channels(self, arm_id: str, flows: tuple[str, ...]) -> None:
        known = multifd_flows(self.multifd)
        for flow in flows:
            if is_multifd(flow) and flow not in known:
                raise ValueError(f"x-proxy-arm {arm_id}: channel {flow}: " + (
                    "this proxy forwards no multifd channels (started without --multifd)"
                    if not self.multifd else
                    f"this proxy forwards {self.multifd} multifd channels (ids 0 to "
                    f"{self.multifd - 1})"))

    def release(self, hold_id: str) -> dict[str, Any]:
        if not self.holds.release(hold_id):
            raise ValueError(f"x-proxy-release: no hold {hold_id!r} is on")
        return {}

    def set_target(self, uri: str) -> dict[str, Any]:
        self.target = str(proxy_uri(uri, "source"))
        return {"target": self.target}

    def set_layout(self, layout: MachineLayout | None) -> dict[str, Any]:
        """Frame the streams of new connections with `layout` (None: guess, as before)."""
        with self._lock:
            self.memory.layout = layout
        return self._layout_summary()

    def _learn(self, vmdesc: Mapping[str, Any]) -> None:
        """A pump saw a stream's own vmdesc: what it adds to the layout is kept (cache)."""
        with self._lock:
            layout = self.memory.layout
            if layout is None:
                return
            try:
                merged = remember(layout, vmdesc, self.layout_cache)
            except OSError as exc:
                self.errors.append(f"layout cache: {exc}")
                return
            if merged is layout:
                return
            self.memory.layout = merged
            record = {"key": merged.key, "devices": len(merged.device_names())}
            self.learned.append(record)
        self.emit("LAYOUT_LEARNED", record)

    def _layout_summary(self) -> dict[str, Any] | None:
        layout = self.memory.layout
        if layout is None:
            return None
        return {"key": layout.key, "machine": layout.machine,
                "devices": len(layout.device_names()), "learned": len(self.learned)}

    def query(self) -> dict[str, Any]:
        with self._lock:
            sessions = [s.summary() for s in self.sessions]
            guessed = sum(s.guessed for s in self.sessions)
            layout = self._layout_summary()
            armed = [a.describe() for a in self._armed.values()]
            faults, lost, errors = list(self.faults), list(self.framing_errors), list(self.errors)
        return {
            "listen": self.address, "target": self.target, "seed": self.seed,
            **({"preempt": True} if self.preempt else {}),
            **({"multifd": self._multifd_summary(sessions)} if self.multifd else {}),
            "state": self.state.value,
            "sessions": {"accepted": len(sessions),
                         "active": sum(s["state"] != "closed" for s in sessions),
                         "closed": sum(s["state"] == "closed" for s in sessions),
                         "list": sessions},
            **self.stats.snapshot(),
            "framing-errors": lost,
            "layout": layout, "guessed-sections": guessed,
            "armed": [a for a in armed if a["state"] == "armed"],
            "fired": [a for a in armed if a["state"] == "fired"],
            "faults": faults, "holds": self.holds.active, "errors": errors,
        }

    def _multifd_summary(self, sessions: list[dict[str, Any]]) -> dict[str, Any]:
        """Per multifd channel: its connections and what they carried (packets, pages,
        SYNC packets, payload bytes), added up over the migrations of this proxy."""
        channels: dict[str, dict[str, int]] = {}
        for summary in sessions:
            counters = summary.get("packets")
            if counters is None:
                continue
            total = channels.setdefault(summary["channel"], {"connections": 0})
            total["connections"] += 1
            for key, value in counters.items():
                total[key] = total.get(key, 0) + value
        return {"channels": self.multifd, "list": dict(sorted(channels.items()))}

    def close(self) -> None:
        """Stop accepting, end every session, join every thread (bounded).  Idempotent."""
        with self._lock:
            if self.state is ProxyState.CLOSED:
                return
            self.state = ProxyState.CLOSED
        self._waker.wake()
        if self._thread.ident is not None:
            self._thread.join(JOIN_TIMEOUT)
        self.holds.close()
        for session in list(self.sessions):
            session.abort("the proxy quit", reset=False)
        for session in list(self.sessions):
            session.join(JOIN_TIMEOUT)
        self._listener.close()
        self._waker.close()
        if self.recording is not None:
            self.recording.close()

    # ------------------------------------------------------------------ for the pumps
    def firings(self, pump: Pump, framing: Framing, total_before: int, first: int, last: int
                ) -> list[tuple[int, Callable[[], None]]]:
        """Where armed triggers of this flow match in this feed, with what to do there."""
        triggers = self._triggers[pump.flow]
        if not triggers:
            return []
        out: list[tuple[int, Callable[[], None]]] = []
        with self._lock:
            for armed in list(triggers):
                assert armed.trigger is not None
                hit = armed.trigger.scan(framing, total_before, first, last)
                if hit is None:
                    continue
                triggers.remove(armed)
                armed.state = "fired"
                position, frame = hit
                out.append((position, functools.partial(self._fire, armed, pump, position,
                                                        frame)))
        return out

    def frame_faults(self, flow: str) -> list[FrameFault]:
        faults = self._frame_faults[flow]
        if not faults:
            return []
        now = time.monotonic()
        with self._lock:
            faults[:] = [f for f in faults if not f.done and (f.until is None or now < f.until)]
            return list(faults)

    def claim(self, fault: FrameFault) -> bool:
        """Whether `fault` may act on a frame now (a one-shot fault acts once)."""
        with self._lock:
            if fault.done:
                return False
            if fault.until is None:
                fault.done = True
            elif time.monotonic() >= fault.until:
                fault.done = True
                return False
            return True

    def fault_acted(self, armed: Armed, session: Session | None, flow: str, offset: int,
                    frame: str | None, detail: dict[str, Any]) -> None:
        fault = armed.fault
        assert fault is not None
        record = {"id": armed.id, "kind": fault.kind, "channel": fault.channel,
                  "direction": fault.direction, "flow": flow,
                  "session": session.n if session else None, "offset": offset,
                  "frame": frame, "detail": detail}
        with self._lock:
            self.faults.append(record)
        self.emit("FAULT", record)

    def framing_lost(self, session: Session, flow: str, message: str) -> None:
        log.warning("session %d, %s flow: %s (bytes pass through unchanged)", session.n, flow,
                    message)
        record = {"session": session.n, "channel": flow, "message": message}
        with self._lock:
            self.framing_errors.append(record)
        self.emit("FRAMING_LOST", record)

    def report_error(self, session: Session | None, what: str, exc: BaseException) -> None:
        text = f"{what}: {type(exc).__name__}: {exc}"
        with self._lock:
            self.errors.append(text)
        self.emit("PROXY_ERROR", {"session": session.n if session else None, "error": text})

    def channel_identified(self, session: Session) -> None:
        """A multifd session knows its channel: faults waiting for it act now."""
        with self._lock:
            waiting = [a for a in self._next_session if _wants(a, session)]
            self._next_session = [a for a in self._next_session if a not in waiting]
        self.emit("SESSION", {"n": session.n, "event": "identified",
                              "channel": session.channel,
                              "main": session.main.n if session.main else None})
        for armed in waiting:
            self._act(armed, session, None, 0)

    def session_closed(self, session: Session) -> None:
        self.emit("SESSION", {"n": session.n, "event": "closed", "reason": session.reason})

    # ------------------------------------------------------------------ firing
    def _fire(self, armed: Armed, pump: Pump, position: int, frame: Frame | None) -> None:
        trigger = armed.trigger
        assert trigger is not None
        count = trigger.after if trigger.kind == "bytes" else trigger.seen
        armed.fired = {"session": pump.session.n, "channel": pump.flow, "offset": position,
                       "frame": frame.name if frame else None, "count": count}
        if armed.hold:  # in place before anyone hears of it: a release may come at once
            self.holds.hold(armed.id)
        self.emit("WIRE", {"id": armed.id, "trigger": trigger.spec, **armed.fired,
                           "held": armed.hold})
        if armed.fault is not None:
            self._act(armed, pump.session, pump, position)

    def _act(self, armed: Armed, session: Session | None, origin: Pump | None,
             position: int) -> None:
        """Make the fault act: on `session` (None: the next one), from `position` of the
        flow `origin` forwards when a trigger matched there."""
        fault = armed.fault
        assert fault is not None
        if fault.kind in FRAME_FAULTS:
            self._pend_frame_fault(armed, session, origin, position)
            return
        with self._lock:  # as channel_identified looks: a channel named meanwhile is found
            session, origin = _channel_session(armed, session, origin)
            if session is None:
                self._next_session.append(armed)
                return
        offsets = {flow: position if origin is not None and origin.flow == flow
                   else session.pumps[flow].forwarded for flow in armed.flows}
        if fault.kind == "net.reset":
            flow = origin.flow if origin is not None else next(iter(session.pumps))
            self.fault_acted(armed, session, flow, offsets.get(flow, position), None, {})
            session.abort(f"net.reset ({armed.id})", reset=True)
            return
        for flow in armed.flows:
            outlet = session.pumps[flow].outlet
            detail: dict[str, Any] = {}
            if fault.kind == "net.half-close":
                outlet.close_write()
            elif fault.kind == "net.blackhole":
                outlet.blackhole(fault.duration)
                detail = {"duration": fault.duration}
            elif fault.kind in SHAPING_FAULTS:
                value = float((fault.rate if fault.kind == "net.bandwidth" else fault.delay) or 0)
                outlet.shape(fault.kind, value, fault.duration)
                detail = {"duration": fault.duration,
                          ("rate" if fault.kind == "net.bandwidth" else "delay"): value}
            self.fault_acted(armed, session, flow, offsets[flow], None, detail)

    def _pend_frame_fault(self, armed: Armed, session: Session | None, origin: Pump | None,
                          position: int) -> None:
        fault = armed.fault
        assert fault is not None
        pending = FrameFault(armed, fault, armed.flows,
                             random.Random(f"{self.seed}/{armed.id}"),
                             session=session.n if origin is not None and session else 0,
                             from_flow=origin.flow if origin is not None else "",
                             from_offset=position,
                             until=None if fault.duration is None
                             else time.monotonic() + fault.duration)
        with self._lock:
            for flow in armed.flows:
                self._frame_faults[flow].append(pending)
        if origin is not None and origin.flow in armed.flows:
            origin.aim(pending)

    def _live_session(self) -> Session | None:
        with self._lock:
            live = [s for s in self.sessions if s.state == "open"]
        return live[-1] if live else None

    # ------------------------------------------------------------------ accepting
    def _accept_loop(self) -> None:
        try:
            while self.state is ProxyState.RUNNING:
                conn = self._listener.accept(self._waker, _ACCEPT_SLICE)
                self._look_after_sessions()
                if conn is not None:
                    self._open_session(conn)
        except Stopped:
            pass
        except Exception as exc:  # reported, never silent
            log.error("proxy: the accept thread failed", exc_info=exc)
            self.report_error(None, "accept thread", exc)

    def _look_after_sessions(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions):
            session.check_deadline(now)

    def _next_role(self) -> tuple[Session | None | bool, str]:
        """What the connection just accepted is: (False, main), or (its main session, the
        channel kind: preempt or multifd); a main that failed to connect is None."""
        main = self._awaiting
        if main is False:
            # until it is known to work, its channels follow a failed main connection
            if self.preempt or self.multifd:
                self._awaiting, self._multifd_left = None, self.multifd
            return False, MAIN
        if self.preempt:
            self._awaiting = False
            return main, PREEMPT
        self._multifd_left -= 1
        if self._multifd_left <= 0:
            self._awaiting = False
        return main, MULTIFD

    def _open_session(self, conn: socket.socket) -> None:
        n = next(self._numbers)
        target = self.target
        main, kind = self._next_role()
        channel = {"channel": kind} if self.preempt or self.multifd else {}
        try:
            if main is None:
                raise OSError(f"it would be the {kind} channel of a main connection that "
                              "could not reach the target")
            upstream = connect_target(target, CONNECT_TIMEOUT)
            if self.tls is not None:  # both handshakes, before the session starts
                self.tls.terminate(conn, upstream, target)
        except (TransportError, OSError) as exc:
            conn.close()
            self.emit("SESSION", {"n": n, "event": "accepted", "reason": "", **channel})
            self.emit("SESSION", {"n": n, "event": "closed", **channel,
                                  "reason": f"cannot connect to the target {target}: {exc}"})
            return
        session = Session(self, n, conn, upstream, main if isinstance(main, Session) else None,
                          kind)
        with self._lock:
            self.sessions.append(session)
            if session.main is not None and kind == MULTIFD:
                session.main.multifd.append(session)
            elif session.main is not None:
                session.main.preempt = session
            elif self.preempt or self.multifd:
                self._awaiting = session
            waiting = [a for a in self._next_session if _wants(a, session)]
            self._next_session = [a for a in self._next_session if a not in waiting]
        self.emit("SESSION", {"n": n, "event": "accepted", "reason": "", **channel})
        for armed in waiting:
            self._act(armed, session, None, 0)
        session.start()


def _wants(armed: Armed, session: Session) -> bool:
    """Whether a fault waiting for the next session acts on this one (its channel's)."""
    pumps = session.pumps
    return all(flow in pumps for flow in armed.flows)


def _channel_session(armed: Armed, session: Session | None, origin: Pump | None
                     ) -> tuple[Session | None, Pump | None]:
    """The session of the channel a connection-wide fault names: a preempt or multifd-N
    fault fired on the main connection acts on that channel's connection, and the other
    way round (from where that connection is: `origin` is None then)."""
    if session is None or _wants(armed, session):
        return session, origin
    home = session.main or session
    for other in reversed([home, home.preempt, *home.multifd]):
        if other is not None and _wants(armed, other):
            return other, None
    return None, None
