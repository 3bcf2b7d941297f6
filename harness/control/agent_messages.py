"""Typed messages between the runner and an agent (`harness agent`).

Strategy: an agent speaks the control plane's QMP shapes (`messages`: Execute, Return,
Error, Event, a blob as a second frame), so one decoder reads every capture and the
runner reuses `ControlClient`'s deadlines and dead-connection detection.  What is new is
the vocabulary: one frozen dataclass per agent command (its arguments) and per agent
event (its data), each tagged with its name from an enum, written with kebab-case
members like QMP's, and read strictly -- an unknown member, a missing one or a wrong type
is a `ProtocolMessageError` naming the command and the member, never a KeyError deep in
the agent.  Members that become file names on the agent's host (`run-id`, `peer`) must be
plain names (`guard.NAME_RULE`).  The states both ends report (a run as the agent sees its
runner, a peer, an agent as the runner sees it) are enums here too, so both ends spell
them alike.
"""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin, get_type_hints

from harness.control.agent_files import MAX_CHUNK, check_file_name
from harness.control.errors import ProtocolMessageError
from harness.control.guard import check_name

__all__ = [
    "AGENT_ROLE",
    "AgentCommand",
    "AgentEvent",
    "AgentHealth",
    "AgentHeartbeat",
    "EndRun",
    "Heartbeat",
    "HelloAgent",
    "LinkFaultRequest",
    "LinkUndo",
    "LinkUndone",
    "PeerEventData",
    "PeerExecute",
    "PeerExited",
    "PeerFault",
    "PeerLog",
    "PeerStacks",
    "PeerStart",
    "PeerState",
    "PeerStop",
    "Preflight",
    "RunFileRead",
    "RunFiles",
    "RunState",
    "TimeSample",
    "decode_event",
    "decode_request",
    "event_data",
    "request_arguments",
]

#: the role in an agent's greeting (`Hello.role`)
AGENT_ROLE = "agent"


class AgentCommand(enum.Enum):
    """Commands a runner sends an agent (QMP `execute` names)."""

    HELLO = "agent-hello"          # bind this client to a run (new, or resynced)
    TIME = "agent-time"            # one clock sample
    HEARTBEAT = "agent-heartbeat"  # the runner is alive (any message also counts)
    END_RUN = "agent-end-run"      # stop what is left of the run, forget it
    PREFLIGHT = "agent-preflight"  # what this host offers a run (harness hosts check)
    PEER_START = "peer-start"
    PEER_EXECUTE = "peer-execute"  # relay one QMP command to a peer
    PEER_FAULT = "peer-fault"      # kill | crash | stop | cont the peer's session
    PEER_STOP = "peer-stop"        # quit, reap, report leftovers
    PEER_STACKS = "peer-stacks"
    PEER_LOG = "peer-log"
    LINK_FAULT = "link-fault"      # harness.faults.link.apply on this host
    LINK_UNDO = "link-undo"
    RUN_FILES = "run-files"          # the run directory's files (name, size)
    RUN_FILE_READ = "run-file-read"  # one chunk of one of them, as a blob


class AgentEvent(enum.Enum):
    """Events an agent sends the runner that owns a run."""

    HEARTBEAT = "AGENT_HEARTBEAT"
    PEER_EVENT = "PEER_EVENT"        # an event of a peer, relayed
    PEER_EXITED = "PEER_EXITED"
    LINK_UNDONE = "LINK_FAULT_UNDONE"


class PeerState(enum.Enum):
    """A peer process as its agent sees it."""

    STARTING = "starting"  # started, not answering yet
    RUNNING = "running"    # answers commands
    STOPPING = "stopping"  # asked to quit; being reaped
    EXITED = "exited"      # reaped (its exit code is known)


class RunState(enum.Enum):
    """A run as the agent sees its runner."""

    ACTIVE = "active"      # the runner's heartbeats arrive
    MISSING = "missing"    # late, within the grace period: its peers keep running
    ORPHANED = "orphaned"  # the grace period passed: its peers are being stopped
    ENDED = "ended"        # the runner ended it (or it was orphaned and cleaned up)


