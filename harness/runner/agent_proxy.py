"""`AgentProxy`: the protocol-aware proxy run by an agent on another host.

Strategy: the proxy is the agent's process of kind "proxy" (control/agent_proxy.py), so
on the runner's side it is an `AgentPeer` named "proxy" with `ProxyHandle`'s interface
(`execute`, `poll_events`, `address_for_source`, `alive`, `close`, `pid`, `role`, `kind`,
`host`): commands (`x-proxy-arm`, `x-proxy-release`, `x-proxy-target` after
`migrate-recover`, `query-proxy`) are relayed by the agent, its events (WIRE, FAULT,
SESSION, ...) come back as PEER_EVENT and are moved to the runner's clock by the
`AgentConnection` like any remote peer's, and `close` is the agent's `peer-stop`.

Where it runs (`proxy_host`): the scenario's `proxy: {host: H}`, else the destination's
host when the peers are on hosts, else beside the runner (a local `ProxyHandle`).  A
remote proxy listens on its host's peer address (port 0) and forwards to the
destination's listening URI.  A real machine's layout reaches it inline
(`x-proxy-layout {"layout": {...}}`): a path of the runner's host means nothing there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.control import agent_messages as am
from harness.scenario.model import Scenario

from .agent_peer import AgentPeer
from .agents import AgentConnection, tcp_uri
from .proxy import ProxyHandle
from .state import RunContext

__all__ = ["AgentProxy", "layout_arguments", "placement_problems", "preempt_on", "proxy_host",
           "remote_proxy"]


class AgentProxy(AgentPeer):
    """The proxy an agent runs for this run (a `ProxyHandle` over an `AgentConnection`)."""

    kind = "proxy"

    def __init__(self, conn: AgentConnection, listen: str, target: str, seed: int = 0,
                 record: bool = False, preempt: bool = False, multifd: int = 0) -> None:
        super().__init__("proxy", conn, {}, incoming=False)
        self.listen, self.target, self.seed, self.record = listen, target, seed, record
        self.preempt = preempt
        self.multifd = multifd

    def start_request(self) -> am.PeerStart:
        options: dict[str, Any] = {"listen": self.listen, "target": self.target,
                                   "seed": self.seed, "record": self.record}
        if self.preempt:  # only then: an agent of before issue 15 knows no such option
            options["preempt"] = True
        if self.multifd:  # likewise, for an agent of before issue 16
            options["multifd"] = self.multifd
        return am.PeerStart("proxy", "proxy", {}, kind="proxy", options=options)

    def address_for_source(self, timeout: float = 10.0) -> str:
        """The URI the source migrates to (the proxy's actual address on its host)."""
        return ProxyHandle.address_for_source(self, timeout)  # type: ignore[arg-type]


def proxy_host(sc: Scenario) -> str | None:
    """The host whose agent runs the proxy; None: beside the runner."""
    if sc.proxy.host is not None:
        return sc.proxy.host
    return sc.destination.host


def remote_proxy(c: RunContext, host: str, target: str) -> AgentProxy:
    """The proxy on `host`, listening on that host's address, forwarding to `target`."""
    record = c.record and c.sc.destination.kind == "qemu"  # as a local proxy's
    listen = tcp_uri(c.sc.hosts[host].peer_address, 0)
    return AgentProxy(c.agents[host], listen, target, c.seed, record=record,
                      preempt=preempt_on(c.sc), multifd=c.sc.multifd_channels())


def preempt_on(sc: Scenario) -> bool:
    """Whether the proxy must expect a preempt connection after each main one."""
    return bool(sc.capabilities.get("postcopy-preempt"))


def layout_arguments(layout: Path, host: str | None) -> dict[str, Any]:
    """`x-proxy-layout`'s arguments: the file for a local proxy, its content for a remote
    one (OSError/ValueError when the runner's own file cannot be read)."""
    if host is None:
        return {"file": str(layout)}
    from harness.faults.proxy_main import load_layout

    return {"layout": json.loads(json.dumps(load_layout(layout).to_json()))}


def placement_problems(sc: Scenario) -> list[str]:
    """What a scenario asks of the proxy's placement that cannot work (empty: fine)."""
    if sc.proxy.host is not None and sc.destination.host is None:
        return [(f"proxy: host {sc.proxy.host} with peers beside the runner: a proxy on "
                 f"another host cannot reach a destination listening on loopback (place "
                 f"the peers on hosts too, or leave proxy.host out)")]
    return []
