"""How each network fault acts on the bytes between the peers (user-facing semantics).

Channels and directions.  The proxy forwards two flows of one connection: `main`, the
migration stream (source -> destination), and `return-path` (destination -> source).  A
fault's `direction` is relative to its channel's own flow: (main, forward) and
(return-path, backward) are source -> destination bytes; (main, backward) and
(return-path, forward) are destination -> source bytes; `both` is both flows.  The
`preempt` channel (postcopy-preempt's second connection) carries source -> destination
bytes only: forward and both name that flow, backward names nothing.  So does each
multifd channel, `multifd-N`: the connection whose MultifdInit says id N (the id QEMU's own
messages print, not the order the source opened or the proxy accepted it); its frames are
MULTIFD_INIT (all header) and MULTIFD_PACKET (1344-byte header | pages), which net.corrupt
and net.truncate aim at by default there.  A fault
acts at the position where its trigger matched (the matching frame is forwarded first)
or, armed without a trigger, right away.  Connection-wide faults act on the session
where the trigger matched (without a trigger: the newest session, or the next one to be
accepted when there is none); later connections are not affected.

* net.reset: the session is aborted at that point: what was forwarded is delivered
  (bounded wait), then both sockets are closed with SO_LINGER 0, so on TCP both peers
  see a connection reset (ECONNRESET); on unix sockets both see the connection closed.
* net.half-close: the receiver of the chosen flow gets EOF (shutdown for writing, after
  anything still queued); later bytes of that flow are read and discarded; the other
  flow keeps flowing.  `both` closes both flows so, cleanly.
* net.blackhole: the chosen flows stop moving, the connection stays open: the proxy
  stops reading (the sender's socket fills and it blocks) and delivers nothing.  With
  `duration`, everything held is delivered when the window ends; without, never (until
  the session ends).
* net.delay: every chunk of the chosen flows is delivered `delay` seconds after it
  arrived, in order, for `duration` seconds or for good.  net.jitter: each chunk gets a
  random extra delay in [0, 2 x delay] (drawn from the seed), order still kept.
  net.bandwidth: the flows go through a token bucket at `rate` bytes/s.
* net.drop / net.duplicate: the next `message` of that type is removed / sent twice: a
  return-path message (REQ_PAGES, PONG, ... on destination -> source) or a MIG_CMD (on
  source -> destination); with `duration`, every one during the window.  Inside a
  PACKAGED blob the package's length is rewritten to match (only while the package's
  header has not left yet: a frame in a package already partly forwarded is skipped).
* net.corrupt: one byte of the next frame named `frame` (default RAM_PAGE; with `section:
  IDSTR`, the next such frame of that device section) is changed,
  in its `where` part (default payload; the other part if that one is empty).  Which
  byte, and its new value (old XOR a non-zero byte), are drawn from the seed; the FAULT
  event reports offset, old and new.  For RAM_PAGE payloads only normal pages count
  (4096 bytes): QEMU's format has no checksum, so the page still loads, with one byte
  wrong -- which is what the memory invariant must catch.
* net.truncate: the stream is delivered up to the middle of the `where` part (default
  payload) of the next frame named `frame` (default RAM_PAGE; PACKAGED cuts inside the
  blob), then the receiver reads EOF there, mid-frame, and the session is closed: both
  peers get EOF, later bytes are discarded, and the sockets close once both peers have
  closed theirs (or after 2 s).

A frame is "next" from the moment the fault is armed (or its trigger matched), on
whichever connection comes first.  A flow whose framing was lost (a decode error)
passes bytes unchanged and offers no frame faults or frame triggers any more.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from harness.errors import ScenarioFailure
from harness.protocol import RamFlag
from harness.scenario.base import FieldError, dotted
from harness.scenario.names import MIG_CMD_NAMES, MULTIFD_FRAME_NAMES, RP_MESSAGE_NAMES
from harness.scenario.steps import NetFault

from .framing import MAIN, PREEMPT, RETURN_PATH, Frame, Framing, frame_flows
from .multifd import is_multifd
from .triggers import WireTrigger

__all__ = ["FRAME_FAULTS", "SHAPING_FAULTS", "Armed", "Cut", "Edit", "FaultError",
           "FrameFault", "fault_flows", "flows_of", "parse_fault"]

SHAPING_FAULTS = ("net.delay", "net.jitter", "net.bandwidth")
FRAME_FAULTS = ("net.drop", "net.duplicate", "net.corrupt", "net.truncate")
_PAGE = int(RamFlag.PAGE)


class FaultError(ScenarioFailure, ValueError):
    """A fault the proxy cannot apply as given; the message says why."""


def flows_of(channel: str, direction: str) -> tuple[str, ...]:
    """The physical flows (main: source -> destination, return-path: back, preempt: source
    -> destination on the second connection) a fault names."""
    if channel == PREEMPT or is_multifd(channel):
        if direction == "backward":
            raise FaultError(f"the {channel} channel carries source -> destination bytes "
                             "only: direction backward names nothing on it")
        return (channel,)
    other = RETURN_PATH if channel == MAIN else MAIN
    if direction == "forward":
        return (channel,)
    if direction == "backward":
        return (other,)
    return (MAIN, RETURN_PATH)


def parse_fault(value: Mapping[str, Any]) -> NetFault:
    """A NetFault from its mapping (the scenario's fields; seconds and bytes as numbers)."""
    try:
        return NetFault.model_validate(dict(value))
    except (ValidationError, FieldError) as err:
        raise FaultError(f"fault {dict(value)!r}: {_fault_words(err)}") from None


def _fault_words(err: ValidationError | FieldError) -> str:
    if isinstance(err, FieldError):
        return str(err)
    parts = []
    for item in err.errors():
        where = dotted(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def fault_flows(fault: NetFault) -> tuple[str, ...]:
    """The flows the fault acts on, checked against the message or frame it names."""
    flows = flows_of(fault.channel, fault.direction)
    name = fault.message or (fault.frame if fault.kind in FRAME_FAULTS else None)
    if fault.kind in ("net.corrupt", "net.truncate"):
        name = fault.frame or default_frame(fault.channel)
        if name == "SUBSECTION":
            raise FaultError("SUBSECTION records lie inside device payloads, which the proxy "
                             "does not take apart: aim at SECTION_FULL instead")
    if name is None:
        return flows
    where = tuple(f for f in flows if f in _message_flows(name, fault.kind, flows))
    if not where:
        travels = " and ".join(_message_flows(name, fault.kind, flows)) or (
            "multifd-N" if name in MULTIFD_FRAME_NAMES else "")
        travels = travels or "no"
        raise FaultError(f"{name} travels on the {travels} flow, which ({fault.channel}, "
                         f"{fault.direction}) does not name (main forward = source -> "
                         f"destination, return-path forward = destination -> source, "
                         f"preempt: source -> destination requested pages)")
    return where


def default_frame(channel: str) -> str:
    """What net.corrupt and net.truncate aim at when no frame is named."""
    return "MULTIFD_PACKET" if is_multifd(channel) else "RAM_PAGE"


def _message_flows(name: str, kind: str, flows: tuple[str, ...]) -> tuple[str, ...]:
    if name in MULTIFD_FRAME_NAMES:
        return tuple(f for f in flows if is_multifd(f))
    if name == "RAM_PAGE" and kind in ("net.corrupt", "net.truncate"):
        return (MAIN, PREEMPT)  # page records: in the main stream's sections, bare on preempt
    if kind in ("net.drop", "net.duplicate"):
        flows = []
        if name in MIG_CMD_NAMES:
            flows.append(MAIN)
        if name in RP_MESSAGE_NAMES:
            flows.append(RETURN_PATH)
        return tuple(flows)
    return frame_flows(name)


@dataclass
class Armed:
    """One x-proxy-arm: a trigger (None: now), a fault and/or a hold."""

    id: str
    trigger: WireTrigger | None
    fault: NetFault | None
    hold: bool
    flows: tuple[str, ...] = ()
    state: str = "armed"  # armed | fired
    fired: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "trigger": self.trigger.spec if self.trigger else None,
                "fault": _fault_json(self.fault), "hold": self.hold, "state": self.state,
                **({"fired": self.fired} if self.fired else {})}


def _fault_json(fault: NetFault | None) -> dict[str, Any] | None:
    return None if fault is None else fault.model_dump(mode="json", exclude_none=True)


@dataclass(order=True)
class Edit:
    """Replace input bytes [start, end) with `data` when forwarding (insert: start == end)."""

    start: int
    end: int
    data: bytes = field(compare=False, default=b"")
    done: bool = field(compare=False, default=False)  # data already sent

    @property
    def delta(self) -> int:
        return len(self.data) - (self.end - self.start)

    def overlaps(self, start: int, end: int) -> bool:
        return start < self.end and self.start < end


@dataclass
class Cut:
    """Deliver up to `offset`, then end the flow mid-frame (net.truncate)."""

    offset: int


@dataclass
class FrameFault:
    """A pending drop, duplicate, corrupt or truncate, waiting for its frame."""

    armed: Armed
    fault: NetFault
    flows: tuple[str, ...]
    rng: random.Random
    session: int = 0  # where its trigger matched (0: armed without one)
    from_flow: str = ""  # the flow of that trigger
    from_offset: int = 0  # on that flow of that session: frames from this offset on
    until: float | None = None  # duration window end (monotonic): every frame till then
    done: bool = False

    @property
    def target(self) -> str:
        if self.fault.kind in ("net.drop", "net.duplicate"):
            assert self.fault.message is not None
            return self.fault.message
        return self.fault.frame or default_frame(self.fault.channel)

    @property
    def resizes(self) -> bool:
        return self.fault.kind in ("net.drop", "net.duplicate")

    @property
    def where(self) -> str:
        return self.fault.where or "payload"

    def candidates(self, framing: Framing, lo: int) -> Iterator[Frame]:
        """Frames of this feed it aims at, from input offset `lo` on, in stream order."""
        target = self.target
        if target != "RAM_PAGE":
            section = self.fault.section
            for frame in framing.frames:
                if frame.start >= lo and (frame.name == target or (
                        target == "COMMAND" and frame.kind == "command")) \
                        and (section is None or frame.detail == section):
                    yield frame
            return
        for batch in framing.pages:
            spans = batch.spans
            if spans is None or spans[-1, 0] < lo:
                continue
            mask = spans[:, 0] >= lo
            if self.fault.kind == "net.corrupt" and self.where == "payload":
                mask &= batch.kinds == _PAGE
            for index in np.flatnonzero(mask).tolist():
                start, payload, end = (int(x) for x in spans[index])
                page = f"{batch.block}@0x{int(batch.offsets[index]):x}"
                yield Frame("RAM_PAGE", start, payload, end, "page", detail=page)

    def part(self, frame: Frame) -> tuple[int, int, str]:
        """The [start, end) the fault aims at in `frame`, and which part that is."""
        where = self.where
        lo, hi = frame.part(where)
        if hi == lo:
            where = "header" if where == "payload" else "payload"
            lo, hi = frame.part(where)
        return lo, hi, where

    def corrupt(self, frame: Frame, old_byte: Callable[[int], int]
                ) -> tuple[Edit, dict[str, Any]]:
        lo, hi, where = self.part(frame)
        offset = lo + self.rng.randrange(hi - lo)
        old = old_byte(offset)
        new = old ^ self.rng.randrange(1, 256)
        return Edit(offset, offset + 1, bytes((new,))), {
            "where": where, "offset": offset, "old": old, "new": new,
            "frame-start": frame.start, "frame-end": frame.end, **_page(frame)}

    def truncate(self, frame: Frame) -> tuple[Cut, dict[str, Any]]:
        lo, hi, where = self.part(frame)
        cut = lo + (hi - lo) // 2
        return Cut(cut), {"where": where, "cut": cut, "frame-start": frame.start,
                          "frame-end": frame.end, **_page(frame)}


def _page(frame: Frame) -> dict[str, str]:
    """A RAM page's "block@0xoffset", for a fault's record."""
    return {"page": frame.detail} if frame.kind == "page" else {}
