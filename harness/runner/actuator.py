"""The actuator: carries out the effects the steps return, without blocking the loop.

Strategy: the coordinator owns one `Actuator` and hands it every effect (runner/effects.py)
in the order the steps returned them.  Quick effects (a QMP command, arming the proxy, a
local process fault) are done at once.  Slow ones are small state machines that the
coordinator's loop advances (`advance`) between two waits on its poller, so events keep
flowing while they last: a recovery (the destination listens anew, its port is learned,
the source is awaited in postcopy-paused -- a QEMU source learns of a break later than
its destination -- and then resumes), a link fault (the agent's reply may wait for the
link it cut), a frozen peer's thaw.  The actuator reaches the run only through the
`Handles` the coordinator gives it and the `Journal` it writes to (the timeline and the
fault list): nothing here imports the coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.control import CommandError, ControlError
from harness.control.agent_messages import LinkFaultRequest
from harness.control.peer_messages import (
    Migrate,
    MigrateRecover,
    MigrationInfo,
    ProxyTarget,
    QueryMigrate,
    send,
)
from harness.errors import EnvironmentFailure
from harness.faults import process
from harness.migration.status import MigrationStatus
from harness.scenario.model import Scenario

from . import effects as fx
from .agent_peer import AgentPeer, RemoteFrozen
from .agents import tcp_uri
from .peers import PeerHandle, short_dir
from .state import RunState

__all__ = ["Actuator", "ActuatorError", "Handles", "Journal"]

RECOVER_WAIT = 10.0  # s a source may take to see the break it must resume from
PORT_WAIT = 10.0     # s the destination may take to report the port it listens on
LINK_REPLY_WAIT = 30.0  # s an agent may take to apply a link fault


class ActuatorError(EnvironmentFailure, RuntimeError):
    """An effect could not be carried out and the run cannot go on (verdict `error`)."""


class Journal(Protocol):
    """Where effects are recorded: the timeline and the run's fault list."""

    def note(self, peer: str, name: str, data: dict[str, Any] | None = None,
             at: float | None = None) -> None: ...

    def record_fault(self, step: str, kind: str, target: str, detail: dict[str, Any],
                     at: float | None = None) -> None: ...


@dataclass
class Handles:
    """What the effects act on; the coordinator fills it as the run starts."""

    scenario: Scenario
    src: PeerHandle | None = None
    dst: PeerHandle | None = None
    proxy: Any = None  # ProxyHandle | AgentProxy
    agents: Any = None  # agent_pool.Agents
    dirs: list[Any] = field(default_factory=list)  # directories to remove at the end

    def peer(self, role: str) -> PeerHandle:
        peer = self.src if role == "source" else self.dst
        assert peer is not None, role
        return peer

    def destination_address(self) -> str:
        """Where the destination listens: its host's address, or loopback."""
        host = self.scenario.destination.host
        return self.scenario.hosts[host].peer_address if host is not None else "127.0.0.1"


