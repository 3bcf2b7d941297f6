"""One flow of one session: receive, frame, let triggers and faults act, deliver.

Strategy: a `Pump` is the thread that owns a flow.  It reads up to 4 MiB at a time
straight into the framer's buffer (the decoder's own, for the migration stream), lets
the framer say which frames that completed, and forwards up to the last whole frame
(`boundary`): a partial record waits for the rest of itself, so every frame is known
before its first byte leaves (the receiver could not use half a record anyway; should
the sender go quiet for PARTIAL_WAIT with a partial frame held, it is forwarded as it is,
and frame faults then skip that frame).  Between reading and forwarding, the feed's positions of
interest are put in order: where armed triggers match (the proxy decides) and where a
truncation cuts.  Forwarding stops at each, the action runs, forwarding goes on.
Changes inside frames (drop, duplicate, corrupt, and a PACKAGED length that follows)
are `Edit`s applied as the bytes are forwarded, so the input buffer is never modified
and nothing is copied on the fast path.  After the end of its input a pump passes the
EOF on (the receiver's writing side is shut) and ends; the session ends when both have.
A multifd channel's pump starts as flow `multifd`: its bytes are counted, and the flow's
triggers looked at, once the framer has read the init and named the flow `multifd-<id>`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness.protocol.wire import pack_be32

from .endpoint import Endpoint, Quiet, Stopped
from .framing import MAIN, Frame, Framer, Framing
from .multifd import MULTIFD
from .netfaults import Cut, Edit, FrameFault
from .outlet import Outlet

if TYPE_CHECKING:
    from .proxy import Session

__all__ = ["CHUNK", "Pump"]

log = logging.getLogger(__name__)

CHUNK = 4 << 20  # bytes read per receive on the migration stream
RETURN_PATH_CHUNK = 256 << 10  # and on the return path (small messages, a bitmap at most)
PARTIAL_WAIT = 0.5  # s a partial frame is held while the sender sends nothing more
FINISH_TIMEOUT = 30.0  # s: queued (delayed) bytes still delivered after the input ended


class Pump:
    """The forwarding thread of one flow (`main` or `return-path`) of a session."""

    def __init__(self, session: Session, flow: str, inlet: Endpoint, outlet: Outlet,
                 framer: Framer) -> None:
        self.session = session
        self.proxy = session.proxy
        self.flow = flow
        self.inlet = inlet
        self.outlet = outlet
        self.framer = framer
        self.forwarded = 0  # input offset up to which bytes were delivered or discarded
        self.edits: list[Edit] = []
        self.ended = ""  # "eof" once the input ended
        self._framing = Framing()
        self._actions: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._uncounted = 0  # bytes read before a multifd channel's init named the flow
        self._package_lengths: dict[int, int] = {}  # PACKAGED start -> blob length
        self._package_fixes: dict[int, Edit] = {}
        self.thread = threading.Thread(target=self.run, daemon=True,
                                       name=f"proxy session {session.n} {flow}")

    def run(self) -> None:
        try:
            self._pump()
        except Stopped:
            pass
        except OSError as exc:
            self.session.broken(self.flow, exc)
        except Exception as exc:  # noqa: BLE001 -- reported, never silent
            self.session.crashed(f"{self.flow} pump", exc)
        finally:
            self.session.pump_done(self)

    def _pump(self) -> None:
        framer, stopped = self.framer, self.session.stopped
        chunk = CHUNK if self.flow in (MAIN, MULTIFD) else RETURN_PATH_CHUNK
        while not stopped.is_set():
            first = framer.received
            try:
                n = framer.receive_into(self._receive, chunk)
            except Quiet:
                self._forward(framer.received)  # a partial frame goes as it is
                continue
            if n:
                framing = framer.take()
                if framer.flow != self.flow:
                    self._named(framer.flow)
                if self.flow == MULTIFD:  # counted once the init names the flow
                    self._uncounted += n
                    continue
                first -= self._uncounted
                total = self.proxy.stats.received(self.flow, n + self._uncounted)
                self._uncounted = 0
                self._feed(framing, first, total, eof=False)
                continue
            framer.end_of_input()
            total = self.proxy.stats.received(self.flow, self._uncounted)
            self._feed(framer.take(), first - self._uncounted, total, eof=True)
            self.ended = "eof"
            self.session.input_ended(self.flow)
            self.outlet.finish(FINISH_TIMEOUT)
            return

    def _named(self, flow: str) -> None:
        """The framer named this flow (a multifd channel's id is known)."""
        self.flow = self.outlet.flow = flow
        self.thread.name = f"proxy session {self.session.n} {flow}"
        self.session.identified(self, flow)

    def _receive(self, view: memoryview) -> int:
        held = self.framer.received > self.forwarded
        return self.inlet.recv_into(view, PARTIAL_WAIT if held else None)

    # ------------------------------------------------------------------ one feed
    def _feed(self, framing: Framing, first: int, total_before: int, eof: bool) -> None:
        last = self.framer.received
        self._framing = framing
        if framing.lost:
            self.proxy.framing_lost(self.session, self.flow, framing.lost)
        self.proxy.stats.frames_seen(self.flow, framing)
        for frame in framing.frames:
            if frame.name == "PACKAGED":
                self._package_lengths[frame.start] = frame.end - frame.payload
        for position, action in self.proxy.firings(self, framing, total_before, first, last):
            self.schedule(position, action)
        for fault in self.proxy.frame_faults(self.flow):
            self.aim(fault)
        while self._actions:
            position, _, action = heapq.heappop(self._actions)
            self._forward(position)
            action()
            if self.session.stopped.is_set():
                return
        self._forward(last if eof else framing.boundary)

    def schedule(self, position: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._actions, (position, next(self._seq), action))

    # ------------------------------------------------------------------ frame faults
    def aim(self, fault: FrameFault) -> None:
        """Look for the fault's frames in this feed, from what is not forwarded yet."""
        lo = self.forwarded
        if fault.session == self.session.n and fault.from_flow == self.flow:
            lo = max(lo, fault.from_offset)
        for frame in fault.candidates(self._framing, lo):
            if not self._applicable(fault, frame):
                continue
            if not self.proxy.claim(fault):
                return
            self._apply(fault, frame)
            if fault.until is None:
                return

    def _applicable(self, fault: FrameFault, frame: Frame) -> bool:
        if any(edit.overlaps(frame.start, frame.end) for edit in self.edits):
            return False
        if fault.resizes and frame.package >= 0:
            # the package's length must be rewritten, so its header must still be here
            return frame.depth == 1 and self.forwarded <= frame.package + 5
        return True

    def _apply(self, fault: FrameFault, frame: Frame) -> None:
        kind = fault.fault.kind
        detail: dict[str, Any]
        if kind == "net.truncate":
            cut, detail = fault.truncate(frame)
            self.schedule(cut.offset, lambda: self._truncate(cut, fault))
            self.proxy.fault_acted(fault.armed, self.session, self.flow, cut.offset,
                                   frame.name, detail)
            return
        if kind == "net.corrupt":
            edit, detail = fault.corrupt(frame, self._byte_at)
        elif kind == "net.drop":
            edit, detail = Edit(frame.start, frame.end), {"bytes": frame.end - frame.start}
        else:
            with self.framer.view(frame.start, frame.end) as view:
                edit = Edit(frame.end, frame.end, bytes(view))
            detail = {"bytes": frame.end - frame.start}
        detail["frame-start"] = frame.start
        bisect.insort(self.edits, edit)
        if fault.resizes and frame.package >= 0:
            self._fix_package(frame.package, edit.delta)
            detail["packaged"] = frame.package
        self.proxy.fault_acted(fault.armed, self.session, self.flow, edit.start, frame.name,
                               detail)

    def _byte_at(self, offset: int) -> int:
        with self.framer.view(offset, offset + 1) as view:
            return int(view[0])

    def _fix_package(self, package: int, delta: int) -> None:
        """Rewrite the be32 length of the PACKAGED command at `package` by `delta`."""
        fix = self._package_fixes.get(package)
        if fix is None:
            length = self._package_lengths[package]
            fix = Edit(package + 5, package + 9, pack_be32(length))
            self._package_fixes[package] = fix
            bisect.insort(self.edits, fix)
        fix.data = pack_be32(int.from_bytes(fix.data, "big") + delta)

    def _truncate(self, cut: Cut, fault: FrameFault) -> None:
        self.session.close_gracefully(f"net.truncate ({fault.armed.id}) cut the {self.flow} "
                                      f"flow at offset {cut.offset}")

    # ------------------------------------------------------------------ forwarding
    def _forward(self, to: int) -> None:
        """Deliver input [forwarded, to) with the edits that fall in it."""
        pos = self.forwarded
        if to <= pos:
            return
        edits = self.edits
        while edits and edits[0].start <= to:
            edit = edits[0]
            if edit.start > pos:
                self._deliver(pos, edit.start)
                pos = edit.start
            if not edit.done:
                edit.done = True
                if edit.data:
                    self._send(edit.data)
            pos = max(pos, min(edit.end, to))  # the bytes it replaces are skipped
            if edit.end > to:
                break  # the edit goes on beyond `to`
            edits.pop(0)
            if edit.delta < 0:
                self.proxy.stats.add(self.flow, "discarded", -edit.delta)
        if pos < to:
            self._deliver(pos, to)
        self.forwarded = to
        self.framer.release(to)

    def _deliver(self, start: int, end: int) -> None:
        with self.framer.view(start, end) as view:
            self._send(view)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        recording = self.proxy.recording
        if recording is not None:  # what the receiving side gets, faults applied
            recording.write(self.flow, data)
        self.outlet.deliver(data)
