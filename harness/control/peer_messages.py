"""The runner's vocabulary with its peers and its proxy, typed and checked at the boundary.

Strategy: as `agent_messages` does for agents -- one frozen dataclass per thing that
matters to the runner, decoded once where it enters (`decode_event`, `MigrationInfo.of`),
so the coordinator, the steps and the invariants never read a JSON dict by key.  The
events are QEMU 7.2's (qapi/migration.json: MIGRATION, MIGRATION_PASS; STOP, RESUME) and
the proxy's (WIRE, FAULT, SESSION, FRAMING_LOST, PROXY_ERROR, LAYOUT_LEARNED,
HOLD_RELEASED, see harness/faults/proxy.py); statuses are `MigrationStatus` members from
here on.  An event of a known name with a bad member is a `ProtocolMessageError` naming
it; an unknown name (QEMU has many) decodes to `None` and goes on the timeline as it came.
The commands the runner sends are dataclasses with their QMP name (`request` gives the
(command, arguments) pair a handle's `execute` takes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from harness.control.errors import ProtocolMessageError
from harness.migration.status import MigrationStatus

__all__ = [
    "FaultActed",
    "FramingLost",
    "GuestDescription",
    "HoldReleased",
    "LayoutLearned",
    "Migrate",
    "MigrateIncoming",
    "MigrateRecover",
    "MigrationEvent",
    "MigrationInfo",
    "PassEvent",
    "ProxyArm",
    "ProxyFailed",
    "ProxyRelease",
    "ProxyTarget",
    "QueryMigrate",
    "RunStateEvent",
    "SessionEvent",
    "SetCapabilities",
    "SetParameters",
    "WireSeen",
    "decode_event",
    "send",
]


# ---------------------------------------------------------------------- events
@dataclass(frozen=True)
class MigrationEvent:
    """MIGRATION: a peer's status changed."""

    NAME: ClassVar[str] = "MIGRATION"
    status: MigrationStatus


@dataclass(frozen=True)
class PassEvent:
    """MIGRATION_PASS: the source began a pass over RAM."""

    NAME: ClassVar[str] = "MIGRATION_PASS"
    number: int


@dataclass(frozen=True)
class RunStateEvent:
    """STOP / RESUME: the guest's vCPUs stopped or resumed on that peer."""

    running: bool


@dataclass(frozen=True)
class WireSeen:
    """WIRE: the proxy saw an armed step's trigger (and holds the stream if `held`)."""

    NAME: ClassVar[str] = "WIRE"
    id: str
    held: bool = False
    channel: str | None = None
    offset: int | None = None
    frame: str | None = None
    session: int | None = None
    count: int | None = None
    data: dict[str, Any] = field(default_factory=dict, compare=False)  # as it came


@dataclass(frozen=True)
class FaultActed:
    """FAULT: the proxy applied an armed network fault to the stream."""

    NAME: ClassVar[str] = "FAULT"
    id: str
    kind: str
    channel: str = "main"
    data: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SessionEvent:
    """SESSION: the proxy accepted or closed a source connection."""

    NAME: ClassVar[str] = "SESSION"
    n: int
    event: str
    reason: str = ""


@dataclass(frozen=True)
class FramingLost:
    NAME: ClassVar[str] = "FRAMING_LOST"
    channel: str
    message: str


@dataclass(frozen=True)
class ProxyFailed:
    NAME: ClassVar[str] = "PROXY_ERROR"
    error: str


@dataclass(frozen=True)
class LayoutLearned:
    NAME: ClassVar[str] = "LAYOUT_LEARNED"
    data: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class HoldReleased:
    NAME: ClassVar[str] = "HOLD_RELEASED"
    id: str


Event = (MigrationEvent | PassEvent | RunStateEvent | WireSeen | FaultActed | SessionEvent
         | FramingLost | ProxyFailed | LayoutLearned | HoldReleased)


