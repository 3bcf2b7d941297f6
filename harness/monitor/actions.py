"""What the console does to the peers: faults, actions, the URIs of `migrate` and recovery.

Strategy: the runner's effects (harness.runner.effects) again, for a person: each
function takes the calling thread's `Link` and the `Session`, does one thing, and
returns the line to print; refusals are `MonitorError`s in the peer's own words.
Process faults act on the peer's whole process tree (harness.faults.process); network
faults are armed in the proxy with no trigger, so it applies them from now on and
reports where (its FAULT event).  Actions go to the peer QEMU takes them on: the
source, or for stop/cont the side that has the guest.
"""

from __future__ import annotations

import os
import time
from typing import Any

from harness.faults import process
from harness.runner.effects import ARGUMENTS, COMMANDS  # actions as the runner does them
from harness.scenario import steps as model

from .hmp import MonitorError
from .session import Link, Session
from .steps import Effect

LISTEN_DEADLINE = 10.0


def proxy_id(name: str) -> str:
    """An id of ours in the proxy (a run's runner uses step-N; a console its pid)."""
    return f"mon{os.getpid()}-{name}"


def carry_out(effect: Effect, link: Link, session: Session, name: str) -> str:
    """Do an effect now; the line saying what was done."""
    if effect.action is not None:
        return action(link, session, effect.action)
    fault = effect.fault
    if isinstance(fault, model.ProcessFault):
        return process_fault(session, fault)
    assert isinstance(fault, model.NetFault)
    return net_fault(link, fault, name)


def net_fault(link: Link, fault: model.NetFault, name: str) -> str:
    if not link.has("proxy"):
        raise MonitorError(f"{fault.kind} needs the fault proxy between the peers: start the "
                           f"console with --start --proxy (or attach to a run that has one)")
    spec = fault.model_dump(mode="json", exclude_none=True)
    link.execute("proxy", "x-proxy-arm", {"id": proxy_id(name), "trigger": None,
                                          "fault": spec, "hold": False})
    info = link.execute("proxy", "query-proxy")
    if not (info.get("sessions") or {}).get("active"):
        return f"{fault.kind}: armed for the next connection through the proxy"
    return f"{fault.kind}: applied by the proxy (see its FAULT event)"


def process_fault(session: Session, fault: model.ProcessFault) -> str:
    pid = session.pid(fault.target)
    if fault.kind == "kill":
        hit = process.kill(pid)
    elif fault.kind == "crash":
        hit = process.crash(pid)
    else:
        hit = session.frozen.freeze(fault.target, pid, fault.duration)
    text = f"FAULT {fault.kind} target={fault.target} pids={','.join(map(str, hit))}"
    return text + (f" duration={fault.duration:g}s" if fault.duration is not None else "")


def action(link: Link, session: Session, name: str) -> str:
    if name == "migrate-recover":
        return recover(link, session, None)
    peer, command = COMMANDS[name]
    if peer == "guest":
        peer = guest_side(link)
    link.execute(peer, command, dict(ARGUMENTS.get(name, {})))
    return f"{command} on the {peer}"


def guest_side(link: Link) -> str:
    """The side that has the guest: the destination once postcopy or completion moved it."""
    info = link.execute("destination", "query-migrate", timeout=5) or {}
    moved = info.get("status") in ("completed", "postcopy-active", "postcopy-paused",
                                   "postcopy-recover")
    return "destination" if moved else "source"


# ---------------------------------------------------------------------- URIs
def listening_uri(link: Link) -> str:
    """Where the destination listens, read back from its query-migrate (the real port
    after port 0), as harness.runner.coordinator does."""
    deadline = time.monotonic() + LISTEN_DEADLINE
    while True:
        info = link.execute("destination", "query-migrate", timeout=5) or {}
        if info.get("status") in ("completed", "failed", "cancelled"):
            raise MonitorError(f"the destination is not listening (its incoming migration "
                               f"is {info['status']}); give a URI")
        for addr in info.get("socket-address") or []:
            if addr.get("type") in ("inet", "tcp") or "port" in addr:
                return f"tcp:{addr['host']}:{addr['port']}"
            if addr.get("type") == "unix":
                return f"unix:{addr['path']}"
        if time.monotonic() > deadline:
            raise MonitorError(f"the destination reports no listening address within "
                               f"{LISTEN_DEADLINE:g} s (status {info.get('status', 'none')})")
        time.sleep(0.02)


def proxy_listen(link: Link) -> str:
    info: dict[str, Any] = link.execute("proxy", "query-proxy") or {}
    uri = info.get("listen")
    if not isinstance(uri, str) or uri.endswith(":0"):
        raise MonitorError(f"the proxy reports no listening address ({info.get('listen')})")
    return uri


def migrate_uri(link: Link, session: Session, uri: str | None) -> str:
    """Where `migrate` sends the source.  A console that started its peers puts the
    destination in migrate-incoming now (on `uri`, else tcp:127.0.0.1:0); without a URI
    the source goes through the proxy when there is one, else to the destination."""
    if not session.incoming_started:
        link.execute("destination", "migrate-incoming", {"uri": uri or "tcp:127.0.0.1:0"})
        session.incoming_started = True
        if uri is None and link.has("proxy"):
            link.execute("proxy", "x-proxy-target", {"uri": listening_uri(link)})
    if uri is not None:
        return listening_uri(link) if uri.endswith(":0") else uri
    if not link.has("proxy"):
        return listening_uri(link)
    check_proxy_channels(link)
    return proxy_listen(link)


def check_proxy_channels(link: Link) -> None:
    """A proxy forwards the channels it was started for: a migration with more (multifd,
    postcopy-preempt) through one started without them would be framed wrong -- refused
    in one line, naming the option that fits."""
    caps = {c["capability"]: c["state"]
            for c in link.execute("source", "query-migrate-capabilities") or []}
    params: dict[str, Any] = link.execute("source", "query-migrate-parameters") or {}
    info: dict[str, Any] = link.execute("proxy", "query-proxy") or {}
    channels = int(params.get("multifd-channels", 2)) if caps.get("multifd") else 0
    has = int((info.get("multifd") or {}).get("channels", 0))
    if channels != has:
        raise MonitorError(
            f"migrate: the source opens {channels} multifd channels, the proxy forwards "
            f"{has}: start the console with --proxy --proxy-multifd {channels}"
            if channels else "migrate: the proxy expects multifd channels the source will "
            "not open (multifd is off): start the console without --proxy-multifd")
    if bool(caps.get("postcopy-preempt")) != bool(info.get("preempt")):
        raise MonitorError(
            "migrate: the source opens a postcopy-preempt channel the proxy does not "
            "forward: start the console with --proxy --proxy-preempt"
            if caps.get("postcopy-preempt") else "migrate: the proxy expects a "
            "postcopy-preempt channel (--proxy-preempt) and postcopy-preempt is off")


def recover(link: Link, session: Session, uri: str | None) -> str:
    """migrate_recover: the destination listens anew (migrate-recover), then the source
    resumes to it (migrate with resume), through the proxy when there is one."""
    link.execute("destination", "migrate-recover", {"uri": uri or "tcp:127.0.0.1:0"})
    target = listening_uri(link) if uri is None or uri.endswith(":0") else uri
    source_uri = target
    if link.has("proxy") and uri is None:
        link.execute("proxy", "x-proxy-target", {"uri": target})
        source_uri = proxy_listen(link)
    link.execute("source", "migrate", {"uri": source_uri, "resume": True})
    return f"migrate_recover: destination listens on {target}, source resumes to {source_uri}"
