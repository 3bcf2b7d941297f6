"""Steps: when something happens (`on:`), and what (`do:` an action or `fault:` a fault).

Strategy: each trigger kind is its own model, and a trigger is a discriminated union whose
tag is the one trigger key present in the mapping (`{pass: 2}` is a PassTrigger). Actions
and faults are discriminated unions too (by shape, and by the `kind` prefix). Before
pydantic picks a union member, a small pre-check says in plain words what is wrong with
the shape (no trigger key, two trigger keys, an unknown fault kind), so the user never sees
"unable to extract tag". Which fields a network fault takes is a table (`NET_FAULT_FIELDS`),
not a tree of classes: one place to read, one place to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    BeforeValidator,
    Discriminator,
    Tag,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from .base import (
    Duration,
    Fraction,
    Issue,
    Percent,
    PositiveCount,
    Rate,
    ScenarioModel,
    Size,
    Text,
    choice,
    describe,
    fail,
    raise_issues,
    unknown_name,
)
from .names import (
    CHANNEL_NAMES,
    DIRECTIONS,
    EVENT_NAMES,
    FAULT_KINDS,
    FRAME_NAMES,
    FRAME_PARTS,
    FRAME_TRIGGER_NAMES,
    LATER_STATUSES,
    LINK_FAULT_KINDS,
    MAPPING_ACTIONS,
    MESSAGE_NAMES,
    MIG_CMD_NAMES,
    MIGRATION_STATUSES,
    MULTIFD_CHANNEL_FORM,
    MULTIFD_FRAME_NAMES,
    NET_FAULT_KINDS,
    PEER_NAMES,
    PLAIN_ACTIONS,
    PREEMPT_CHANNEL,
    PREEMPT_FRAME_NAMES,
    PROCESS_FAULT_KINDS,
    RAM_PAGE,
    RETURN_PATH_ONLY,
    RP_MESSAGE_NAMES,
    Direction,
    EventName,
    FramePart,
    LinkFaultKind,
    MigCmdName,
    MigrationStatus,
    NetFaultKind,
    PeerName,
    PlainActionName,
    ProcessFaultKind,
    multifd_channel_id,
)
from .parameters import MigrationParameters

Peer = Annotated[PeerName, choice("a peer", PEER_NAMES)]
Status = Annotated[MigrationStatus, choice("a migration status", MIGRATION_STATUSES,
                                           LATER_STATUSES)]


def _channel(value: object) -> object:
    """main, return-path, preempt, or multifd-N (a multifd connection by its init id)."""
    if isinstance(value, str) and (value in CHANNEL_NAMES
                                   or multifd_channel_id(value) is not None):
        return value
    raise ValueError(unknown_name(value, "a channel", (*CHANNEL_NAMES, MULTIFD_CHANNEL_FORM)))


Channel = Annotated[str, BeforeValidator(_channel), WithJsonSchema({"anyOf": [
    {"type": "string", "enum": list(CHANNEL_NAMES)},
    {"type": "string", "pattern": "^multifd-(0|[1-9][0-9]{0,2})$",
     "description": MULTIFD_CHANNEL_FORM}]})]

# --- triggers ---------------------------------------------------------------------------


class TriggerBase(ScenarioModel):
    """What every trigger shares: `probability` (drawn from the scenario's seed)."""

    KEY: ClassVar[str]
    probability: Fraction = 1.0
    """The chance that the step fires when its condition holds (drawn from the seed)."""

    @property
    def kind(self) -> str:
        return self.KEY


class TimeTrigger(TriggerBase):
    """`{time: 1.5s}`: this long after `migrate` (or after the `after:` step fired)."""

    KEY = "time"
    time: Duration


class PassTrigger(TriggerBase):
    """`{pass: N}`: when the source starts RAM pass N (1 is the bulk stage)."""

    KEY = "pass"
    pass_: PositiveCount


class StatusCondition(ScenarioModel):
    peer: Peer
    is_: Status


class StatusTrigger(TriggerBase):
    """`{status: {peer: destination, is: postcopy-paused}}`."""

    KEY = "status"
    status: StatusCondition


class EventTrigger(TriggerBase):
    """`{event: page-request, count: 10}`: the count-th such event."""

    KEY = "event"
    event: Annotated[EventName, choice("an event", EVENT_NAMES)]
    count: PositiveCount = 1


class CommandTrigger(TriggerBase):
    """`{command: POSTCOPY_RUN}`: a MIG_CMD seen on the wire (also inside PACKAGED)."""

    KEY = "command"
    command: Annotated[MigCmdName, choice("a MIG_CMD command", MIG_CMD_NAMES)]


#: frames that belong to one section, so `section: IDSTR` can narrow them
SECTION_FRAMES = ("SECTION_START", "SECTION_PART", "SECTION_END", "SECTION_FULL")
_IDSTR_MAX = 256  # QEMU's idstr is a str8 (at most 255 bytes)


def _section_idstr(value: object) -> object:
    """A section idstr as QEMU writes it ("serial", "0000:00:01.1/ide"): 1-255 printable
    ASCII characters without spaces."""
    if not isinstance(value, str) or not 0 < len(value) < _IDSTR_MAX or not value.isascii() \
            or not value.isprintable() or " " in value:
        raise ValueError(f"expected a section idstr (1-{_IDSTR_MAX - 1} printable ASCII "
                         f"characters, no spaces, e.g. serial or 0000:00:01.1/ide), "
                         f"got {describe(value)}")
    return value


SectionIdstr = Annotated[str, BeforeValidator(_section_idstr)]


def _section_issue(frame: str | None, section: str | None) -> list[Issue]:
    if section is not None and frame not in SECTION_FRAMES:
        given = f"not to {frame}" if frame is not None else "and there is no frame:"
        return [Issue(("section",), f"applies to frame: {', '.join(SECTION_FRAMES)} (a device "
                      f"section's frames), {given}", at_key=True)]
    return []


class FrameTrigger(TriggerBase):
    """`{frame: SECTION_END, count: 1}`: the count-th frame of that name seen on the wire
    (a section's header, a command, a return-path message...; not a single RAM page of the
    main stream).  `section: IDSTR` counts only the frames of that device section
    (`{frame: SECTION_FULL, section: serial}`).  `{frame: RAM_PAGE, channel: preempt,
    count: 3}` counts the requested pages the postcopy-preempt channel carried."""

    KEY = "frame"
    frame: Annotated[str, choice("a frame", (*FRAME_TRIGGER_NAMES, RAM_PAGE))]
    count: PositiveCount = 1
    section: SectionIdstr | None = None
    channel: Channel | None = None
    """Where the frame travels (default: where that frame can: main or return-path)."""

    @model_validator(mode="after")
    def _section_of_a_section(self) -> FrameTrigger:
        raise_issues(_section_issue(self.frame, self.section) + self._channel_issues())
        return self

    def _channel_issues(self) -> list[Issue]:
        if multifd_channel_id(self.channel) is not None or self.frame in MULTIFD_FRAME_NAMES:
            return _multifd_frame_issues(self.channel, self.frame, "frame")
        if self.channel == PREEMPT_CHANNEL or self.frame in PREEMPT_FRAME_NAMES:
            return _preempt_frame_issues(self.channel, self.frame, "frame")
        if self.channel == "main" and self.frame in RETURN_PATH_ONLY:
            return [Issue(("channel",), f"{self.frame} travels on the return-path channel, "
                          "not on main")]
        if self.channel == "return-path" and self.frame not in RP_MESSAGE_NAMES:
            return [Issue(("channel",), f"{self.frame} does not travel on the return-path "
                          f"channel (its messages: {', '.join(RP_MESSAGE_NAMES)})")]
        return []


def _preempt_frame_issues(channel: str | None, frame: str | None, key: str) -> list[Issue]:
    """A frame on the preempt channel: only its page records; RAM_PAGE counted by a frame
    trigger only there (on main a page is a record inside a section)."""
    if channel == PREEMPT_CHANNEL and frame is not None and frame not in PREEMPT_FRAME_NAMES:
        return [Issue((key,), f"{frame} does not travel on the preempt channel (it carries "
                      f"only {', '.join(PREEMPT_FRAME_NAMES)} records: requested pages)")]
    if key == "frame" and channel != PREEMPT_CHANNEL and frame == RAM_PAGE:
        return [Issue(("frame",), "a frame: trigger counts RAM_PAGE records on channel: "
                      "preempt only (on main a page is a record inside a section: use "
                      "bytes: or progress:)")]
    return []


def _multifd_frame_issues(channel: str | None, frame: str | None, key: str) -> list[Issue]:
    """A multifd channel carries its MULTIFD_INIT, then MULTIFD_PACKETs, nothing else."""
    on_multifd = multifd_channel_id(channel) is not None
    if on_multifd and frame is not None and frame not in MULTIFD_FRAME_NAMES:
        return [Issue((key,), f"{frame} does not travel on a multifd channel (it carries "
                      f"{' then '.join(MULTIFD_FRAME_NAMES)} frames)")]
    if not on_multifd and frame in MULTIFD_FRAME_NAMES:
        return [Issue(("channel",) if channel is not None else (key,),
                      f"{frame} travels on a multifd channel only: name it (channel: "
                      f"multifd-N)")]
    return []


class BytesCondition(ScenarioModel):
    channel: Channel = "main"
    after: Size


class BytesTrigger(TriggerBase):
    """`{bytes: {channel: main, after: 8MiB}}`: once that many bytes crossed the channel."""

    KEY = "bytes"
    bytes: BytesCondition


class RemainingCondition(ScenarioModel):
    below: Size


class RemainingTrigger(TriggerBase):
    """`{remaining: {below: 16MiB}}`: query-migrate's ram.remaining drops below."""

    KEY = "remaining"
    remaining: RemainingCondition


class ProgressTrigger(TriggerBase):
    """`{progress: 50%}`: that share of guest RAM has been sent once."""

    KEY = "progress"
    progress: Percent


TRIGGER_CLASSES: tuple[type[TriggerBase], ...] = (
    TimeTrigger, PassTrigger, StatusTrigger, EventTrigger, CommandTrigger, FrameTrigger,
    BytesTrigger, RemainingTrigger, ProgressTrigger)
TRIGGER_KEYS = tuple(cls.KEY for cls in TRIGGER_CLASSES)
_TRIGGER_EXTRAS = {"probability", "count"}


def _trigger_tag(value: Any) -> str | None:
    """The union's tag: the trigger key in a mapping (or the class of a model, when dumping)."""
    if isinstance(value, TriggerBase):
        return value.KEY
    if isinstance(value, Mapping):
        return next((key for key in TRIGGER_KEYS if key in value), None)
    return None


def _trigger_shape(value: Any) -> Any:
    """Exactly one trigger key, said plainly before the union picks a member."""
    example = "a mapping such as {pass: 2} or {status: {peer: source, is: active}}"
    if isinstance(value, TriggerBase):
        return value
    if not isinstance(value, Mapping):
        fail((), f"a trigger is {example}, got {describe(value)}")
    present = [key for key in value if key in TRIGGER_KEYS]
    if len(present) > 1:
        fail((present[1],), f"a trigger names one condition, this one names {present[0]!r} "
             f"and {present[1]!r}: split it into two steps (a step may wait for another "
             "with after:)", at_key=True)
    if not present:
        others = [key for key in value if key not in _TRIGGER_EXTRAS]
        if others:
            fail((others[0],), unknown_name(others[0], "a trigger", TRIGGER_KEYS), at_key=True)
        fail((), f"the trigger names no condition (expected one of: {', '.join(TRIGGER_KEYS)})")
    return value


Trigger = Annotated[
    Annotated[TimeTrigger, Tag("time")] | Annotated[PassTrigger, Tag("pass")]
    | Annotated[StatusTrigger, Tag("status")] | Annotated[EventTrigger, Tag("event")]
    | Annotated[CommandTrigger, Tag("command")] | Annotated[FrameTrigger, Tag("frame")]
    | Annotated[BytesTrigger, Tag("bytes")]
    | Annotated[RemainingTrigger, Tag("remaining")] | Annotated[ProgressTrigger, Tag("progress")],
    Discriminator(_trigger_tag), BeforeValidator(_trigger_shape)]

# --- actions ----------------------------------------------------------------------------


class CommandAction(ScenarioModel):
    """An action written as a bare name: `do: migrate-start-postcopy`."""

    command: PlainActionName

    @model_serializer
    def _as_name(self) -> str:
        return self.command

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "enum": list(PLAIN_ACTIONS), "title": "Action name"}


