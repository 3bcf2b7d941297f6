"""Wire triggers: the exact stream position at which an armed effect starts.

Strategy: a trigger arrives as the scenario writes it (`{"event": "page-request",
"count": 3}`, `{"command": "POSTCOPY_RUN"}`, `{"frame": "SECTION_END", "count": 1}`
(`"section": IDSTR` narrows a section frame to one device section),
`{"bytes": {"channel": "main", "after": N}}`, `{"frame": "RAM_PAGE", "channel": "preempt"}`)
and is checked with the scenario's own models, so the proxy accepts exactly what a
scenario file may say.  A `WireTrigger` watches one flow and counts, from the moment it is
armed, the frames it matches as the framer reports them; it matches when the count-th
one has been completely received, and its position is where that frame ends (for a
section: where its header ends; for bytes: right after the N-th byte).  Matching happens
in the forwarding thread of that flow, on whole frames, so the position is exact
whatever the chunking.  A `probability` below 1 is drawn from the seed at each
occurrence (the count-th matching frame, then each later one; a bytes trigger has one),
as the runner draws its own triggers.  RAM_PAGE records (the preempt channel's) are
counted from the framer's page batches, with numpy, never one Python object per page.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from harness.errors import ScenarioFailure
from harness.scenario.base import FieldError, dotted
from harness.scenario.names import RETURN_PATH_ONLY, multifd_channel_id
from harness.scenario.steps import (
    BytesTrigger,
    CommandTrigger,
    EventTrigger,
    FrameTrigger,
    Trigger,
)

from .framing import MAIN, PREEMPT, RETURN_PATH, Frame, Framing

__all__ = ["TriggerError", "WireTrigger", "parse_trigger"]

_TRIGGER: TypeAdapter[Any] = TypeAdapter(Trigger)
_PAGE_REQUESTS = ("REQ_PAGES", "REQ_PAGES_ID")


class TriggerError(ScenarioFailure, ValueError):
    """A trigger the proxy cannot evaluate; the message says why."""


@dataclass
class WireTrigger:
    """One armed wire trigger: what it matches on which flow, and how many it has seen."""

    spec: dict[str, Any]  # as given (for events and queries)
    kind: str  # "event" | "command" | "frame" | "bytes"
    flow: str
    what: str = ""  # the event name, or the MIG_CMD name
    count: int = 1
    after: int = 0  # bytes
    seen: int = 0
    start_total: int | None = None  # bytes: the flow's byte total when armed
    probability: float = 1.0
    draw_seed: str = ""  # occurrence k is drawn with random.Random(f"{draw_seed}/{k}")
    declined: int = 0  # occurrences the draw said no to
    section: str | None = None  # frame: only this device section's frames (its idstr)

    def _drawn(self) -> bool:
        if self.probability >= 1.0:
            return True
        occurrence = self.declined + 1
        if random.Random(f"{self.draw_seed}/{occurrence}").random() < self.probability:
            return True
        self.declined += 1
        return False

    def matches(self, frame: Frame) -> bool:
        if self.kind == "command":
            return frame.kind == "command" and frame.name == self.what
        if self.kind == "frame":
            return frame.name == self.what and (self.section is None
                                                or frame.detail == self.section)
        what = self.what
        if what == "section":
            return frame.kind == "section"
        if what == "command":
            return frame.kind == "command"
        if what == "pong":
            return frame.name == "PONG"
        return frame.name in _PAGE_REQUESTS  # page-request

    def _where(self) -> str:
        """A section (by event or by name) counts once its header is in."""
        if self.kind == "frame" and self.what.startswith("SECTION_"):
            return "section"
        return self.what

    @staticmethod
    def position(frame: Frame, what: str) -> int:
        """Where the matched frame counts as completely received."""
        return frame.payload if what == "section" else frame.end

    def scan(self, framing: Framing, total_before: int, first: int, last: int
             ) -> tuple[int, Frame | None] | None:
        """Count this feed's frames (or bytes); the (position, frame) where the trigger
        matches, or None.  `total_before` is the flow's byte total at input offset
        `first`; the feed covers input offsets [first, last)."""
        if self.kind == "bytes":
            assert self.start_total is not None
            target = self.start_total + self.after
            if self.declined or not (last > first and target <= total_before + last - first):
                return None
            return (first + max(0, target - total_before), None) if self._drawn() else None
        if self.what == "RAM_PAGE":
            return self._scan_pages(framing)
        for frame in framing.frames:
            if self.matches(frame):
                self.seen += 1
                if self.seen >= self.count and self._drawn():
                    return self.position(frame, self._where()), frame
        return None


    def _scan_pages(self, framing: Framing) -> tuple[int, Frame | None] | None:
        """The count-th page record of this feed's batches (then each later one, drawn)."""
        for batch in framing.pages:
            spans = batch.spans
            if spans is None:
                continue
            n = len(batch)
            index = max(0, self.count - self.seen - 1)
            self.seen += n
            while index < n:
                if self._drawn():
                    start, payload, end = (int(x) for x in spans[index])
                    page = f"{batch.block}@0x{int(batch.offsets[index]):x}"
                    self.seen -= n - index - 1
                    return end, Frame("RAM_PAGE", start, payload, end, "page", detail=page)
                index += 1
        return None


def parse_trigger(value: Mapping[str, Any], *, probability: float | None = None,
                  draw_seed: str = "") -> WireTrigger:
    """The proxy's trigger for a scenario trigger mapping (TriggerError if not a wire one).

    `probability` (if given) overrides the mapping's own; occurrences are drawn from
    `draw_seed`."""
    mapping = dict(value)
    if probability is not None:
        mapping["probability"] = probability
    try:
        model = _TRIGGER.validate_python(mapping)
    except (ValidationError, FieldError) as err:
        raise TriggerError(f"trigger {dict(value)!r}: {_words(err)}") from None
    spec = dict(value)
    if isinstance(model, EventTrigger):
        flow = RETURN_PATH if model.event in ("page-request", "pong") else MAIN
        trigger = WireTrigger(spec, "event", flow, model.event, model.count)
    elif isinstance(model, CommandTrigger):
        trigger = WireTrigger(spec, "command", MAIN, model.command)
    elif isinstance(model, FrameTrigger):
        flow = model.channel if model.channel in (PREEMPT, *_multifd(model.channel)) else \
            RETURN_PATH if model.frame in RETURN_PATH_ONLY else MAIN
        trigger = WireTrigger(spec, "frame", flow, model.frame, model.count,
                              section=model.section)
    elif isinstance(model, BytesTrigger):
        if model.bytes.after < 1:
            raise TriggerError("a bytes trigger needs after: of at least 1 byte")
        trigger = WireTrigger(spec, "bytes", model.bytes.channel, after=model.bytes.after)
    else:
        raise TriggerError(f"the proxy evaluates wire triggers only (event, command, frame, "
                           f"bytes); "
                           f"a {model.kind} trigger is the runner's to evaluate")
    trigger.probability = model.probability
    trigger.draw_seed = draw_seed
    return trigger


def _multifd(channel: str | None) -> tuple[str, ...]:
    """(channel,) when it names a multifd channel (multifd-N), else ()."""
    return (channel,) if channel is not None and multifd_channel_id(channel) is not None \
        else ()


def _words(err: ValidationError | FieldError) -> str:
    if isinstance(err, FieldError):
        return str(err)
    parts = []
    for item in err.errors():
        where = dotted(item["loc"][1:])  # loc[0] is the union's tag
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