def _member(data: dict[str, Any], name: str, kind: type | tuple[type, ...], event: str,
            default: Any = ...) -> Any:
    if name not in data or data[name] is None:
        if default is ...:
            raise ProtocolMessageError(f"{event}: member {name!r} is missing")
        return default
    value = data[name]
    if isinstance(value, bool) and kind is not bool and bool not in (
            kind if isinstance(kind, tuple) else (kind,)):
        raise ProtocolMessageError(f"{event}: member {name!r} must not be a boolean")
    if not isinstance(value, kind):
        raise ProtocolMessageError(f"{event}: member {name!r} has the wrong type "
                                   f"({type(value).__name__})")
    return value


def _status(data: dict[str, Any]) -> MigrationStatus:
    text = _member(data, "status", str, "MIGRATION")
    try:
        return MigrationStatus(text)
    except ValueError:
        raise ProtocolMessageError(f"MIGRATION: member 'status' {text!r} is not a "
                                   f"MigrationStatus") from None


def _wire(data: dict[str, Any]) -> WireSeen:
    return WireSeen(str(_member(data, "id", str, "WIRE")), bool(data.get("held", False)),
                    _member(data, "channel", str, "WIRE", None),
                    _member(data, "offset", int, "WIRE", None),
                    _member(data, "frame", str, "WIRE", None),
                    _member(data, "session", int, "WIRE", None),
                    _member(data, "count", int, "WIRE", None), dict(data))


_DECODERS: dict[str, Any] = {
    "MIGRATION": lambda d: MigrationEvent(_status(d)),
    "MIGRATION_PASS": lambda d: PassEvent(_member(d, "pass", int, "MIGRATION_PASS")),
    "STOP": lambda d: RunStateEvent(False),
    "RESUME": lambda d: RunStateEvent(True),
    "WIRE": _wire,
    "FAULT": lambda d: FaultActed(str(_member(d, "id", str, "FAULT")),
                                  str(_member(d, "kind", str, "FAULT")),
                                  _member(d, "channel", str, "FAULT", "main"), dict(d)),
    "SESSION": lambda d: SessionEvent(_member(d, "n", int, "SESSION"),
                                      _member(d, "event", str, "SESSION"),
                                      _member(d, "reason", str, "SESSION", "")),
    "FRAMING_LOST": lambda d: FramingLost(_member(d, "channel", str, "FRAMING_LOST"),
                                          _member(d, "message", str, "FRAMING_LOST")),
    "PROXY_ERROR": lambda d: ProxyFailed(_member(d, "error", str, "PROXY_ERROR")),
    "LAYOUT_LEARNED": lambda d: LayoutLearned(dict(d)),
    "HOLD_RELEASED": lambda d: HoldReleased(str(_member(d, "id", str, "HOLD_RELEASED"))),
}


def decode_event(name: str, data: dict[str, Any]) -> Event | None:
    """The typed event, None for a name the runner does not act on; ProtocolMessageError
    for a known one with a bad member."""
    decoder = _DECODERS.get(name)
    if decoder is None:
        return None
    if not isinstance(data, dict):
        raise ProtocolMessageError(f"{name}: data is not an object")
    return decoder(data)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- query-migrate
@dataclass(frozen=True)
class MigrationInfo:
    """A `query-migrate` reply, as far as the runner reads it (qapi/migration.json
    MigrationInfo); `raw` keeps the whole reply for the report."""

    status: MigrationStatus | None
    ram: dict[str, Any] = field(default_factory=dict)
    error_desc: str | None = None
    socket_address: tuple[dict[str, Any], ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, reply: Any) -> MigrationInfo:
        """Checked: a reply that is not an object, or whose members have the wrong types,
        is a ProtocolMessageError naming the member."""
        if not isinstance(reply, dict):
            raise ProtocolMessageError("query-migrate: the reply is not an object")
        status = _status(reply) if reply.get("status") is not None else None
        ram = _member(reply, "ram", dict, "query-migrate", {})
        desc = _member(reply, "error-desc", str, "query-migrate", None)
        sockets = _member(reply, "socket-address", list, "query-migrate", [])
        return cls(status, dict(ram), desc, tuple(s for s in sockets if isinstance(s, dict)),
                   dict(reply))

    def ram_int(self, key: str) -> int | None:
        value = self.ram.get(key)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def listening_port(self) -> tuple[str, int] | None:
        """(host, port) of an inet listener the destination reports, if any."""
        for addr in self.socket_address:
            if addr.get("type") in ("inet", "tcp") or "port" in addr:
                try:
                    return str(addr["host"]), int(addr["port"])
                except (KeyError, ValueError, TypeError):
                    continue
        return None