class SetParametersAction(ScenarioModel):
    """`do: {migrate-set-parameters: {max-bandwidth: 1GiB}}`."""

    migrate_set_parameters: MigrationParameters

    @property
    def command(self) -> str:
        return "migrate-set-parameters"


def _action_tag(value: Any) -> str:
    """Runs after _action_shape, which turned a bare name into {command: name}."""
    if isinstance(value, SetParametersAction) or (
            isinstance(value, Mapping) and "command" not in value):
        return "migrate-set-parameters"
    return "command"


def _action_shape(value: Any) -> Any:
    """A bare action name becomes {command: name}; a mapping names one action with arguments."""
    if isinstance(value, (CommandAction, SetParametersAction)):
        return value
    if isinstance(value, str):
        if value in MAPPING_ACTIONS:
            fail((), f"{value} takes arguments: write do: {{{value}: {{max-bandwidth: 1GiB}}}}")
        if value not in PLAIN_ACTIONS:
            fail((), unknown_name(value, "an action", PLAIN_ACTIONS + MAPPING_ACTIONS))
        return {"command": value}
    if not isinstance(value, Mapping) or len(value) != 1:
        fail((), f"an action is one of {', '.join(PLAIN_ACTIONS)}, or "
             f"{{migrate-set-parameters: {{...}}}}; got {describe(value)}")
    key = next(iter(value))
    if key in PLAIN_ACTIONS:
        fail((key,), f"{key} takes no arguments: write do: {key}", at_key=True)
    if key not in MAPPING_ACTIONS:
        fail((key,), unknown_name(key, "an action with arguments", MAPPING_ACTIONS), at_key=True)
    return value


