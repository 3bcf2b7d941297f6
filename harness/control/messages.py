"""Typed control-plane messages and their QMP-shaped JSON.

Strategy: five frozen dataclasses, one per thing that crosses the control socket, each
tagged with a `Kind`; code outside this module never handles the JSON dicts.  The JSON is
exactly what QMP puts on a monitor socket (`docs/interop/qmp-spec.rst`):

    {"execute": NAME, "arguments": {...}, "id": N}
    {"return": VALUE, "id": N}
    {"error": {"class": CLASS, "desc": TEXT}, "id": N}          ("id" omitted when unknown)
    {"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": US}}
    {"QMP": {"version": V, "capabilities": []}, "role": ROLE, "pid": PID}   (our greeting)

so a person reading a capture recognises it, and the same decoder can check a real QEMU's
output.  Decoding is strict (unknown members, wrong types and extra binary frames are
`ProtocolMessageError`s naming the member) because the only writers are our own peers,
and a typo must fail loudly rather than be ignored.  Bulk data (per-page digests, several
MB) does not belong in JSON: a `Return` may carry `blob`, sent as a second zmq frame of
raw bytes after the JSON frame (`to_frames` / `from_frames`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeAlias

from harness.control.errors import ProtocolMessageError

__all__ = [
    "COMMAND_NOT_FOUND", "DEVICE_NOT_ACTIVE", "DEVICE_NOT_FOUND", "GENERIC_ERROR",
    "KVM_MISSING_CAP", "MAX_MESSAGE", "QMP_ERROR_CLASSES", "Error", "Event", "Execute",
    "Hello", "Kind",
    "Message", "Return", "decode", "encode", "from_frames", "to_frames",
]

# QEMU's `QapiErrorClass` (qapi/error.json): the only classes a QMP error reply carries.
GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"
KVM_MISSING_CAP = "KVMMissingCap"
QMP_ERROR_CLASSES = frozenset(
    {GENERIC_ERROR, COMMAND_NOT_FOUND, DEVICE_NOT_ACTIVE, DEVICE_NOT_FOUND, KVM_MISSING_CAP})

_EXCERPT = 120  # bytes of offending input quoted in an error
#: the largest message a peer's or an agent's ROUTER accepts (zmq.MAXMSGSIZE): requests are
#: small; a bigger one ends the sender's connection instead of growing the process
MAX_MESSAGE = 16 << 20


class Kind(enum.Enum):
    """What a message is; the value is the JSON member that says so."""

    EXECUTE = "execute"
    RETURN = "return"
    ERROR = "error"
    EVENT = "event"
    HELLO = "QMP"


_KIND_MEMBERS = tuple((kind.value, kind) for kind in Kind)  # iterating an Enum is slow


@dataclass(frozen=True)
class Execute:
    """A command from the runner to a peer."""

    kind: ClassVar[Kind] = Kind.EXECUTE
    command: str
    arguments: dict[str, Any]
    id: int


@dataclass(frozen=True)
class Return:
    """A successful reply; `blob` travels as a second, raw frame."""

    kind: ClassVar[Kind] = Kind.RETURN
    value: Any
    id: int
    blob: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Error:
    """An error reply; `id` is None when the request could not be read at all."""

    kind: ClassVar[Kind] = Kind.ERROR
    error_class: str
    desc: str
    id: int | None


@dataclass(frozen=True)
class Event:
    """An asynchronous event; `timestamp` in seconds since the epoch (microsecond precision)."""

    kind: ClassVar[Kind] = Kind.EVENT
    name: str
    data: dict[str, Any]
    timestamp: float


@dataclass(frozen=True)
class Hello:
    """The peer's greeting, sent to each client before the first reply it gets."""

    kind: ClassVar[Kind] = Kind.HELLO
    role: str
    pid: int
    version: str


Message: TypeAlias = Execute | Return | Error | Event | Hello


