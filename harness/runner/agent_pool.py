"""Every agent of a run: placing the run on the hosts, heartbeats, and the end of the run.

Strategy: `Agents` holds one `AgentConnection` per host the scenario uses (a peer's host,
or a link fault's), connects them all before any peer starts, pumps them from the loop,
and ends the run on each at the end (the agents stop what is left and report leftovers).
The runner's heartbeats do not depend on the loop: `Pacemaker` sends them from a thread
of its own.  `placement_problems` says, before anything starts, what a scenario asks of
its hosts that the runner cannot do.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import threading
from typing import Any

import zmq

from harness.control import agent_messages as am
from harness.control.agent_messages import AgentHealth
from harness.control.messages import Execute, encode
from harness.scenario import steps as model
from harness.scenario.model import Host, Scenario

from .agent_proxy import placement_problems as proxy_problems
from .agents import HEARTBEAT, AgentConnection, client_keys
from .remote_qemu import placement_problems as qemu_problems

__all__ = ["Agents", "Pacemaker", "placement_problems", "used_hosts"]


class Pacemaker:
    """The runner's heartbeats to its agents, from a thread of their own.

    The coordinator's loop waits on one peer at a time (a peer starting for seconds,
    digests of a large guest): the agents of the other hosts must not take that silence
    for a dead runner and stop their peers.  So the heartbeats do not depend on the loop:
    a daemon thread with its own sockets (it touches nothing of the coordinator's) sends
    `agent-heartbeat RUN-ID` to every agent every HEARTBEAT s, and dies with the runner
    process -- which is exactly when the agents should notice.
    """

    def __init__(self, hosts: dict[str, Host], run_id: str) -> None:
        self._targets = [(host.agent, client_keys(host)) for host in hosts.values()]
        self._run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="agent-heartbeats",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        context: zmq.Context[Any] = zmq.Context.instance()
        socks: list[zmq.Socket[Any]] = []
        for url, keys in self._targets:
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                keys.apply(sock)
            sock.connect(url)
            socks.append(sock)
        command, arguments = am.request_arguments(am.Heartbeat(self._run_id))
        ids = itertools.count(1)
        try:
            while not self._stop.is_set():
                for sock in socks:
                    while sock.poll(0, zmq.POLLIN):
                        sock.recv_multipart()  # greeting and replies: not needed
                    with contextlib.suppress(zmq.Again):
                        sock.send(encode(Execute(command, arguments, next(ids))), zmq.NOBLOCK)
                self._stop.wait(HEARTBEAT)
        finally:
            for sock in socks:
                sock.close(linger=0)


class Agents:
    """Every agent connection of a run, by host name."""

    def __init__(self, scenario: Scenario) -> None:
        # a plain name (`guard.NAME_RULE`): the agent makes a directory of it
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", scenario.name)[:48] or "run"
        self.run_id = f"{stem}-{secrets.token_hex(6)}"
        self.by_host: dict[str, AgentConnection] = {}
        for name in used_hosts(scenario):
            self.by_host[name] = AgentConnection(name, scenario.hosts[name], self.run_id)
        self._pacemaker = Pacemaker({n: c.host for n, c in self.by_host.items()}, self.run_id)

    def connect(self) -> None:
        for conn in self.by_host.values():
            conn.connect()
        self._pacemaker.start()

    def __getitem__(self, name: str) -> AgentConnection:
        return self.by_host[name]

    def __bool__(self) -> bool:
        return bool(self.by_host)

    def pump(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(who, note, data) for the timeline."""
        out = []
        for name, conn in self.by_host.items():
            conn.pump()
            out += [(f"agent:{name}", note, data) for note, data in conn.take_notes()]
        return out

    def heard_since(self, since: float) -> bool:
        """Whether every live agent sent a heartbeat after `since` (monotonic): all it had
        of its peers' events then has reached us, so a quiet run is really quiet."""
        return all(c.heartbeat_at > since for c in self.by_host.values() if c.alive)

    def dead(self) -> list[AgentConnection]:
        return [c for c in self.by_host.values() if c.health is AgentHealth.DEAD]

    def end(self) -> list[str]:
        """End the run on every agent; the leftovers they reported, 'host: PID CMD'."""
        left = []
        self._pacemaker.stop()
        for name, conn in self.by_host.items():
            conn.end_run()
            left += [f"on host {name}: {x}" for x in conn.leftovers or []]
        return left

    def report(self) -> dict[str, Any]:
        return {name: conn.report() for name, conn in self.by_host.items()}


def used_hosts(sc: Scenario) -> list[str]:
    names = [sc.source.host, sc.destination.host, sc.proxy.host]
    names += [s.fault.host for s in sc.steps if isinstance(s.fault, model.LinkFault)]
    return list(dict.fromkeys(n for n in names if n is not None))


def placement_problems(sc: Scenario) -> list[str]:
    """What a scenario asks of its hosts that this runner cannot do (empty: fine)."""
    remote = [r for r in ("source", "destination") if getattr(sc, r).host is not None]
    out = proxy_problems(sc)
    out += qemu_problems(sc, remote)  # issue 14: QEMU peers on hosts (remote_qemu.py)
    if remote and not sc.transport.uri and sc.transport.scheme != "tcp":
        out.append(f"transport: {sc.transport.scheme} with peers on hosts: across hosts the "
                   f"runner puts the stream on tcp between the hosts' addresses (use "
                   f"transport: tcp, or give transport: {{uri: ...}})")
    if remote and len(remote) == 1:
        out.append(f"{remote[0]} is on host {getattr(sc, remote[0]).host} but the "
                   f"{'destination' if remote[0] == 'source' else 'source'} is local: place "
                   f"both peers on hosts (two hosts, or the same one)")
    return out
