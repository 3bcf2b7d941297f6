"""`inject` and `trigger`: a scenario's faults and steps, typed at the console.

Strategy: the words are `key=value` pairs that become the very pydantic models a
scenario file's `fault:` and `on:` become (harness.scenario.steps), so sizes, durations
and every error read as in a scenario file.  `inject KIND key=value...` is a fault fired
now; `trigger TRIGGER-KEYS... EFFECT [key=value...]` arms one for a moment of the
protocol, EFFECT being a fault kind or an action.  What fires where is the runner's
split (harness.runner.steps): a trigger only the wire shows (event, command, frame,
bytes) is armed in the proxy, which applies a network fault at that byte or holds the
stream while the console carries out a process fault or an action; the others (pass,
status, time, remaining, progress) are watched by the console's event thread.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from harness.scenario import steps as model
from harness.scenario.names import FAULT_KINDS, LINK_FAULT_KINDS, PLAIN_ACTIONS
from harness.scenario.units import format_duration, format_rate, format_size

from .hmp import MonitorError, UsageError, validation_text

_FAULTS: TypeAdapter[Any] = TypeAdapter(model.Fault)
_TRIGGERS: TypeAdapter[Any] = TypeAdapter(model.Trigger)
_FAULT_TAGS = frozenset({"process", "net", "link"})
WIRE_TRIGGERS = (model.EventTrigger, model.CommandTrigger, model.FrameTrigger,
                 model.BytesTrigger)
#: action words (QMP's, or HMP's with underscores) -> the scenario's action name
ACTIONS = {**{a: a for a in PLAIN_ACTIONS}, **{a.replace("-", "_"): a for a in PLAIN_ACTIONS}}
#: the keys each fault kind takes (for help and completion)
FAULT_KEYS: dict[str, tuple[str, ...]] = {
    "kill": ("target",), "stop": ("target", "duration"), "crash": ("target",),
    **{kind: ("channel", "direction", *sorted(req | opt))
       for kind, (req, opt) in model.NET_FAULT_FIELDS.items()},
}
TRIGGER_KEYS = ("event", "command", "frame", "bytes", "pass", "status", "time", "remaining",
                "progress", "count", "channel", "peer", "probability")


@dataclass
class Effect:
    """What a trigger or `inject` does: a fault (process or network) or an action."""

    fault: model.ProcessFault | model.NetFault | None = None
    action: str | None = None

    def describe(self) -> str:
        if self.action is not None:
            return self.action
        assert self.fault is not None
        data = self.fault.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        kind = data.pop("kind", self.fault.kind)
        return " ".join([kind, *_flat(data)])


@dataclass
class Trigger:
    """One `trigger` typed at the console; `proxy_id` when armed in the proxy."""

    number: int
    on: Any  # a harness.scenario.steps trigger model
    effect: Effect
    armed_at: float = field(default_factory=time.monotonic)
    proxy_id: str | None = None
    state: str = "armed"  # armed | fired
    occurrences: int = 0
    result: str = ""

    @property
    def name(self) -> str:
        return f"t{self.number}"

    @property
    def wire(self) -> bool:
        return isinstance(self.on, WIRE_TRIGGERS)

    def describe(self) -> str:
        """The trigger as it is typed: `status=postcopy-active peer=destination`."""
        data = self.on.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        nested = {"status": ("is", "peer"), "bytes": ("after", "channel"),
                  "remaining": ("below",)}
        for key, (main, *others) in nested.items():
            if isinstance(data.get(key), dict):
                inner = data.pop(key)
                data = {key: inner.get(main), **{k: inner[k] for k in others if k in inner},
                        **data}
        return " ".join(_flat(data))


def _flat(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _flat(value, f"{key}.")
        else:
            out.append(f"{prefix}{key}={_quantity(key, value)}")
    return out


def _quantity(key: str, value: Any) -> Any:
    """Seconds and bytes as a scenario file writes them (300ms, 8 MiB, 4 MiB/s)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if key in ("duration", "delay", "time"):
        return format_duration(value)
    if key == "rate":
        return format_rate(int(value)).replace(" ", "")
    if key == "progress":
        return f"{value:g}%"
    if key in ("after", "below", "bytes", "remaining"):
        return format_size(int(value)).replace(" ", "")
    return value