class AgentHealth(enum.Enum):
    """An agent as the runner sees it: a missing agent is late, a dead one is gone."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    MISSING = "missing"  # heartbeats late; it may come back
    DEAD = "dead"        # connection lost for good, silent too long, or restarted
    CLOSED = "closed"    # the run ended and we hung up


Role = Literal["source", "destination", "proxy"]
#: what a `peer-start` runs: the harness's own peer, a real QEMU (wrapped so that the
#: agent relays QMP like any peer's commands), or the protocol-aware proxy
ProcessKind = Literal["harness", "qemu", "proxy"]
FaultKind = Literal["kill", "crash", "stop", "cont"]


# ---------------------------------------------------------------------- commands
@dataclass(frozen=True)
class HelloAgent:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.HELLO
    run_id: str
    heartbeat: float = 0.5  # how often the runner will send heartbeats
    #: the host's `workdir:`: the run's directory goes under it (an existing directory
    #: of the agent's user, not group/world-writable), else the agent's own
    workdir: str | None = None


@dataclass(frozen=True)
class TimeSample:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.TIME


@dataclass(frozen=True)
class Preflight:
    """No run needed: facts of this host (control/agent_preflight.py)."""

    COMMAND: ClassVar[AgentCommand] = AgentCommand.PREFLIGHT
    qemu: str | None = None  # the host's QEMU binary (None: the PATH's)


@dataclass(frozen=True)
class Heartbeat:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.HEARTBEAT
    run_id: str


@dataclass(frozen=True)
class EndRun:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.END_RUN


@dataclass(frozen=True)
class PeerStart:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.PEER_START
    peer: str
    role: Role
    guest: dict[str, Any]
    incoming: bool = False  # a destination started with `--incoming defer`
    paused: bool = False
    kind: ProcessKind = "harness"
    options: dict[str, Any] = field(default_factory=dict)  # per kind (agent_peers.py)


@dataclass(frozen=True)
class PeerExecute:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.PEER_EXECUTE
    peer: str
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerFault:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.PEER_FAULT
    peer: str
    kind: FaultKind


@dataclass(frozen=True)
class PeerStop:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.PEER_STOP
    peer: str


@dataclass(frozen=True)
class PeerStacks:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.PEER_STACKS
    peer: str


@dataclass(frozen=True)
class PeerLog:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.PEER_LOG
    peer: str
    lines: int = 20


@dataclass(frozen=True)
class LinkFaultRequest:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.LINK_FAULT
    id: str
    kind: str
    toward: str  # the other host's address
    duration: float | None = None  # undone by the agent after this long
    rate: int | None = None
    delay: float | None = None
    jitter: float | None = None


@dataclass(frozen=True)
class LinkUndo:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.LINK_UNDO
    id: str


@dataclass(frozen=True)
class RunFiles:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.RUN_FILES


@dataclass(frozen=True)
class RunFileRead:
    COMMAND: ClassVar[AgentCommand] = AgentCommand.RUN_FILE_READ
    file: str  # a name `run-files` listed (agent_files.check_file_name)
    offset: int = 0
    length: int = MAX_CHUNK


Request = (HelloAgent | TimeSample | Preflight | Heartbeat | EndRun | PeerStart | PeerExecute | PeerFault
           | PeerStop | PeerStacks | PeerLog | LinkFaultRequest | LinkUndo | RunFiles
           | RunFileRead)
_REQUESTS: dict[str, type[Any]] = {cls.COMMAND.value: cls for cls in typing.get_args(Request)}


# ---------------------------------------------------------------------- events
@dataclass(frozen=True)
class PeerEventData:
    EVENT: ClassVar[AgentEvent] = AgentEvent.PEER_EVENT
    peer: str
    event: str
    data: dict[str, Any]
    timestamp: float  # the peer's own clock (the agent's host)


@dataclass(frozen=True)
class PeerExited:
    EVENT: ClassVar[AgentEvent] = AgentEvent.PEER_EXITED
    peer: str
    exit_code: int | None
    stderr_tail: str = ""


@dataclass(frozen=True)
class LinkUndone:
    EVENT: ClassVar[AgentEvent] = AgentEvent.LINK_UNDONE
    id: str
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class AgentHeartbeat:
    EVENT: ClassVar[AgentEvent] = AgentEvent.HEARTBEAT
    time: float
    peers: dict[str, Any] = field(default_factory=dict)  # name -> PeerState value


EventBody = PeerEventData | PeerExited | LinkUndone | AgentHeartbeat
_EVENTS: dict[str, type[Any]] = {cls.EVENT.value: cls for cls in typing.get_args(EventBody)}

_Body = TypeVar("_Body")
#: request members that the agent turns into file names
_NAMES = ("run_id", "peer")


def request_arguments(body: Any) -> tuple[str, dict[str, Any]]:
    """(command name, QMP arguments) of a request body."""
    return body.COMMAND.value, _to_wire(body)


def decode_request(command: str, arguments: dict[str, Any]) -> Any:
    """The typed body of an agent command; ProtocolMessageError naming what is wrong."""
    cls = _REQUESTS.get(command)
    if cls is None:
        raise ProtocolMessageError(f"The command {command} has not been found")
    body = _from_wire(cls, arguments, command)
    for name in _NAMES:
        value = getattr(body, name, None)
        problem = check_name(value, f"member {_wire_name(name)!r}") if value is not None else None
        if problem:
            raise ProtocolMessageError(f"{command}: {problem}")
    file = getattr(body, "file", None)
    problem = check_file_name(file, "member 'file'") if file is not None else None
    if problem:
        raise ProtocolMessageError(f"{command}: {problem}")
    return body


def event_data(body: Any) -> tuple[str, dict[str, Any]]:
    """(event name, data) of an event body."""
    return body.EVENT.value, _to_wire(body)


def decode_event(name: str, data: dict[str, Any]) -> Any:
    """The typed body of an agent event, or None for an event this runner does not know."""
    cls = _EVENTS.get(name)
    return None if cls is None else _from_wire(cls, data, name)


# ---------------------------------------------------------------------- codec
def _wire_name(name: str) -> str:
    return name.replace("_", "-")


def _to_wire(body: Any) -> dict[str, Any]:
    return {_wire_name(f.name): getattr(body, f.name) for f in fields(body)}


def _from_wire(cls: type[_Body], data: dict[str, Any], what: str) -> _Body:
    hints = get_type_hints(cls)
    members = {_wire_name(f.name): f for f in fields(cls)}  # type: ignore[arg-type]
    unexpected = sorted(set(data) - set(members))
    if unexpected:
        raise ProtocolMessageError(f"{what}: member {unexpected[0]!r} is unexpected (allowed: "
                                   f"{', '.join(members) or 'none'})")
    values = {}
    for wire, f in members.items():
        if wire not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolMessageError(f"{what}: member {wire!r} is missing")
            continue
        _check(data[wire], hints[f.name], what, wire)
        values[f.name] = data[wire]
    return cls(**values)


def _check(value: Any, hint: Any, what: str, wire: str) -> None:
    if not _fits(value, hint):
        raise ProtocolMessageError(f"{what}: member {wire!r} must be {_describe(hint)}, "
                                   f"got {value!r:.60}")


def _fits(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, option) for option in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    if hint is Any:
        return True
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(option) for option in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(hint))
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             dict: "an object", list: "an array", type(None): "null"}
    return names.get(origin or hint, str(hint))
