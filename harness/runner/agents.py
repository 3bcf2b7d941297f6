"""The runner's connection to one agent: run binding, host facts, clock, health, events.

Strategy: one `AgentConnection` per host the scenario places a peer (or a link fault) on,
owned by the coordinator's loop like every other handle: it connects (an `AgentClient`,
CURVE when the host has keys), binds the run to the agent (`agent-hello RUN-ID`), reads
the host's facts, and measures the clock offset NTP-style -- several `agent-time` round
trips, the one with the smallest round trip kept, offset = agent time - the midpoint of
the round trip -- so that every event a remote peer stamps is moved to the runner's clock
before it enters the timeline.  `pump` (called from the loop) takes in the agent's events
and judges the agent (the runner's own heartbeats go from `agent_pool.Pacemaker`):
CONNECTED while its heartbeats come, MISSING when they are late, DEAD when its connection
is lost and does not come back, when it is silent far too long, or when it restarted (a
new pid: its peers are gone) -- each change a note on the timeline.  While a link fault
the scenario put on that host is in force, silence is expected and never judged dead.
The peers an agent runs are `agent_peer.AgentPeer`s; all of a run's connections are
`agent_pool.Agents`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.control import ControlError, ControlTimeout, PeerGone
from harness.control import agent_messages as am
from harness.control.agent_client import AgentClient
from harness.control.agent_messages import AgentHealth
from harness.control.curve import KEYS_ENV, ClientKeys, KeyError_, load_client_keys
from harness.errors import EnvironmentFailure
from harness.scenario.model import Host

from .peers import PeerEvent

__all__ = ["AgentConnection", "AgentError", "ClockSync", "client_keys", "tcp_uri"]

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
HEARTBEAT = 0.5
MISSING_AFTER = 1.5      # s without an agent heartbeat: missing
DEAD_AFTER_DOWN = 2.0    # s with the connection lost: dead
DEAD_AFTER_SILENCE = 15.0  # s without a heartbeat, connected or not: dead
CLOCK_SAMPLES = 8


class AgentError(EnvironmentFailure, RuntimeError):
    """An agent could not be reached or refused the run; the message names it."""


@dataclass
class ClockSync:
    """The agent's clock against the runner's: agent time = runner time + offset."""

    offset: float
    rtt: float
    samples: int

    def to_json(self) -> dict[str, Any]:
        return {"offset": round(self.offset, 6), "rtt": round(self.rtt, 6),
                "samples": self.samples}


def tcp_uri(address: str, port: int | str) -> str:
    return f"tcp:[{address}]:{port}" if ":" in address else f"tcp:{address}:{port}"


def client_keys(host: Host) -> ClientKeys | None:
    """The host's `keys:`, else $HARNESS_AGENT_KEYS, else none (a loopback agent)."""
    directory = host.keys or (Path(os.environ[KEYS_ENV]) if os.environ.get(KEYS_ENV) else None)
    if directory is None:
        return None
    try:
        return load_client_keys(directory)
    except KeyError_ as err:
        raise AgentError(f"agent {host.agent}: keys: {err}") from None