Action = Annotated[
    Annotated[CommandAction, Tag("command")]
    | Annotated[SetParametersAction, Tag("migrate-set-parameters")],
    Discriminator(_action_tag), BeforeValidator(_action_shape)]

# --- faults -----------------------------------------------------------------------------


class ProcessFault(ScenarioModel):
    """`{kind: kill|stop|crash, target: source|destination, duration: 1s}`.

    `stop` with a duration continues the process afterwards; kill and crash are final.
    """

    kind: ProcessFaultKind
    target: Peer
    duration: Duration | None = None

    @model_validator(mode="after")
    def _duration_only_for_stop(self) -> ProcessFault:
        if self.duration is not None and self.kind != "stop":
            fail(("duration",), f"duration applies to kind: stop only ({self.kind} is final)",
                 at_key=True)
        return self


#: network fault kind -> (fields it requires, fields it may take) besides channel/direction
NET_FAULT_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "net.reset": (frozenset(), frozenset()),
    "net.half-close": (frozenset(), frozenset()),
    "net.blackhole": (frozenset(), frozenset({"duration"})),
    "net.delay": (frozenset({"delay"}), frozenset({"duration"})),
    "net.jitter": (frozenset({"delay"}), frozenset({"duration"})),
    "net.bandwidth": (frozenset({"rate"}), frozenset({"duration"})),
    "net.drop": (frozenset({"message"}), frozenset({"duration"})),
    "net.duplicate": (frozenset({"message"}), frozenset({"duration"})),
    "net.corrupt": (frozenset(), frozenset({"frame", "where", "section"})),
    "net.truncate": (frozenset(), frozenset({"frame", "where", "section"})),
}
_NET_OPTIONAL_FIELDS = ("duration", "delay", "rate", "message", "where", "frame", "section")


