"""The peers a console drives: started by it (and reaped by it), or attached to.

Strategy: a `Session` knows each peer's control address and pid and, when the console
started them, owns their processes (harness.runner.peers.HarnessPeer and
harness.runner.proxy.ProxyHandle, the runner's own handles, so start-up and reaping are
the runner's).  Each thread that talks to the peers opens its own `Link` (one
ControlClient per peer: zmq sockets are not shared between threads).  `close` reaps
what the session started, in every case; attaching leaves the peers alone.

A console that starts its own peers puts the destination in `migrate-incoming` only at
the first `migrate`: our destination peer refuses capability changes while it listens
(QEMU 7.2 would take them), and `migrate_set_capability postcopy-ram on` must reach both
sides before the migration.  The proxy starts at once (so wire triggers can be armed
before `migrate`) and is pointed at the destination when it listens (`x-proxy-target`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness.control import CommandError, ControlClient, ControlError, ControlTimeout
from harness.faults import process
from harness.runner.peers import ControlledProcess, HarnessPeer, PeerError, start_together
from harness.runner.proxy import ProxyHandle

from .hmp import MonitorError

ROLES = ("source", "destination", "proxy")
HELLO_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
#: where the proxy forwards before the destination listens (the discard port: refused)
PLACEHOLDER_TARGET = "tcp:127.0.0.1:9"


@dataclass
class PeerInfo:
    role: str
    address: str
    pid: int | None = None


@dataclass
class StartOptions:
    memory: int
    dirty_rate: int
    fill: float = 0.5
    seed: int = 0
    proxy: bool = False
    workdir: Path | None = None  # kept when given; a temporary one is removed
    proxy_preempt: bool = False  # the proxy's --preempt
    proxy_multifd: int = 0  # the proxy's --multifd N


class Link:
    """One thread's clients to the peers (zmq sockets belong to the thread using them)."""

    def __init__(self, peers: dict[str, PeerInfo]) -> None:
        self.peers = peers
        self.clients: dict[str, ControlClient] = {}
        try:
            for role, info in peers.items():
                try:
                    client = ControlClient(info.address, timeout=COMMAND_TIMEOUT)
                except ControlError as err:
                    raise MonitorError(f"{role}: {err}") from None
                self.clients[role] = client
                try:
                    hello = client.hello(timeout=HELLO_TIMEOUT)
                except ControlTimeout:
                    raise MonitorError(f"no {role} answers at {info.address} within "
                                       f"{HELLO_TIMEOUT:g} s (has the run ended?)") from None
                except ControlError as err:
                    raise MonitorError(f"{role} at {info.address}: {err}") from None
                _check_role(client, role, hello.role, info.address)
                if info.pid is None:
                    info.pid = hello.pid
        except BaseException:
            self.close()
            raise

    def has(self, role: str) -> bool:
        return role in self.clients

    def execute(self, role: str, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Run a command on a peer; MonitorError with the peer's own words when refused."""
        client = self.clients.get(role)
        if client is None:
            raise MonitorError(f"{command}: there is no {role} (start the console with "
                               f"--proxy, or attach with its address)" if role == "proxy"
                               else f"{command}: not connected to a {role}")
        try:
            return client.execute(command, arguments, timeout)
        except CommandError as err:
            raise MonitorError(err.desc) from None
        except ControlError as err:
            raise MonitorError(f"{role}: {err}") from None

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


#: a command only that role has: how a peer (whose greeting says "peer") is told apart
_ROLE_COMMAND = {"source": "migrate-start-postcopy", "destination": "migrate-incoming",
                 "proxy": "x-proxy-arm"}


def _check_role(client: ControlClient, role: str, greeting: str, address: str) -> None:
    if greeting in _ROLE_COMMAND and greeting != role:
        raise MonitorError(f"the peer at {address} is a {greeting}, not a {role}")
    try:
        names = {c.get("name") for c in client.execute("query-commands", timeout=HELLO_TIMEOUT)}
    except ControlError as err:
        raise MonitorError(f"{role} at {address}: {err}") from None
    if _ROLE_COMMAND[role] not in names:
        other = next((r for r, c in _ROLE_COMMAND.items() if c in names), "something else")
        raise MonitorError(f"the peer at {address} is a {other}, not a {role}")


class Frozen:
    """Peers stopped by `inject stop`, and when to continue them; shared by threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frozen: dict[str, tuple[process.Frozen, float | None]] = {}

    def freeze(self, role: str, pid: int, duration: float | None) -> list[int]:
        frozen = process.freeze(pid)
        due = None if duration is None else time.monotonic() + duration
        with self._lock:
            self._frozen[role] = (frozen, due)
        return frozen.pids

    def thaw_due(self) -> list[tuple[str, list[int]]]:
        """Continue the peers whose `duration` is over: (role, pids) of each."""
        now = time.monotonic()
        with self._lock:
            due = [r for r, (_, at) in self._frozen.items() if at is not None and at <= now]
            items = [(r, self._frozen.pop(r)[0]) for r in due]
        return [(role, frozen.thaw()) for role, frozen in items]

    def thaw(self, role: str) -> list[int]:
        with self._lock:
            item = self._frozen.pop(role, None)
        return item[0].thaw() if item else []

    def thaw_all(self) -> None:
        with self._lock:
            items, self._frozen = list(self._frozen.values()), {}
        for frozen, _ in items:
            frozen.thaw()


@dataclass
class Session:
    peers: dict[str, PeerInfo]
    owned: list[ControlledProcess] = field(default_factory=list)
    workdir: Path | None = None
    remove_workdir: bool = False
    frozen: Frozen = field(default_factory=Frozen)
    incoming_started: bool = True  # False: start mode, the destination not listening yet

    @property
    def started(self) -> bool:
        return bool(self.owned)

    def has_proxy(self) -> bool:
        return "proxy" in self.peers

    def pid(self, role: str) -> int:
        """A peer's pid on this host, for process faults; MonitorError if it is not here."""
        info = self.peers.get(role)
        if info is None or info.pid is None:
            raise MonitorError(f"the {role}'s pid is not known")
        if not psutil.pid_exists(info.pid):
            raise MonitorError(f"the {role} (pid {info.pid}) is not running on this host")
        return info.pid

    def exit_code(self, role: str) -> int | None:
        for handle in self.owned:
            if handle.role == role:
                return handle.exit_code()
        return None

    def control_json(self) -> dict[str, Any]:
        return {"source": self.peers["source"].address,
                "destination": self.peers["destination"].address,
                "proxy": self.peers["proxy"].address if self.has_proxy() else None,
                "pids": {role: info.pid for role, info in self.peers.items()}}

    def close(self) -> None:
        """Continue frozen peers, then reap everything this session started."""
        self.frozen.thaw_all()
        try:
            for handle in reversed(self.owned):
                try:
                    handle.close()
                except Exception:  # noqa: BLE001 - keep reaping the others, then kill
                    pid = handle.pid
                    if pid is not None:
                        process.kill(pid)
        finally:
            self.owned.clear()
            if self.remove_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------- start / attach
def start_session(opts: StartOptions) -> Session:
    """Start a destination, a source (and a proxy); reaps them again if anything fails."""
    workdir = opts.workdir
    base = os.environ.get("HARNESS_WORKDIR")
    try:
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            if base:
                Path(base).mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="monitor-", dir=base))
    except OSError as err:
        raise MonitorError(f"cannot make a work directory: {err}") from None
    session = Session({}, workdir=workdir, remove_workdir=opts.workdir is None,
                      incoming_started=False)
    try:
        guest = _guest(opts)
        peers: list[ControlledProcess] = [
            HarnessPeer("destination", workdir, guest, ["--incoming", "defer"]),
            HarnessPeer("source", workdir, guest)]
        if opts.proxy:
            peers.append(ProxyHandle("proxy", workdir, "tcp:127.0.0.1:0", PLACEHOLDER_TARGET,
                                     opts.seed, preempt=opts.proxy_preempt,
                                     multifd=opts.proxy_multifd))
        session.owned += peers
        start_together(peers)  # their start-ups overlap
        for handle in peers:
            session.peers[handle.role] = PeerInfo(handle.role, handle.address, handle.pid)
        (workdir / "control.json").write_text(json.dumps(session.control_json(), indent=1))
    except (PeerError, ControlError, OSError) as err:
        session.close()
        raise MonitorError(f"cannot start the peers: {err}") from None
    except BaseException:
        session.close()
        raise
    return session