class Actuator:
    """Carries out effects; owns the timers, the frozen peers and the slow effects."""

    def __init__(self, handles: Handles, state: RunState, journal: Journal) -> None:
        self.h = handles
        self.state = state
        self.journal = journal
        self.frozen: dict[str, process.Frozen | RemoteFrozen] = {}
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._slow: list[_Slow] = []

    # ------------------------------------------------------------------ the loop's side
    def carry_out(self, effects: list[fx.Effect]) -> None:
        for effect in effects:
            self._do(effect)

    def advance(self) -> bool:
        """Run the timers that are due and advance the slow effects; True when anything
        moved."""
        now = time.monotonic()
        due = [t for t in self._timers if t[0] <= now]
        self._timers = [t for t in self._timers if t[0] > now]
        for _, action in due:
            action()
        moved = bool(due)
        for slow in list(self._slow):
            if slow.advance(self):
                self._slow.remove(slow)
                self.carry_out(list(slow.then))
                moved = True
        return moved

    @property
    def busy(self) -> bool:
        """A timer or a slow effect is pending: the run has not settled."""
        return bool(self._timers or self._slow)

    def next_due(self) -> float | None:
        """The monotonic time the next timer is due (for the loop's wait)."""
        return min((t for t, _ in self._timers), default=None)

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self._timers.append((time.monotonic() + delay, action))

    def thaw(self, role: str, step: str) -> None:
        frozen = self.frozen.pop(role, None)
        if frozen is not None:
            self.journal.note("runner", "thawed", {"step": step, "peer": role,
                                                   "pids": frozen.thaw()})

    def thaw_all(self, why: str) -> None:
        for role in list(self.frozen):
            self.thaw(role, why)

    # ------------------------------------------------------------------ effects
    def _do(self, effect: fx.Effect) -> None:
        if isinstance(effect, fx.Arm):
            self._arm(effect)
        elif isinstance(effect, fx.Command):
            self._command(effect)
        elif isinstance(effect, fx.Recover):
            self._slow.append(_Recovery.begin(self, effect))
        elif isinstance(effect, fx.ProcessFault):
            self._process_fault(effect)
        elif isinstance(effect, fx.LinkFault):
            self._slow.append(_LinkFault.begin(self, effect))
        elif isinstance(effect, fx.Release):
            self.proxy_execute("x-proxy-release", {"id": effect.step_id})

    def proxy_execute(self, command: str, arguments: dict[str, Any]) -> Any:
        if self.h.proxy is None:
            raise ActuatorError(f"{command}: the scenario has no proxy between the peers")
        return self.h.proxy.execute(command, arguments)

    def _arm(self, effect: fx.Arm) -> None:
        name, arguments = effect.request.wire()
        self.proxy_execute(name, arguments)
        data = {"step": effect.label, "trigger": effect.request.trigger,
                "fault": effect.request.fault}
        if effect.request.trigger is not None:
            data["hold"] = effect.request.hold
        self.journal.note("runner", "armed", data)

    def _command(self, effect: fx.Command) -> None:
        data: dict[str, Any] = {"step": effect.label, "peer": effect.peer,
                                "command": effect.command, **effect.where}
        try:
            data["result"] = self.h.peer(effect.peer).execute(effect.command,
                                                             dict(effect.arguments))
        except CommandError as err:
            data["error"] = err.desc
        except ControlError as err:  # the peer is gone (killed by an earlier step...)
            data["error"] = f"the {effect.peer} did not answer: {err}"
        self.journal.note("runner", "step", data)

    def _process_fault(self, effect: fx.ProcessFault) -> None:
        fault, label = effect.fault, effect.label
        peer = self.h.peer(fault.target)
        pid = peer.pid
        if pid is None or not peer.alive():
            self.journal.record_fault(label, fault.kind, fault.target,
                                      {**effect.where, "skipped": "not running"})
            return
        detail: dict[str, Any] = dict(effect.where)
        if isinstance(peer, AgentPeer):
            self._remote_process_fault(effect, peer, detail)
        elif fault.kind == "kill":
            detail["pids"] = process.kill(pid)
        elif fault.kind == "crash":
            detail["pids"] = process.crash(pid)
        else:
            frozen = process.freeze(pid)
            self._freeze(fault, label, frozen)
            detail["pids"] = frozen.pids
        if fault.duration is not None:
            detail["duration"] = fault.duration
        self.journal.record_fault(label, fault.kind, fault.target, detail)

    def _remote_process_fault(self, effect: fx.ProcessFault, peer: AgentPeer,
                              detail: dict[str, Any]) -> None:
        """The same faults on a peer of another host, applied by its agent to its session."""
        fault = effect.fault
        detail["host"] = peer.host
        try:
            if fault.kind == "stop":
                frozen = peer.freeze()
                self._freeze(fault, effect.label, frozen)
                detail["pids"] = frozen.pids
            else:
                detail["pids"] = peer.fault(fault.kind).get("pids", [])
        except ControlError as err:
            detail["error"] = f"the agent of host {peer.host} did not apply it: {err}"

    def _freeze(self, fault: Any, label: str, frozen: process.Frozen | RemoteFrozen) -> None:
        self.frozen[fault.target] = frozen
        if fault.duration is not None:
            self.after(fault.duration, lambda: self.thaw(fault.target, label))

    # ------------------------------------------------------------------ for the slow ones
    def recovery_uri(self) -> str:
        if self.h.scenario.transport.scheme == "unix":
            d = short_dir("mhr")
            self.h.dirs.append(d)
            return f"unix:{d}/recover.sock"
        # QEMU 7.2, like our peer, then lists the port it took
        return tcp_uri(self.h.destination_address(), 0)


class _Slow(Protocol):
    then: tuple[fx.Effect, ...]

    def advance(self, act: Actuator) -> bool: ...


