"""`AgentPeer`: the `PeerHandle` of a peer an agent runs on another host.

Strategy: the same interface as a local peer (start, execute, events, runstate, digests,
check, alive, exit code, log, close), every call going through the host's
`AgentConnection`: commands and digests (the blob is relayed as-is) as `peer-execute`,
process faults as `peer-fault` applied by the agent to the peer's session, the final stop
as `peer-stop`, whose reply says what of the session is still alive.  A dead agent makes
its peers "not alive" with a reason naming the agent (`lost_reason`), so the run settles
instead of waiting for its deadline.  A destination of a real machine gets the machine's
layout inline in its `peer-start` (`options: {"layout": {...}}`, control/agent_harness.py):
the runner's layout file means nothing on the agent's host.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from harness.control import ControlError, ControlTimeout, PeerGone
from harness.control import agent_messages as am
from harness.control.agent_messages import AgentHealth

from .agents import AgentConnection
from .peers import PeerEvent, digests_from_reply

__all__ = ["AgentPeer", "RemoteFrozen"]

START_TIMEOUT = 40.0


@dataclass
class RemoteFrozen:
    """A remote peer stopped with SIGSTOP by its agent; `thaw` asks the agent to go on."""

    peer: AgentPeer
    pid: int
    pids: list[int] = field(default_factory=list)

    def thaw(self) -> list[int]:
        try:
            return [int(p) for p in self.peer.fault("cont").get("pids", [])]
        except ControlError:
            return []


class AgentPeer:
    """A harness peer an agent runs for this run (a `PeerHandle`)."""

    kind = "harness"

    def __init__(self, role: str, conn: AgentConnection, guest: dict[str, Any],
                 incoming: bool, layout: Path | None = None) -> None:
        self.role = role
        self.layout = layout  # a real machine's layout file here (sent as content)
        self.conn = conn
        self.host = conn.name
        self.guest = guest
        self.incoming = incoming
        self._pid: int | None = None
        self.log_location: str | None = None
        self.leftovers: list[str] | None = None
        self._stopped_code: int | None = None
        self._tail = ""

    @classmethod
    def adopt(cls, conn: AgentConnection, info: dict[str, Any]) -> AgentPeer:
        """A peer the agent still runs for this run (from the resync of `connect`)."""
        peer = cls(str(info["peer"]), conn, {}, incoming=False)
        peer._pid = int(info["pid"]) if info.get("pid") is not None else None
        peer.log_location = f"{conn.name}:{info.get('log')}"
        return peer

    # ------------------------------------------------------------------ starting
    # A start is a small state machine: `begin_start` sends `peer-start`, `start_done`
    # takes the agent's reply in when it came -- so a runner starts the peers of several
    # hosts at once and keeps taking in events meanwhile; `start` does both, waiting.
    def start_request(self) -> am.PeerStart:
        return am.PeerStart(self.role, "source" if self.role == "source" else "destination",
                            self.guest, incoming=self.incoming,
                            options=layout_options(self.layout))

    def begin_start(self) -> None:
        self._start_id = self.conn.submit(self.start_request())
        self._start_deadline = time.monotonic() + START_TIMEOUT

    def start_done(self) -> bool:
        """True once the agent said the peer is up (CommandError: it could not start it;
        ControlTimeout: no answer within START_TIMEOUT)."""
        reply = self.conn.result(self._start_id)
        if reply is None:
            if time.monotonic() > self._start_deadline:
                self.conn.client.forget(self._start_id)
                raise ControlTimeout(f"the agent of host {self.host} did not start the "
                                     f"{self.role} within {START_TIMEOUT:g} s")
            return False
        self._started(reply)
        return True

    def _started(self, reply: dict[str, Any]) -> None:
        self._pid = int(reply["pid"])
        self.log_location = f"{self.host}:{reply['log']}"

    def start(self) -> None:
        self.begin_start()
        while not self.start_done():
            zmq.select(self.conn.pollables(), [], [], 0.05)

    @property
    def pid(self) -> int | None:
        return self._pid

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        self._check()
        return self.conn.request(am.PeerExecute(self.role, command, dict(arguments or {})),
                                 timeout)

    def _check(self) -> None:
        if self.role in self.conn.exited:
            raise PeerGone(f"the {self.role} on host {self.host} exited with status "
                           f"{self.conn.exited[self.role][0]}")

    def poll_events(self) -> list[PeerEvent]:
        self.conn.pump()
        return self.conn.take_events(self.role)

    def runstate(self) -> str | None:
        return str(self.execute("query-status", timeout=10)["status"])

    def digests(self, at_incoming: bool = False) -> dict[str, np.ndarray] | None:
        self._check()
        value, blob = self.conn.request_blob(am.PeerExecute(
            self.role, "x-guest-digests", {"at": "incoming"} if at_incoming else {}),
            timeout=120)
        return digests_from_reply(value, blob)

    def check_intact(self) -> dict[str, int] | None:
        return dict(self.execute("x-guest-check", timeout=120)["mismatched"])

    def alive(self) -> bool:
        return self._pid is not None and self.conn.alive and self.role not in self.conn.exited

    def exit_code(self) -> int | None:
        exited = self.conn.exited.get(self.role)
        return exited[0] if exited else self._stopped_code

    def lost_reason(self) -> str | None:
        """Why the peer is gone though it did not exit: its agent died."""
        if self.conn.health is AgentHealth.DEAD and self.role not in self.conn.exited:
            return f"its agent {self.host} ({self.conn.url}) is dead: {self.conn.dead_reason}"
        return None

    def stderr_tail(self, lines: int = 20) -> str:
        exited = self.conn.exited.get(self.role)
        if exited:
            return "\n".join(exited[1].splitlines()[-lines:])
        if not self.conn.alive or self._pid is None:
            return self._tail
        try:
            self._tail = str(self.conn.request(am.PeerLog(self.role, lines), timeout=10)["tail"])
        except ControlError:
            pass
        return self._tail

    def fault(self, kind: str) -> dict[str, Any]:
        """kill | crash | stop | cont, applied by the agent to the peer's session."""
        reply = dict(self.conn.request(am.PeerFault(self.role, kind), timeout=20))  # type: ignore[arg-type]
        if kind in ("kill", "crash"):
            self.conn.exited.setdefault(self.role, (reply.get("exit-code"), ""))
        return reply

    def freeze(self) -> RemoteFrozen:
        reply = self.fault("stop")
        return RemoteFrozen(self, self._pid or 0, [int(p) for p in reply.get("pids", [])])

    def stacks(self) -> str:
        try:
            return str(self.conn.request(am.PeerStacks(self.role), timeout=10)["stacks"])
        except ControlError as err:
            return f"(no stacks from host {self.host}: {err})"

    def close(self) -> None:
        if self._pid is None or not self.conn.alive:
            return
        try:
            reply = self.conn.request(am.PeerStop(self.role), timeout=40)
        except ControlError as err:
            self.leftovers = None
            raise ControlError(f"stopping the {self.role} on host {self.host}: {err}") from None
        self._stopped_code = reply.get("exit-code")
        self.leftovers = [f"on host {self.host}: {x}" for x in reply.get("leftovers", [])]


def layout_options(layout: Path | None) -> dict[str, Any]:
    """A harness peer's `peer-start` options: the layout's content, if it has one."""
    if layout is None:
        return {}
    from harness.faults.proxy_main import load_layout

    try:
        return {"layout": json.loads(json.dumps(load_layout(layout).to_json()))}
    except ValueError as err:
        raise OSError(str(err)) from None