def _guest(opts: StartOptions) -> dict[str, Any]:
    """The guest of both peers, as harness.runner.coordinator hands it over."""
    return {"machine": "none", "seed": opts.seed, "fill": opts.fill,
            "blocks": [{"name": "ram", "size": opts.memory}],
            "devices": ["timer", "globalstate"],
            "workload": {"dirty_rate": opts.dirty_rate, "pattern": "uniform", "hotset": 0,
                         "seed": opts.seed} if opts.dirty_rate else None}


def attach_session(source: str, destination: str, proxy: str | None,
                   pids: dict[str, int | None] | None = None) -> Session:
    pids = pids or {}
    peers = {"source": PeerInfo("source", source, pids.get("source")),
             "destination": PeerInfo("destination", destination, pids.get("destination"))}
    if proxy:
        peers["proxy"] = PeerInfo("proxy", proxy, pids.get("proxy"))
    return Session(peers)


def read_control_file(path: Path) -> tuple[str, str, str | None, dict[str, int | None]]:
    """(source, destination, proxy, pids) from a run's control.json (or its directory)."""
    if path.is_dir():
        path = path / "control.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise MonitorError(f"{path}: no such file (a run writes control.json in its work "
                           f"directory once its peers have started)") from None
    except (OSError, ValueError) as err:
        raise MonitorError(f"{path}: cannot read a control file: {err}") from None
    if not isinstance(doc, dict) or not {"source", "destination"} <= set(doc):
        raise MonitorError(f"{path}: not a control file (expected JSON with the source's and "
                           f"the destination's control addresses)")
    for role in ("source", "destination"):
        if not isinstance(doc[role], str):
            raise MonitorError(f"{path}: the run's {role} has no control address to attach "
                               f"to (a QEMU peer, or a peer on another host)")
    proxy = doc.get("proxy")
    raw = doc.get("pids")
    pids: dict[str, int | None] = {str(k): v for k, v in raw.items() if isinstance(v, int)
                                   } if isinstance(raw, dict) else {}
    return str(doc["source"]), str(doc["destination"]), \
        proxy if isinstance(proxy, str) else None, pids