class NetFault(ScenarioModel):
    """A fault of the network proxy between the peers, on one channel.

    `direction` is relative to the channel's own data flow (forward: main carries source to
    destination, the return path destination to source). Without `channel`, a return-path
    message (REQ_PAGES, PONG, ...) implies the return path; otherwise it is `main`.
    `preempt` is postcopy-preempt's second connection: requested pages, source to destination.
    """

    kind: NetFaultKind
    channel: Channel = "main"
    direction: Annotated[Direction, choice("a direction", DIRECTIONS)] = "both"
    duration: Duration | None = None
    delay: Duration | None = None
    rate: Rate | None = None
    message: Annotated[str, choice("a message", MESSAGE_NAMES)] | None = None
    where: Annotated[FramePart, choice("a part of a frame", FRAME_PARTS)] | None = None
    frame: Annotated[str, choice("a frame", FRAME_NAMES)] | None = None
    section: SectionIdstr | None = None
    """With a SECTION_* `frame`: only that device section's frame (its idstr)."""

    @model_validator(mode="before")
    @classmethod
    def _implied_channel(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "channel" not in data \
                and data.get("message") in RETURN_PATH_ONLY:
            return {**data, "channel": "return-path"}
        return data

    @model_validator(mode="after")
    def _fields_of_kind(self) -> NetFault:
        required, optional = NET_FAULT_FIELDS[self.kind]
        given = {name for name in _NET_OPTIONAL_FIELDS if getattr(self, name) is not None}
        issues = [Issue((), f"{self.kind} needs {name}:") for name in sorted(required - given)]
        takes = ", ".join(["channel", "direction", *sorted(required | optional)])
        issues += [Issue((name,), f"{name} does not apply to {self.kind} (it takes: {takes})",
                         at_key=True) for name in sorted(given - required - optional)]
        issues += self._channel_issues()
        raise_issues(issues)
        return self

    def _channel_issues(self) -> list[Issue]:
        if multifd_channel_id(self.channel) is not None or self.frame in MULTIFD_FRAME_NAMES:
            return self._multifd_issues()
        if self.channel == PREEMPT_CHANNEL:
            return self._preempt_issues()
        issues = []
        if self.message in RETURN_PATH_ONLY and self.channel != "return-path":
            issues.append(Issue(("channel",), f"{self.message} travels on the return-path "
                                "channel, not on main"))
        if self.where is not None and self.frame is None:
            issues.append(Issue(("where",), "where: needs frame: (which frame to aim at)",
                                at_key=True))
        if self.section is not None:
            issues += _section_issue(self.frame, self.section)
        return issues

    def _preempt_issues(self) -> list[Issue]:
        """The preempt channel carries requested pages, source -> destination, nothing else."""
        issues = _preempt_frame_issues(self.channel, self.frame, "frame")
        if self.message is not None:
            issues.append(Issue(("message",), f"{self.message} does not travel on the preempt "
                                "channel (it carries only RAM_PAGE records: requested pages)"))
        if self.direction == "backward":
            issues.append(Issue(("direction",), "the preempt channel carries source -> "
                                "destination bytes only: direction backward names nothing"))
        return issues + _section_issue(self.frame, self.section)


    def _multifd_issues(self) -> list[Issue]:
        """A multifd channel: source -> destination bytes, MULTIFD_INIT then MULTIFD_PACKET
        frames (net.corrupt and net.truncate aim at MULTIFD_PACKET by default)."""
        issues = _multifd_frame_issues(self.channel, self.frame, "frame")
        if self.message is not None:
            issues.append(Issue(("message",), f"{self.message} does not travel on a multifd "
                                "channel (it carries MULTIFD_INIT then MULTIFD_PACKET frames)"))
        if self.direction == "backward":
            issues.append(Issue(("direction",), "a multifd channel carries source -> "
                                "destination bytes only: direction backward names nothing"))
        if self.section is not None:
            issues.append(Issue(("section",), "section: names a device section of the main "
                                "stream, not a multifd frame", at_key=True))
        return issues


#: link fault kind -> (fields it requires, fields it may take) besides host/duration
LINK_FAULT_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "link.down": (frozenset(), frozenset()),
    "link.blackhole": (frozenset(), frozenset()),
    "link.bandwidth": (frozenset({"rate"}), frozenset()),
    "link.delay": (frozenset({"delay"}), frozenset({"jitter"})),
}
_LINK_OPTIONAL_FIELDS = ("rate", "delay", "jitter")