@dataclass
class _Recovery:
    """migrate-recover, step by step: destination -> its port -> source paused -> resume."""

    label: str
    data: dict[str, Any]
    then: tuple[fx.Effect, ...]
    phase: str = "port"  # port -> paused -> done
    target: str = ""
    deadline: float = 0.0

    @classmethod
    def begin(cls, act: Actuator, effect: fx.Recover) -> _Recovery:
        uri = act.recovery_uri()
        data: dict[str, Any] = {"step": effect.label, "peer": "destination",
                                "command": "migrate-recover", "uri": uri}
        self = cls(effect.label, data, effect.then, deadline=time.monotonic() + PORT_WAIT)
        try:
            send(act.h.peer("destination"), MigrateRecover(uri))
        except ControlError as err:
            self._failed(act, err)
            return self
        if not uri.endswith(":0"):
            self._to_source(act, uri)
        return self

    def advance(self, act: Actuator) -> bool:
        try:
            if self.phase == "port":
                self._await_port(act)
            if self.phase == "paused":
                self._await_source(act)
        except ControlError as err:
            self._failed(act, err)
        return self.phase == "done"

    def _await_port(self, act: Actuator) -> None:
        info = MigrationInfo.of(send(act.h.peer("destination"), QueryMigrate()))
        port = info.listening_port()
        if port is not None:
            self._to_source(act, tcp_uri(*port))
        elif time.monotonic() > self.deadline:
            raise ActuatorError("the destination did not report its listening port")

    def _to_source(self, act: Actuator, target: str) -> None:
        source_uri = target
        if act.h.proxy is not None:
            send(act.h.proxy, ProxyTarget(target))
            source_uri = act.h.proxy.address_for_source()
        self.target = source_uri
        self.data["source-uri"] = source_uri
        self.phase = "paused"
        self.deadline = time.monotonic() + RECOVER_WAIT

    def _await_source(self, act: Actuator) -> None:
        """A QEMU source resumes only from postcopy-paused ("Cannot resume if there is no
        paused migration"), which it reaches when its own socket fails."""
        status = act.state.status["source"]
        paused = status == MigrationStatus.POSTCOPY_PAUSED
        if not paused and act.h.peer("source").alive() and time.monotonic() < self.deadline:
            return
        if not paused:
            self.data["source-status"] = str(status)
        self.phase = "done"
        try:
            send(act.h.peer("source"), Migrate(self.target, resume=True))
        except ControlError as err:
            self._failed(act, err)
            return
        act.journal.note("runner", "step", self.data)

    def _failed(self, act: Actuator, err: ControlError) -> None:
        self.data["error"] = err.desc if isinstance(err, CommandError) else \
            f"a peer did not answer: {err}"
        act.journal.note("runner", "step", self.data)
        self.phase = "done"


@dataclass
class _LinkFault:
    """A link fault by the agent of its host; recorded when the agent says it applied it."""

    effect: fx.LinkFault
    conn: Any
    msg_id: int
    toward: str
    other: str
    applied: float  # on the run's clock
    deadline: float
    then: tuple[fx.Effect, ...]

    @classmethod
    def begin(cls, act: Actuator, effect: fx.LinkFault) -> _LinkFault:
        sc, fault = act.h.scenario, effect.fault
        src_host, dst_host = sc.source.host, sc.destination.host
        other = dst_host if fault.host == src_host else src_host
        assert other is not None and fault.host is not None
        toward = sc.hosts[other].peer_address
        request = LinkFaultRequest(effect.step_id, fault.kind, toward, fault.duration,
                                   fault.rate, getattr(fault, "delay", None),
                                   getattr(fault, "jitter", None))
        conn = act.h.agents[fault.host]
        applied = act.state.since_start()
        msg_id = conn.submit(request)
        return cls(effect, conn, msg_id, toward, other, applied,
                   time.monotonic() + LINK_REPLY_WAIT, effect.then)

    def advance(self, act: Actuator) -> bool:
        fault, label = self.effect.fault, self.effect.label
        try:
            reply = self.conn.result(self.msg_id)
        except CommandError as err:
            raise ActuatorError(f"{label}: {fault.kind} on host {fault.host} toward "
                                f"{self.toward}: {err.desc}") from None
        if reply is None:
            if time.monotonic() > self.deadline:
                self.conn.client.forget(self.msg_id)
                raise ActuatorError(f"{label}: {fault.kind} on host {fault.host}: its agent "
                                    f"did not answer within {LINK_REPLY_WAIT:g} s")
            return False
        agents = act.h.agents
        for host in (fault.host, self.other):  # both ends may fall silent while it lasts
            if host in agents.by_host:
                agents[host].expect_silence((fault.duration or act.h.scenario.timeout) + 5)
        act.journal.record_fault(label, fault.kind, f"host {fault.host}", {
            **self.effect.where, "toward": self.toward,
            **({"duration": fault.duration} if fault.duration is not None else {}),
            **dict(reply.get("detail") or {})}, at=self.applied)
        return True