# ---------------------------------------------------------------------- encoding
def encode(msg: Message) -> bytes:
    """The JSON frame of `msg` (without its blob; see `to_frames`)."""
    try:
        text = json.dumps(_to_wire(msg), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolMessageError(f"cannot encode {msg.kind.value} message: {exc}") from None
    return text.encode("ascii")


def to_frames(msg: Message) -> list[bytes]:
    """The zmq frames of `msg`: its JSON, then the blob of a Return that has one."""
    frames = [encode(msg)]
    if isinstance(msg, Return) and msg.blob is not None:
        frames.append(msg.blob)
    return frames


def _to_wire(msg: Message) -> dict[str, Any]:
    match msg:
        case Execute(command=command, arguments=arguments, id=msg_id):
            return {"execute": command, "arguments": arguments, "id": msg_id}
        case Return(value=value, id=msg_id):
            return {"return": value, "id": msg_id}
        case Error(error_class=error_class, desc=desc, id=msg_id):
            wire: dict[str, Any] = {"error": {"class": error_class, "desc": desc}}
            if msg_id is not None:
                wire["id"] = msg_id
            return wire
        case Event(name=name, data=data, timestamp=timestamp):
            return {"event": name, "data": data, "timestamp": _timestamp_to_wire(timestamp)}
        case Hello(role=role, pid=pid, version=version):
            return {"QMP": {"version": version, "capabilities": []}, "role": role, "pid": pid}
    raise ProtocolMessageError(f"cannot encode {type(msg).__name__}: not a control message")


def _timestamp_to_wire(timestamp: float) -> dict[str, int]:
    seconds, microseconds = divmod(round(timestamp * 1_000_000), 1_000_000)
    return {"seconds": seconds, "microseconds": microseconds}


# ---------------------------------------------------------------------- decoding
def decode(data: bytes, blob: bytes | None = None) -> Message:
    """The message in one JSON frame (plus the raw frame that followed it, if any)."""
    obj = _parse(data)
    kind = _kind_of(obj, data)
    msg = _DECODERS[kind](obj)
    if blob is None:
        return msg
    if not isinstance(msg, Return):
        raise ProtocolMessageError(
            f"a binary frame may only follow a return, not a {kind.value} message")
    return replace(msg, blob=blob)


def from_frames(frames: Sequence[bytes]) -> Message:
    """The message in a list of zmq frames: one JSON frame, or JSON + blob for a Return."""
    if len(frames) == 1:
        return decode(frames[0])
    if len(frames) == 2:
        return decode(frames[0], frames[1])
    raise ProtocolMessageError(f"expected 1 or 2 frames (JSON [+ blob]), got {len(frames)}")


def _parse(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolMessageError(f"not JSON ({exc}): {_excerpt(data)}") from None
    if not isinstance(obj, dict):
        raise ProtocolMessageError(
            f"expected a JSON object, got {_json_type(obj)}: {_excerpt(data)}")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _kind_of(obj: dict[str, Any], data: bytes) -> Kind:
    kinds = [kind for key, kind in _KIND_MEMBERS if key in obj]
    if len(kinds) != 1:
        expected = ", ".join(repr(kind.value) for kind in Kind)
        found = "none" if not kinds else " and ".join(repr(k.value) for k in kinds)
        raise ProtocolMessageError(
            f"unknown message shape: expected exactly one of {expected} as a member, "
            f"found {found}: {_excerpt(data)}")
    return kinds[0]


def _decode_execute(obj: dict[str, Any]) -> Execute:
    _check_members(obj, Kind.EXECUTE, {"execute", "arguments", "id"})
    arguments = obj.get("arguments", {})
    _check_type(arguments, dict, "execute", "arguments")
    return Execute(_member(obj, "execute", str, "execute"), arguments, _id(obj, "execute"))


def _decode_return(obj: dict[str, Any]) -> Return:
    _check_members(obj, Kind.RETURN, {"return", "id"})
    return Return(obj["return"], _id(obj, "return"))


def _decode_error(obj: dict[str, Any]) -> Error:
    _check_members(obj, Kind.ERROR, {"error", "id"})
    body = _member(obj, "error", dict, "error")
    _check_members(body, Kind.ERROR, {"class", "desc"}, where="error.")
    msg_id = _id(obj, "error") if "id" in obj else None
    return Error(_member(body, "class", str, "error"), _member(body, "desc", str, "error"),
                 msg_id)


def _decode_event(obj: dict[str, Any]) -> Event:
    _check_members(obj, Kind.EVENT, {"event", "data", "timestamp"})
    data = obj.get("data", {})  # QEMU omits "data" for events without any (STOP, RESUME)
    _check_type(data, dict, "event", "data")
    stamp = _member(obj, "timestamp", dict, "event")
    _check_members(stamp, Kind.EVENT, {"seconds", "microseconds"}, where="timestamp.")
    seconds = _int_member(stamp, "seconds", "event")
    microseconds = _int_member(stamp, "microseconds", "event")
    return Event(_member(obj, "event", str, "event"), data, seconds + microseconds / 1e6)


def _decode_hello(obj: dict[str, Any]) -> Hello:
    _check_members(obj, Kind.HELLO, {"QMP", "role", "pid"})
    qmp = _member(obj, "QMP", dict, "greeting")
    _check_members(qmp, Kind.HELLO, {"version", "capabilities"}, where="QMP.")
    _member(qmp, "capabilities", list, "greeting")
    return Hello(_member(obj, "role", str, "greeting"), _int_member(obj, "pid", "greeting"),
                 _member(qmp, "version", str, "greeting"))


_DECODERS: dict[Kind, Callable[[dict[str, Any]], Message]] = {
    Kind.EXECUTE: _decode_execute, Kind.RETURN: _decode_return, Kind.ERROR: _decode_error,
    Kind.EVENT: _decode_event, Kind.HELLO: _decode_hello}


# ---------------------------------------------------------------------- validation helpers
def _check_members(obj: dict[str, Any], kind: Kind, allowed: set[str], where: str = "") -> None:
    if obj.keys() <= allowed:
        return
    unexpected = sorted(set(obj) - allowed)
    raise ProtocolMessageError(
        f"{kind.value} message: member {where}{unexpected[0]!r} is unexpected "
        f"(allowed: {', '.join(sorted(allowed))})")


def _member(obj: dict[str, Any], key: str, expected: type, what: str) -> Any:
    if key not in obj:
        raise ProtocolMessageError(f"{what} message: member {key!r} is missing")
    _check_type(obj[key], expected, what, key)
    return obj[key]


def _int_member(obj: dict[str, Any], key: str, what: str) -> int:
    value = _member(obj, key, int, what)
    if isinstance(value, bool):
        raise ProtocolMessageError(f"{what} message: member {key!r} must be an integer, "
                                   f"got a boolean")
    return int(value)


def _id(obj: dict[str, Any], what: str) -> int:
    return _int_member(obj, "id", what)


def _check_type(value: Any, expected: type, what: str, key: str) -> None:
    if not isinstance(value, expected):
        raise ProtocolMessageError(
            f"{what} message: member {key!r} must be {_TYPE_NAMES[expected]}, "
            f"got {_json_type(value)}")


_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "an array"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number"
    for python_type, name in _TYPE_NAMES.items():
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _excerpt(data: bytes) -> str:
    if len(data) <= _EXCERPT:
        return repr(bytes(data))
    return f"{bytes(data[:_EXCERPT])!r}... ({len(data)} bytes)"