class LinkFault(ScenarioModel):
    """`{kind: link.down|link.blackhole|link.bandwidth|link.delay, host: NAME}`, for
    multi-host runs: NAME's agent breaks NAME's link toward the other host for real (ip/tc,
    harness.faults.link); `rate` limits what NAME sends, link.delay (`delay`, optional
    `jitter`) needs the kernel's netem."""

    kind: LinkFaultKind
    host: Text
    duration: Duration | None = None
    rate: Rate | None = None
    delay: Duration | None = None
    jitter: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _needs_host(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "host" not in data:
            fail((), f"{data.get('kind')} needs host: (the host, one of hosts:, whose agent "
                 "breaks its link)")
        return data

    @model_validator(mode="after")
    def _fields_of_kind(self) -> LinkFault:
        required, optional = LINK_FAULT_FIELDS[self.kind]
        given = {name for name in _LINK_OPTIONAL_FIELDS if getattr(self, name) is not None}
        issues = [Issue((), f"{self.kind} needs {name}:") for name in sorted(required - given)]
        takes = ", ".join(["host", "duration", *sorted(required | optional)])
        issues += [Issue((name,), f"{name} does not apply to {self.kind} (it takes: {takes})",
                         at_key=True) for name in sorted(given - required - optional)]
        issues += [Issue((name,), f"{self.kind} needs a {name} above 0")
                   for name in sorted(required & given) if not getattr(self, name) > 0]
        raise_issues(issues)
        return self


def _fault_tag(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)
    if kind in PROCESS_FAULT_KINDS:
        return "process"
    if kind in NET_FAULT_KINDS:
        return "net"
    return "link" if kind in LINK_FAULT_KINDS else None


def _fault_shape(value: Any) -> Any:
    if isinstance(value, (ProcessFault, NetFault, LinkFault)):
        return value
    if not isinstance(value, Mapping):
        fail((), f"a fault is a mapping such as {{kind: kill, target: source}}, "
             f"got {describe(value)}")
    if "kind" not in value:
        fail((), f"missing required key 'kind' (one of: {', '.join(FAULT_KINDS)})")
    if value["kind"] not in FAULT_KINDS:
        fail(("kind",), unknown_name(value["kind"], "a fault kind", FAULT_KINDS))
    return value


Fault = Annotated[
    Annotated[ProcessFault, Tag("process")] | Annotated[NetFault, Tag("net")]
    | Annotated[LinkFault, Tag("link")],
    Discriminator(_fault_tag), BeforeValidator(_fault_shape)]

# --- steps ------------------------------------------------------------------------------


class Step(ScenarioModel):
    """`{name?, on: TRIGGER, after?: STEP-NAME, do: ACTION | fault: FAULT, optional?}`.

    A step must fire (its action carried out, its fault applied) or the scenario fails:
    a scenario whose fault never acted has not tested what it says.  `optional: true`
    (or a trigger `probability` below 1) lets it not fire; the report still says so."""

    name: Text | None = None
    """What after: of other steps calls this one."""
    on: Trigger
    """When the step fires."""
    after: Text | None = None
    """The name of a step that must have fired first; the trigger counts from then."""
    do: Action | None = None
    """The QMP-like action to carry out (or fault:)."""
    fault: Fault | None = None
    """The fault to inject (or do:)."""
    optional: bool = False
    """The step may not fire without failing the scenario."""

    @property
    def must_fire(self) -> bool:
        return not self.optional and self.on.probability >= 1.0

    @model_validator(mode="after")
    def _one_effect(self) -> Step:
        if self.do is not None and self.fault is not None:
            fail((), "a step has either do: or fault:, not both: split it into two steps")
        if self.do is None and self.fault is None:
            fail((), "a step needs do: (an action) or fault: (a fault)")
        return self

    @property
    def action_name(self) -> str | None:
        """The QMP-ish name of the step's action, or None for a fault step."""
        return self.do.command if self.do is not None else None


__all__ = [
    "LINK_FAULT_FIELDS",
    "NET_FAULT_FIELDS",
    "TRIGGER_CLASSES",
    "TRIGGER_KEYS",
    "Action",
    "BytesCondition",
    "BytesTrigger",
    "CommandAction",
    "CommandTrigger",
    "EventTrigger",
    "Fault",
    "FrameTrigger",
    "LinkFault",
    "NetFault",
    "PassTrigger",
    "ProcessFault",
    "ProgressTrigger",
    "RemainingCondition",
    "RemainingTrigger",
    "SetParametersAction",
    "StatusCondition",
    "StatusTrigger",
    "Step",
    "TimeTrigger",
    "Trigger",
    "TriggerBase",
]