# ---------------------------------------------------------------------- the guest
@dataclass(frozen=True)
class GuestDescription:
    """The guest a harness peer simulates (`--guest-json`, `peer-start`'s `guest`)."""

    machine: str
    seed: int
    fill: float
    content: str
    blocks: tuple[tuple[str, int], ...]
    devices: tuple[str, ...]
    dirty_rate: int | None = None
    pattern: str = "uniform"
    hotset: int = 0

    def to_json(self) -> dict[str, Any]:
        workload = {"dirty_rate": self.dirty_rate, "pattern": self.pattern,
                    "hotset": self.hotset, "seed": self.seed} if self.dirty_rate else None
        return {"machine": self.machine, "seed": self.seed, "fill": self.fill,
                "content": self.content,
                "blocks": [{"name": n, "size": s} for n, s in self.blocks],
                "devices": list(self.devices), "workload": workload}

    @classmethod
    def of_scenario(cls, scenario: Any, seed: int) -> GuestDescription:
        g = scenario.guest
        w = g.workload
        return cls(g.machine, seed, g.fill, g.content,
                   tuple((b.name, b.size) for b in g.ram_blocks), tuple(g.devices),
                   w.dirty_rate or None, w.pattern, w.hotset or 0)


# ---------------------------------------------------------------------- commands
@dataclass(frozen=True)
class _Command:
    """A command the runner sends a peer or the proxy; `wire()` is (name, arguments)."""

    NAME: ClassVar[str] = ""

    def wire(self) -> tuple[str, dict[str, Any]]:
        return self.NAME, {f.name.replace("_", "-"): getattr(self, f.name)
                           for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Migrate(_Command):
    NAME: ClassVar[str] = "migrate"
    uri: str
    resume: bool | None = None


@dataclass(frozen=True)
class MigrateIncoming(_Command):
    NAME: ClassVar[str] = "migrate-incoming"
    uri: str


@dataclass(frozen=True)
class MigrateRecover(_Command):
    NAME: ClassVar[str] = "migrate-recover"
    uri: str


@dataclass(frozen=True)
class QueryMigrate(_Command):
    NAME: ClassVar[str] = "query-migrate"


@dataclass(frozen=True)
class SetCapabilities(_Command):
    NAME: ClassVar[str] = "migrate-set-capabilities"
    capabilities: list[dict[str, Any]]


@dataclass(frozen=True)
class SetParameters(_Command):
    NAME: ClassVar[str] = "migrate-set-parameters"
    parameters: dict[str, Any]

    def wire(self) -> tuple[str, dict[str, Any]]:
        return self.NAME, dict(self.parameters)  # QMP takes them flat


@dataclass(frozen=True)
class ProxyArm(_Command):
    """Arm a step in the proxy: its wire trigger (None: now), its fault, or a hold."""

    NAME: ClassVar[str] = "x-proxy-arm"
    id: str
    trigger: dict[str, Any] | None
    fault: dict[str, Any] | None
    hold: bool
    probability: float | None = None

    def wire(self) -> tuple[str, dict[str, Any]]:
        out: dict[str, Any] = {"id": self.id, "trigger": self.trigger, "fault": self.fault,
                               "hold": self.hold}
        if self.probability is not None:
            out["probability"] = self.probability
        return self.NAME, out


@dataclass(frozen=True)
class ProxyRelease(_Command):
    NAME: ClassVar[str] = "x-proxy-release"
    id: str


@dataclass(frozen=True)
class ProxyTarget(_Command):
    NAME: ClassVar[str] = "x-proxy-target"
    uri: str


Command = (Migrate | MigrateIncoming | MigrateRecover | QueryMigrate | SetCapabilities
           | SetParameters | ProxyArm | ProxyRelease | ProxyTarget)


def send(handle: Any, command: Command, timeout: float | None = None) -> Any:
    """Run a typed command on a peer or proxy handle; its return value."""
    name, arguments = command.wire()
    if timeout is None:
        return handle.execute(name, arguments)
    return handle.execute(name, arguments, timeout=timeout)