# ---------------------------------------------------------------------- parsing
def pairs(command: str, words: list[str]) -> dict[str, Any]:
    """key=value words -> a mapping (numbers as numbers, as YAML would read them)."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise UsageError(command, f"{command}: expected key=value, got {word!r}")
        if key in out:
            raise UsageError(command, f"{command}: {key} is given twice")
        out[key] = _number(value)
    return out


def _number(text: str) -> Any:
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"-?[0-9]*\.[0-9]+", text):
        return float(text)
    return text


def parse_fault(command: str, kind: str, words: list[str]) -> Effect:
    """`KIND key=value...` -> a checked fault (harness.scenario.steps.Fault)."""
    try:
        fault = _FAULTS.validate_python({"kind": kind, **pairs(command, words)})
    except ValidationError as err:
        raise MonitorError(f"{command} {kind}: {validation_text(err, _FAULT_TAGS)}") from None
    if kind in LINK_FAULT_KINDS:
        raise MonitorError(f"{command}: {kind} acts on a host's network link; link faults "
                           f"need multi-host runs, which this console does not have")
    return Effect(fault=fault)


def parse_inject(words: list[str]) -> Effect:
    if not words:
        raise UsageError("inject", "inject: which fault? (one of: " + ", ".join(FAULT_KINDS)
                         + ")")
    return parse_fault("inject", words[0], words[1:])


def parse_trigger(words: list[str]) -> tuple[Any, Effect]:
    """`TRIGGER-KEYS... EFFECT [key=value...]` -> (trigger model, effect)."""
    head = next((i for i, w in enumerate(words) if "=" not in w), None)
    if head is None or head == 0:
        raise UsageError("trigger", "trigger: expected trigger keys (such as pass=2), then "
                                    "a fault kind or an action")
    word, rest = words[head], words[head + 1:]
    chance = [w for w in rest if w.startswith("probability=")]  # the trigger's, anywhere
    rest = [w for w in rest if w not in chance]
    on = parse_condition(pairs("trigger", words[:head] + chance))
    if word in FAULT_KINDS and (rest or word not in ACTIONS):  # `stop` alone: the action
        return on, parse_fault("trigger", word, rest)
    if word in ACTIONS:
        if rest:
            raise UsageError("trigger", f"trigger: {word} takes no arguments")
        return on, Effect(action=ACTIONS[word])
    raise MonitorError(f"trigger: {word!r} is neither a fault kind nor an action (faults: "
                       f"{', '.join(FAULT_KINDS)}; actions: {', '.join(PLAIN_ACTIONS)})")


def parse_condition(keys: dict[str, Any]) -> Any:
    """The flat keys typed -> the scenario's trigger shape, then the model."""
    if "bytes" in keys:
        keys["bytes"] = {"after": keys.pop("bytes"),
                         **({"channel": keys.pop("channel")} if "channel" in keys else {})}
    if "status" in keys:
        keys["status"] = {"peer": keys.pop("peer", "source"), "is": keys["status"]}
    if "remaining" in keys:
        keys["remaining"] = {"below": keys["remaining"]}
    try:
        return _TRIGGERS.validate_python(keys)
    except ValidationError as err:
        tags = frozenset(model.TRIGGER_KEYS)
        raise MonitorError(f"trigger: {validation_text(err, tags)}") from None


# ---------------------------------------------------------------------- the book
class TriggerBook:
    """Every trigger typed at the console; the main thread adds, the event thread fires."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._triggers: list[Trigger] = []
        self._random = random.Random(seed)
        self._numbers = itertools.count(1)

    def new(self, on: Any, effect: Effect) -> Trigger:
        with self._lock:
            return Trigger(next(self._numbers), on, effect)

    def add(self, trigger: Trigger) -> None:
        with self._lock:
            self._triggers.append(trigger)

    def all(self) -> list[Trigger]:
        with self._lock:
            return list(self._triggers)

    def by_proxy_id(self, proxy_id: str) -> Trigger | None:
        with self._lock:
            return next((t for t in self._triggers if t.proxy_id == proxy_id), None)

    def armed_local(self) -> list[Trigger]:
        with self._lock:
            return [t for t in self._triggers if t.state == "armed" and not t.wire]

    def draw(self, trigger: Trigger) -> bool:
        """One occurrence of a console-side trigger: does it fire (its probability)?"""
        trigger.occurrences += 1
        with self._lock:
            return self._random.random() < trigger.on.probability


def needs_stats(triggers: list[Trigger]) -> bool:
    """Whether an armed trigger watches the source's query-migrate."""
    return any(isinstance(t.on, (model.RemainingTrigger, model.ProgressTrigger))
               for t in triggers)


@dataclass
class Observed:
    """What the event thread has seen of the migration, for console-side triggers."""

    passes: int = 0
    statuses: dict[str, list[tuple[float, str]]] = field(
        default_factory=lambda: {"source": [], "destination": []})
    ram: dict[str, Any] = field(default_factory=dict)

    def entries(self, peer: str, status: str, since: float) -> int:
        return sum(1 for at, s in self.statuses.get(peer, []) if s == status and at >= since)


def occurred(trigger: Trigger, seen: Observed) -> bool:
    """Whether a new occurrence of a console-side trigger's condition is there."""
    on, n = trigger.on, trigger.occurrences
    if isinstance(on, model.TimeTrigger):
        return n == 0 and time.monotonic() - trigger.armed_at >= on.time
    if isinstance(on, model.PassTrigger):
        return seen.passes >= on.pass_ + n
    if isinstance(on, model.StatusTrigger):
        return seen.entries(on.status.peer, on.status.is_, trigger.armed_at) > n
    ram = seen.ram
    if isinstance(on, model.RemainingTrigger):
        return n == 0 and "remaining" in ram and int(ram["remaining"]) < on.remaining.below
    if isinstance(on, model.ProgressTrigger):
        total = int(ram.get("total", 0) or 0)
        sent = (int(ram.get("normal", 0) or 0) + int(ram.get("duplicate", 0) or 0)) * 4096
        return n == 0 and total > 0 and 100.0 * sent / total >= on.progress
    return False