class AgentConnection:
    """The runner's session with one agent, for one run."""

    def __init__(self, name: str, host: Host, run_id: str) -> None:
        self.name, self.host, self.run_id = name, host, run_id
        self.url = host.agent
        self.health = AgentHealth.CONNECTING
        self.client = AgentClient(self.url, timeout=COMMAND_TIMEOUT, keys=client_keys(host))
        self.facts: dict[str, Any] = {}
        self.clock: ClockSync | None = None
        self.clock_end: ClockSync | None = None
        self.agent_pid: int | None = None
        self.resynced_peers: list[dict[str, Any]] = []
        self.dead_reason = ""
        self.dead_at: float | None = None  # monotonic: when it went away
        self.leftovers: list[str] | None = None  # None: not known (yet, or agent dead)
        self.files: dict[str, Any] | None = None  # what runner/fetch.py brought back
        self._events: dict[str, deque[PeerEvent]] = {}
        self.exited: dict[str, tuple[int | None, str]] = {}
        self._notes: list[tuple[str, dict[str, Any]]] = []
        self._last_beat = time.monotonic()
        self.heartbeat_at = 0.0  # monotonic time of the last AGENT_HEARTBEAT taken in
        self._down_since: float | None = None
        self._quiet_until = 0.0

    # ------------------------------------------------------------------ setup
    def connect(self, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
        """Greeting, run binding, facts, clock; AgentError saying what failed."""
        greeting = self._greeting(timeout)
        if greeting.role != am.AGENT_ROLE:
            raise AgentError(f"{self.url} is not an agent (it greets as {greeting.role!r})")
        self.agent_pid = greeting.pid
        workdir = str(self.host.workdir) if self.host.workdir is not None else None
        reply = self.request(am.HelloAgent(self.run_id, HEARTBEAT, workdir),
                             timeout=timeout)
        self.facts = dict(reply.get("facts", {}))
        self.resynced_peers = list(reply.get("peers", []))
        self.clock = self.measure_clock()
        self.health = AgentHealth.CONNECTED
        self._last_beat = time.monotonic()
        return dict(reply)

    def _greeting(self, timeout: float) -> Any:
        """The agent's greeting, retried while the connection comes and goes (an agent
        starting, or one that drops us at the CURVE handshake) until the deadline."""
        deadline = time.monotonic() + timeout
        drops = 0
        while True:
            try:
                return self.client.hello(timeout=max(0.05, deadline - time.monotonic()))
            except PeerGone:
                drops += 1
            except ControlTimeout:
                pass
            except ControlError as err:
                raise AgentError(f"agent {self.name} at {self.url}: {err}") from None
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
            self.client.handle_readable()  # a reconnection seen, the link is UP again
        why = (f"it closed the connection {drops} time(s) before answering: a CURVE agent "
               f"drops clients whose keys it does not know" if drops else
               "is `harness agent` running there? An agent with keys ignores a client "
               "whose keys it does not know, without a word")
        raise AgentError(f"agent {self.name} at {self.url} did not answer within "
                         f"{timeout:g} s ({why}: check the host's keys: or "
                         f"${KEYS_ENV})")

    def measure_clock(self, samples: int = CLOCK_SAMPLES) -> ClockSync:
        best: ClockSync | None = None
        for _ in range(samples):
            t1 = time.time()
            agent_time = float(self.request(am.TimeSample(), timeout=5)["time"])
            t4 = time.time()
            sample = ClockSync(agent_time - (t1 + t4) / 2, t4 - t1, samples)
            if best is None or sample.rtt < best.rtt:
                best = sample
        assert best is not None
        return best

    def to_runner_clock(self, timestamp: float) -> float:
        return timestamp - (self.clock.offset if self.clock is not None else 0.0)

    # ------------------------------------------------------------------ commands
    def request(self, body: Any, timeout: float | None = None) -> Any:
        self._check_alive()
        command, arguments = am.request_arguments(body)
        return self.client.execute(command, arguments, timeout)

    def request_blob(self, body: Any, timeout: float | None = None) -> tuple[Any, bytes | None]:
        self._check_alive()
        command, arguments = am.request_arguments(body)
        return self.client.execute_blob(command, arguments, timeout)

    def submit(self, body: Any) -> int:
        """Send a request without waiting (`result` takes its reply in later)."""
        self._check_alive()
        command, arguments = am.request_arguments(body)
        return self.client.submit(command, arguments)

    def result(self, msg_id: int) -> Any:
        """The reply's value once it came (None: not yet); CommandError, PeerGone."""
        self._check_alive()
        reply = self.client.reply(msg_id)
        return None if reply is None else (reply.value if reply.value is not None else {})

    def pollables(self) -> list[Any]:
        return self.client.pollables()

    def _check_alive(self) -> None:
        if self.health is AgentHealth.DEAD:
            raise PeerGone(f"agent {self.name} at {self.url} is dead ({self.dead_reason})")

    @property
    def alive(self) -> bool:
        return self.health not in (AgentHealth.DEAD, AgentHealth.CLOSED)

    # ------------------------------------------------------------------ the loop's side
    def pump(self) -> None:
        """Take in events, send our heartbeat when due, judge the agent's health."""
        if self.health in (AgentHealth.DEAD, AgentHealth.CLOSED, AgentHealth.CONNECTING):
            return
        try:
            events = self.client.events()
        except ControlError:
            events = []
        for event in events:
            self._take(event.name, event.data)
        self._judge(time.monotonic())

    def _take(self, name: str, data: dict[str, Any]) -> None:
        try:
            body = am.decode_event(name, data)
        except ControlError as err:
            self._notes.append(("agent-protocol-error", {"event": name, "error": str(err)}))
            return
        self._last_beat = time.monotonic()  # any event is a sign of life
        if isinstance(body, am.AgentHeartbeat):
            self.heartbeat_at = self._last_beat
        elif isinstance(body, am.PeerEventData):
            self._events.setdefault(body.peer, deque()).append(
                PeerEvent(body.event, body.data, self.to_runner_clock(body.timestamp)))
        elif isinstance(body, am.PeerExited):
            self.exited.setdefault(body.peer, (body.exit_code, body.stderr_tail))
        elif isinstance(body, am.LinkUndone):
            self._notes.append(("link-undone", {"id": body.id, **body.detail,
                                                **({"error": body.error} if body.error
                                                   else {})}))

    def _judge(self, now: float) -> None:
        greeting = self.client.greeting
        if greeting is not None and self.agent_pid is not None and \
                greeting.pid != self.agent_pid:
            self._dead(f"it restarted (pid {greeting.pid}, was {self.agent_pid}): the peers "
                       f"it ran are gone")
            return
        down = self.client.state.value in ("down", "gone")
        self._down_since = (self._down_since or now) if down else None
        silence = now - self._last_beat
        quiet = now < self._quiet_until
        if self._down_since is not None and now - self._down_since > DEAD_AFTER_DOWN \
                and not quiet:
            self._dead(f"its connection was lost and did not come back within "
                       f"{DEAD_AFTER_DOWN:g} s", since=self._down_since)
        elif silence > DEAD_AFTER_SILENCE and not quiet:
            self._dead(f"no heartbeat for {silence:.1f} s", since=self._last_beat)
        elif silence > MISSING_AFTER or self._down_since is not None:
            self._set(AgentHealth.MISSING, {"silent": round(silence, 3)})
        else:
            self._set(AgentHealth.CONNECTED, {})

    def _set(self, health: AgentHealth, data: dict[str, Any]) -> None:
        if health is not self.health:
            self.health = health
            self._notes.append((f"agent-{health.value}", {"agent": self.url, **data}))

    def _dead(self, reason: str, since: float | None = None) -> None:
        """Declare the agent dead; `since`: when it went away, as far as we can tell."""
        self.dead_reason = reason
        self.dead_at = since if since is not None else time.monotonic()
        self._set(AgentHealth.DEAD, {"reason": reason})
        self.client.mark_peer_gone(f"agent {self.name} is dead: {reason}")

    def expect_silence(self, seconds: float) -> None:
        """A link fault on this host: do not judge it dead before `seconds` from now."""
        self._quiet_until = max(self._quiet_until, time.monotonic() + seconds)

    def take_events(self, peer: str) -> list[PeerEvent]:
        queue = self._events.get(peer)
        if not queue:
            return []
        out = list(queue)
        queue.clear()
        return out

    def take_notes(self) -> list[tuple[str, dict[str, Any]]]:
        notes, self._notes = self._notes, []
        return notes

    # ------------------------------------------------------------------ the end
    def end_run(self) -> None:
        """Stop what is left of the run on the agent; learn its leftovers; hang up."""
        try:
            if self.alive and self.health is not AgentHealth.CONNECTING:
                self.clock_end = self.measure_clock(4)
                reply = self.request(am.EndRun(), timeout=40)
                self.leftovers = [str(x) for x in reply.get("leftovers", [])]
        except ControlError as err:
            self._notes.append(("agent-end-run-failed", {"error": str(err)}))
        finally:
            if self.health is not AgentHealth.DEAD:
                self.health = AgentHealth.CLOSED
            self.client.close()

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agent": self.url, "address": self.host.peer_address,
                               "run-id": self.run_id, "state": self.health.value,
                               "facts": self.facts,
                               "clock": self.clock.to_json() if self.clock else None}
        if self.clock_end is not None and self.clock is not None:
            out["clock-end"] = self.clock_end.to_json()
        if self.dead_reason:
            out["dead"] = self.dead_reason
        out["leftovers"] = self.leftovers
        if self.files is not None:
            out.update(self.files)  # files, files-left-out (runner/fetch.py)
        return out
