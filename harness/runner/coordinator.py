"""The coordinator: run one scenario from start to verdict.

Strategy (after locust / pytest-xdist): one loop owns all state.  It starts the destination
and then the source (harness processes or real QEMUs) -- and, when the scenario has network
faults or wire triggers, the protocol-aware proxy between them -- sets capabilities (always
with `events`, so statuses arrive as events) and parameters on both, starts the incoming
side and the migration, and then loops: pull events from every process, record them on
the timeline (and in the JSONL event log, as they come), fire the steps whose triggers
hold, run timers (a frozen peer's thaw), and stop as soon as the run has settled -- every
peer dead, frozen, or in a status it cannot leave by itself (completed, failed,
cancelled, postcopy-paused...) and no step able to fire any more -- or at the deadline,
which is reported with the step and status each peer was stuck in and their stacks.
Then it collects the final statuses, statistics, runstates and per-page digests, closes
(reaps) every process, checks that none is left behind, and runs the invariants.  A
failure of the harness itself (a peer that cannot start, a deadline) is the verdict
`error`; an unmet expectation is `fail`.

The loop waits on one `zmq.Poller` (the peers' control sockets, QEMU's QMP sockets, the
agents', the proxy's) until something arrives or the next thing is due (a timer, a time
trigger, a sample, the deadline) -- it never sleeps to poll.  What it takes in is typed at
the boundary (harness.control.peer_messages) and kept in a `RunState`; the steps read that
state and return effects (runner/steps.py, runner/effects.py), which the `Actuator`
carries out -- the slow ones (a recovery, a link fault) as state machines the loop
advances, so events keep flowing while they last.
"""

from __future__ import annotations

import json
import logging
import resource
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import zmq

from harness.control import CommandError, ControlError, ProtocolMessageError
from harness.control import peer_messages as pm
from harness.errors import EnvironmentFailure, HarnessError
from harness.faults import process
from harness.guest.leaks import leftover_segments
from harness.invariants import Evidence, check_all
from harness.invariants.base import Expectations
from harness.migration.status import FINAL, MigrationStatus
from harness.qemu import QemuError, QMPError
from harness.scenario.model import Scenario

from . import disks as run_disks
from . import real_guest, tls_setup
from .actuator import Actuator, Handles
from .agent_peer import AgentPeer
from .agent_pool import Agents, placement_problems
from .agent_proxy import layout_arguments, preempt_on, proxy_host, remote_proxy
from .agents import tcp_uri
from .fetch import fetch_back
from .hang import PeerHung, channels_waited, hung_outcome, name_hang, waits_for_channels
from .outcome import outcome_of, stacks_of
from .peers import (
    HarnessPeer,
    PeerError,
    PeerHandle,
    kill_tree,
    pollables,
    short_dir,
)
from .proxy import ProxyHandle
from .result import FaultRecord, InvariantResult, PeerOutcome, ScenarioResult, TimelineEntry
from .samples import Sampler
from .state import RunState
from .steps import StepRunner, needs_proxy

log = logging.getLogger(__name__)

MAX_WAIT = 0.1  # s the loop waits on its poller at most (agents' health is judged by time)
SETTLED_FOR = 0.5  # how long nothing may move before the run counts as settled
STATS_PERIOD = 0.05  # how often `remaining`/`progress` triggers poll the source
FD_NAME = "migfd"
#: statuses a peer does not leave by itself: it waits for an admin (or nothing at all)
RESTING = FINAL | {MigrationStatus.POSTCOPY_PAUSED}
INTERRUPTED = "interrupted"  # the reason of a run a signal ended (verdict `error`)


class RunError(EnvironmentFailure, RuntimeError):
    """The harness could not run the scenario (verdict `error`)."""


class Coordinator:
    def __init__(self, scenario: Scenario, workdir: Path, seed: int | None = None,
                 progress: Callable[[str, dict[str, Any]], None] | None = None,
                 record: bool = False, events_log: Path | None = None) -> None:
        self.sc = scenario
        self.workdir = workdir
        self.seed = scenario.seed if seed is None else seed
        self.progress = progress or (lambda what, info: None)
        self.t0 = time.monotonic()
        self.result = ScenarioResult(scenario.name, str(scenario.source_file or ""), self.seed,
                                     workdir=str(workdir))
        self.state = RunState(self.seed, self.t0)
        self.refused: str | None = None
        self._fds: list[socket.socket] = []
        self.record = record  # save both directions of the stream in the work directory
        self.agents = Agents(scenario)  # the hosts' agents (none for a local run)
        self.handles = Handles(scenario, agents=self.agents)
        self.actuator = Actuator(self.handles, self.state, self)
        self.sampler = Sampler()  # its answers over time, for the report's plots
        self._pids: list[int] = []
        self._log_path = events_log or workdir / "events.jsonl"
        self._log: IO[str] | None = None
        self.steps: StepRunner | None = None
        self._stacks: dict[str, str] = {}
        self.layout: Path | None = None  # a real machine's layout file (qemu/layout.py)
        self.disk_paths: dict[str, dict[str, Path]] = {}  # role -> drive -> image (disks.py)
        self.unanswering: set[str] = set()  # peers whose QMP stopped answering (hang.py)
        self._gone_at: float | None = None  # when a multifd destination's wait was first seen

    # ------------------------------------------------------------------ run
    def run(self) -> ScenarioResult:
        deadline = self.t0 + self.sc.timeout
        evidence: Evidence | None = None
        try:
            self._log = self._log_path.open("w")
            self.result.events_log = str(self._log_path)
            self.note("runner", "scenario", {"name": self.sc.name, "seed": self.seed,
                                             "file": self.result.file})
            self.steps = StepRunner(self.sc, self.seed)
            problems = placement_problems(self.sc)
            if problems:
                raise RunError("; ".join(problems))
            self._start_peers()
            self._configure()
            self._begin()
            self._loop(self.steps, deadline)
            evidence = self._collect()
        except PeerHung as err:  # QEMU's hang, named: the run's finding (runner/hang.py)
            self.result.verdict, self.result.reason = "fail", f"{err.invariant}: {err}"
            self.result.invariants = [InvariantResult(err.invariant, False, str(err))]
            self._collect_quietly()
        except (HarnessError, OSError, TimeoutError) as err:
            self.result.verdict = "error"
            self.result.reason = str(err)
            self._collect_quietly()
        except KeyboardInterrupt as err:  # SIGINT, SIGTERM or SIGHUP (harness.runner.run)
            self.result.verdict, self.result.reason = "error", INTERRUPTED
            self.note("runner", "interrupted", {"signal": str(err) or "SIGINT"})
            for role, peer in (("source", self.src), ("destination", self.dst)):
                if peer is not None:  # what it said last: no question to a peer now
                    setattr(self.result, role, PeerOutcome(
                        kind=peer.kind, status=self.status[role],
                        statuses=list(self.state.statuses[role])))
        except Exception as err:  # noqa: BLE001 - a bug of ours: still a verdict, no traceback
            import traceback

            (self.workdir / "runner-error.txt").write_text(traceback.format_exc())
            self.result.verdict = "error"
            self.result.reason = (f"internal error: {type(err).__name__}: {err} "
                                  f"(traceback in {self.workdir / 'runner-error.txt'})")
            self._collect_quietly()
        finally:
            self._close()
        left = process.leftovers(self._pids) + self._remote_leftovers() + [
            f"shared memory /dev/shm/{name}" for pid in self._pids
            for name in leftover_segments(pid)]
        if evidence is not None:
            evidence.leftovers = left
            self._judge(evidence)
        elif left:
            self.result.reason += f"; processes left behind: {', '.join(left)}"
        self._blame_dead_agents()
        self.result.samples, self.result.passes = self.sampler.samples, self.sampler.passes()
        if self.steps is not None:
            self.result.steps = self.steps.report()
        self.result.duration = time.monotonic() - self.t0
        self.note("runner", "verdict", {"verdict": self.result.verdict,
                                        "reason": self.result.reason})
        if self._log is not None:
            self._log.close()
        return self.result

    def note(self, peer: str, name: str, data: dict[str, Any] | None = None,
             at: float | None = None) -> None:
        entry = TimelineEntry(time.monotonic() - self.t0, peer, name, data or {}, at)
        self.result.timeline.append(entry)
        if self._log is not None:
            self._log.write(json.dumps(entry.to_json(), default=str) + "\n")
            self._log.flush()

    def record_fault(self, step: str, kind: str, target: str, detail: dict[str, Any],
                     at: float | None = None) -> None:
        """`at`: when it acted, on the run's clock, as the timeline (default: now); the
        reports show it since migrate."""
        when = time.monotonic() - self.t0 if at is None else at
        self.result.faults.append(FaultRecord(step, kind, target, when, detail))
        self.note("runner", "fault", {"step": step, "kind": kind, "target": target, **detail})
        if self.steps is not None:
            self.steps.fault_acted(step, detail, self.state.elapsed())

    # ------------------------------------------------------------------ the run's state
    @property
    def status(self) -> dict[str, MigrationStatus]:
        return self.state.status

    @property
    def statuses(self) -> dict[str, list[MigrationStatus]]:
        return self.state.statuses

    @property
    def frozen(self) -> dict[str, Any]:
        return self.actuator.frozen

    @property
    def passes(self) -> int:
        return self.state.passes

    # the handles live in `handles`, which the actuator shares
    src = property(lambda self: self.handles.src,
                   lambda self, peer: setattr(self.handles, "src", peer))
    dst = property(lambda self: self.handles.dst,
                   lambda self, peer: setattr(self.handles, "dst", peer))
    proxy = property(lambda self: self.handles.proxy,
                     lambda self, proxy: setattr(self.handles, "proxy", proxy))

    # ------------------------------------------------------------------ start
    def _guest_json(self) -> dict[str, Any]:
        return pm.GuestDescription.of_scenario(self.sc, self.seed).to_json()

    def _start_peers(self) -> None:
        fds: dict[str, dict[str, int]] = {"source": {}, "destination": {}}
        if self.sc.transport.scheme == "fd" and not self.sc.transport.uri:
            a, b = socket.socketpair()
            self._fds += [a, b]
            fds = {"source": {FD_NAME: a.fileno()}, "destination": {FD_NAME: b.fileno()}}
        # a crash (SIGABRT) should not write a core of the guest's RAM: peers inherit this
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        self._connect_agents()
        self.disk_paths = run_disks.prepare(self.workdir, self.sc.guest.disks, self.seed)
        if real_guest.needs_layout(self.sc, self.wants_proxy):
            try:
                self.layout = real_guest.machine_layout(self)
            except real_guest.BootError as err:
                raise RunError(str(err)) from None
        self.dst = self._make_peer("destination", fds["destination"])
        self.src = self._make_peer("source", fds["source"])
        self._start_remote_peers()
        launched = self._launch_local_peers()
        for peer in (self.dst, self.src):
            host = getattr(peer, "host", None)
            try:
                if peer in launched:
                    peer.wait_started()
                elif not isinstance(peer, AgentPeer):
                    peer.start()
                real_guest.wait_booted(self, peer)
            except (PeerError, QemuError, ControlError, OSError, real_guest.BootError) as err:
                where = f" on host {host}" if host else ""
                raise RunError(f"cannot start the {peer.role} ({peer.kind}){where}: "
                               f"{err}") from None
            if peer.pid is not None and host is None:
                self._pids.append(peer.pid)  # a remote peer's leftovers: its agent checks
            facts = peer.facts() if real_guest.is_qemu(peer) else {}  # issue 14
            self.note(peer.role, "started", {"kind": peer.kind, "pid": peer.pid,
                                             "runstate": peer.runstate(), **facts,
                                             **({"host": host} if host else {})}, time.time())

    def _launch_local_peers(self) -> list[Any]:
        """Launch the harness peers of this host at once (a QEMU starts in `start`): two
        Python start-ups overlap instead of following each other."""
        launched: list[Any] = []
        for peer in (self.dst, self.src):
            if isinstance(peer, HarnessPeer):
                try:
                    peer.launch()
                except OSError as err:
                    raise RunError(f"cannot start the {peer.role} ({peer.kind}): {err}") from None
                launched.append(peer)
        return launched

    def _start_remote_peers(self) -> None:
        """Start the peers of every host at once: each agent's `peer-start` is sent, then
        the loop waits on the agents' sockets (taking in their news) until every one
        answered, each start bounded by its own deadline."""
        starting = [p for p in (self.dst, self.src) if isinstance(p, AgentPeer)]
        peer: AgentPeer | None = None
        try:
            for peer in starting:
                peer.begin_start()
            while starting:
                waiting = []
                for peer in starting:
                    if not peer.start_done():
                        waiting.append(peer)
                starting = waiting
                if starting:
                    self._pump()
                    self._poller().poll(int(MAX_WAIT * 1000))
        except (ControlError, OSError) as err:
            assert peer is not None
            raise RunError(f"cannot start the {peer.role} ({peer.kind}) on host "
                           f"{peer.host}: {err}") from None

    def _connect_agents(self) -> None:
        """Reach every host's agent: run binding, host facts, clock offset."""
        if not self.agents:
            return
        self.result.hosts = {name: {"agent": conn.url} for name, conn in
                             self.agents.by_host.items()}
        try:
            self.agents.connect()
        finally:
            self.result.hosts = self.agents.report()
        for name, conn in self.agents.by_host.items():
            assert conn.clock is not None
            self.note(f"agent:{name}", "agent-connected", {
                "agent": conn.url, "run-id": conn.run_id, **conn.clock.to_json(),
                "hostname": conn.facts.get("hostname")})

    def _make_peer(self, role: str, fds: dict[str, int]) -> PeerHandle:
        spec = self.sc.source if role == "source" else self.sc.destination
        if spec.kind == "qemu":
            qemu = real_guest.make_qemu_peer(self, role)
            if self.disk_paths.get(role):  # a QEMU source's drives (scenario/disks.py)
                qemu.args = [*qemu.args, *run_disks.qemu_args(  # type: ignore[union-attr]
                    self.disk_paths[role], self.sc.guest.machine)]
            return qemu
        if spec.host is not None:
            return AgentPeer(role, self.agents[spec.host], self._guest_json(),
                             incoming=role == "destination",
                             layout=self.layout if role == "destination" else None)
        extra = ["--incoming", "defer"] if role == "destination" else []
        extra += run_disks.harness_args(self.disk_paths.get(role, {}),
                                        self.sc.guest.disks if role == "source" else ())
        if role == "destination" and self.layout is not None:
            extra += ["--layout", str(self.layout)]  # a real machine's blocks and devices
        if role == "source" and real_guest.replays_devices(self.sc):  # qemu/replay.py
            extra += ["--replay-devices", str(self.layout)]  # the destination's machine
        peer = HarnessPeer(role, self.workdir, self._guest_json(), extra, fds)
        peer.die_with_starter = True  # even a SIGKILLed runner leaves no peer (lifeline)
        return peer

    def _configure(self) -> None:
        if self.dst is not None and self.dst.kind == "harness":
            if self.sc.expect.memory == "identical":
                self.dst.execute("x-incoming-snapshot", {"enable": True})
            if self.record:  # the return path as the source receives it, if it can
                src = self.src if self.src is not None and self.src.kind == "harness" else None
                self.dst.execute("x-record", {"dir": str(self.workdir),
                                              "return-path": src is None})
                if src is not None:
                    src.execute("x-record", {"dir": str(self.workdir)})
        for peer in self._peers():  # each with its own settings over the scenario's
            caps = [{"capability": "events", "state": True}]
            caps += [c for c in self.sc.qmp_capabilities(peer.role)
                     if c["capability"] != "events"]
            params = self.sc.parameters_of(peer.role)
            try:
                pm.send(peer, pm.SetCapabilities(caps))
                params = {**params, **tls_setup.peer_settings(self, peer)}  # tls: objects
                if params:
                    pm.send(peer, pm.SetParameters(params))
            except CommandError as err:
                raise RunError(f"{peer.role} refused the configuration: {err}") from None

    # ------------------------------------------------------------------ migrate
    def uris(self) -> tuple[str, str]:
        """(destination URI, source URI) for the transport; tcp ports come later."""
        t = self.sc.transport
        if t.uri:
            return t.uri, t.uri
        if t.scheme == "tcp":
            return tcp_uri(self.handles.destination_address(), 0), ""
        if t.scheme == "unix":
            d = short_dir("mhu")
            self.handles.dirs.append(d)
            return f"unix:{d}/migration.sock", f"unix:{d}/migration.sock"
        if t.scheme == "fd":
            return f"fd:{FD_NAME}", f"fd:{FD_NAME}"
        stream = self.workdir / "stream.bin"
        if t.scheme == "exec":
            return f"exec:cat {stream}", f"exec:cat > {stream}"
        return f"file:{stream}", f"file:{stream}"  # file

    @property
    def two_phase(self) -> bool:
        """exec and file transports: the source writes a file, then the destination reads it."""
        return self.sc.transport.scheme in ("exec", "file") and not self.sc.transport.uri

    def _begin(self) -> None:
        assert self.src is not None and self.dst is not None
        self.dst_uri, src_uri = self.uris()
        if not self.two_phase:
            pm.send(self.dst, pm.MigrateIncoming(self.dst_uri))
            if not src_uri:
                src_uri = self._listening_uri()
            if self.wants_proxy:
                src_uri = self._start_proxy(src_uri)
                assert self.steps is not None
                self.state.has_proxy = True
                self.actuator.carry_out(self.steps.arm_due())
        self._write_control_file()
        self.note("runner", "migrate", {"uri": src_uri})
        self.state.migrate_started = time.monotonic()
        try:
            pm.send(self.src, pm.Migrate(src_uri))
        except CommandError as err:
            self.refused = err.desc
            self.note("source", "migrate-refused", {"desc": err.desc})

    @property
    def wants_proxy(self) -> bool:
        """The scenario's network faults or wire triggers need the proxy; so does
        `--record` when the destination is a QEMU (no harness peer to record the stream)."""
        socket_transport = self.sc.transport.scheme in ("tcp", "unix")
        return needs_proxy(self.sc.steps) or (
            self.record and socket_transport and self.sc.destination.kind == "qemu")

    def _write_control_file(self) -> None:
        """control.json: the peers' control addresses (null for a QEMU or remote peer) and
        pids, for `harness monitor --attach` while the run goes on."""
        handles = {"source": self.src, "destination": self.dst, "proxy": self.proxy}
        doc: dict[str, Any] = {role: getattr(h, "address", None) for role, h in handles.items()}
        doc["pids"] = {role: h.pid if h is not None and getattr(h, "host", None) is None
                       else None for role, h in handles.items()}
        path = self.workdir / "control.json"
        path.write_text(json.dumps(doc, indent=1))
        self.progress("control", {"path": str(path)})

    def _listening_uri(self) -> str:
        assert self.dst is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            port = pm.MigrationInfo.of(pm.send(self.dst, pm.QueryMigrate())).listening_port()
            if port is not None:
                return tcp_uri(*port)
            time.sleep(0.01)  # (before `migrate`: nothing else to wait on yet)
        raise RunError("the destination did not report its listening port")

    def _start_proxy(self, target: str) -> str:
        """Put the proxy between the peers: the source migrates to it, it to `target`."""
        if target.startswith("unix:"):
            d = short_dir("mhx")
            self.handles.dirs.append(d)
            listen = f"unix:{d}/proxy.sock"
        else:
            listen = "tcp:127.0.0.1:0"
        record = self.workdir if self.record and self.sc.destination.kind == "qemu" else None
        host = proxy_host(self.sc)  # issue 14: on an agent's host (runner/agent_proxy.py)
        if host is not None:
            tls_setup.refuse_remote_proxy(self)
            self.proxy = remote_proxy(self, host, target)
        else:
            self.proxy = ProxyHandle("proxy", self.workdir, listen, target, self.seed,
                                     record=record, preempt=preempt_on(self.sc),
                                     multifd=self.sc.multifd_channels(),
                                     tls=tls_setup.proxy_dir(self))
            self.proxy.die_with_starter = True
        try:
            self.proxy.start()
            uri = self.proxy.address_for_source()
        except (PeerError, ControlError, OSError) as err:
            raise RunError(f"cannot start the proxy{f' on host {host}' if host else ''}: "
                           f"{err}") from None
        if self.proxy.pid is not None and host is None:
            self._pids.append(self.proxy.pid)
        if self.layout is not None:  # frame the real machine's device sections exactly
            self.proxy.execute("x-proxy-layout", layout_arguments(self.layout, host))
        self.note("proxy", "started", {"listen": uri, "target": target, "pid": self.proxy.pid,
                                       **({"host": host} if host else {})})
        return uri

    # ------------------------------------------------------------------ loop
    def _loop(self, steps: StepRunner, deadline: float) -> None:
        incoming_started = not self.two_phase
        quiet_since: float | None = None
        exited: set[str] = set()
        while True:
            moved = self._pump()
            if steps.wants_source_stats():
                self.source_info()
            effects = steps.tick(self.state)
            moved |= bool(effects)
            self.actuator.carry_out(effects)
            moved |= self.actuator.advance()
            now = time.monotonic()
            if self.sampler.due(now - self.t0):
                self.source_info(0.0)
            if self.refused is not None:
                return
            if self.two_phase and self.status["source"] in FINAL and not incoming_started:
                incoming_started = True
                moved = True
                if self.status["source"] == "completed":
                    assert self.dst is not None
                    pm.send(self.dst, pm.MigrateIncoming(self.dst_uri))
            for p in self._peers():
                if not p.alive() and p.role not in exited:
                    exited.add(p.role)
                    moved = True
                    self.note(p.role, "exited", {"code": p.exit_code()})
            if moved or self.actuator.busy or not self._settled(incoming_started) \
                    or steps.may_still_fire():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= SETTLED_FOR and self.agents.heard_since(quiet_since):
                return  # (a remote peer's news is not late: its agent spoke since)
            if now > deadline:
                stuck = self._stuck(steps)
                name_hang(self)  # a QEMU's hang is the run's finding (runner/hang.py)
                raise RunError(stuck)
            if not moved:  # (built anew: a socket that closed is no longer waited on)
                self._poller().poll(self._wait_ms(steps, quiet_since, deadline))

    def _poller(self) -> zmq.Poller:
        """One poller over every socket news can come from: the peers' and the proxy's
        control sockets (or QEMU's QMP socket) and the agents'."""
        poller = zmq.Poller()
        handles: list[Any] = [*self._peers(), *([self.proxy] if self.proxy else [])]
        sources = [x for h in handles for x in pollables(h)]
        sources += [x for conn in self.agents.by_host.values() for x in pollables(conn)]
        for source in dict.fromkeys(sources):
            poller.register(source, zmq.POLLIN)
        return poller

    def _wait_ms(self, steps: StepRunner, quiet_since: float | None, deadline: float) -> int:
        """How long the loop may wait for news: until the next thing is due."""
        now = time.monotonic()
        due = [deadline, now + MAX_WAIT]
        if quiet_since is not None:
            due.append(quiet_since + SETTLED_FOR)
        timer = self.actuator.next_due()
        if timer is not None:
            due.append(timer)
        if steps.wants_source_stats() or self.actuator.busy:
            due.append(now + STATS_PERIOD)
        next_time = steps.next_time_due(self.state)
        if next_time is not None:
            due.append(now + next_time)
        due.append(self.t0 + self.sampler.next_due(now - self.t0))
        return max(0, int((min(due) - now) * 1000) + 1)

    def _settled(self, incoming_started: bool) -> bool:
        """Every peer dead, frozen, or resting in a status it does not leave by itself."""
        for role in ("source", "destination"):
            peer = self.peer(role)
            status = self.status[role]
            if not peer.alive() or role in self.frozen or status in RESTING:
                continue
            if role == "destination" and status in ("none", "setup") and (
                    not incoming_started or self._source_gone()) and \
                    not waits_for_channels(self, peer, status):
                continue  # listening for a source that will not come (any more)
            return False
        return True

    def _source_gone(self) -> bool:
        assert self.src is not None
        return not self.src.alive() or self.status["source"] in FINAL

    def _stuck(self, steps: StepRunner) -> str:
        """The deadline's report: each peer's status, the steps still waiting, the stacks."""
        parts = []
        for role in ("source", "destination"):
            peer = self.peer(role)
            state = "dead" if not peer.alive() else "frozen" if role in self.frozen else \
                self.status[role]
            if role == "source" and self.passes:
                state += f", pass {self.passes}"
            parts.append(f"{role} {state}")
            self._dump_stacks(role, peer)
        waiting = steps.waiting()
        text = (f"timeout: the scenario did not finish within {self.sc.timeout:g} s "
                f"({', '.join(parts)})")
        if waiting:
            text += "; steps not fired: " + ", ".join(waiting)
        return text + "; the stacks of each peer are in the report"

    def _dump_stacks(self, role: str, peer: PeerHandle) -> None:
        stacks = stacks_of(peer, role in self.frozen)
        if stacks is not None:
            self._stacks[role] = stacks

    def _pump(self) -> bool:
        """Take in what every agent, peer and the proxy sent; True when anything came."""
        moved = resample = False
        for who, name, data in self.agents.pump():
            moved = True
            self.note(who, name, data)
        handles: list[Any] = [*self._peers(), *([self.proxy] if self.proxy else [])]
        for handle in handles:
            for event in handle.poll_events():
                moved = True
                self.note(handle.role, event.name, event.data, event.timestamp)
                try:
                    typed = pm.decode_event(event.name, event.data)
                except ProtocolMessageError as err:
                    self.note("runner", "bad-event", {"from": handle.role, "error": str(err)})
                    continue
                if handle.role == "proxy":
                    self._proxy_event(typed, event.timestamp)
                else:
                    resample |= self._peer_event(handle.role, typed, event.timestamp)
        if resample:  # a sample where a pass or status begins (runner/samples.py)
            self.source_info(0.0)
        return moved

    def _peer_event(self, role: str, event: pm.Event | None, at: float) -> bool:
        """Keep a peer's status and pass; True when the source's numbers should be taken."""
        if isinstance(event, pm.MigrationEvent):
            self.state.set_status(role, event.status, at)
            self.progress("status", {"peer": role, "status": str(event.status)})
            return role == "source"
        if isinstance(event, pm.PassEvent) and role == "source":
            self.state.passes = event.number
            self.progress("pass", {"pass": event.number})
            return True
        return False

    def _proxy_event(self, event: pm.Event | None, at: float) -> None:
        assert self.steps is not None
        if isinstance(event, pm.WireSeen):
            self.actuator.carry_out(self.steps.on_wire(event, at, self.state))
        elif isinstance(event, pm.FaultActed):
            label = self.steps.label_of(event.id)
            self.result.faults.append(FaultRecord(label, event.kind, f"proxy {event.channel}",
                                                  time.monotonic() - self.t0,
                                                  dict(event.data)))
            self.steps.fault_acted(label, {}, self.state.elapsed())

    # ------------------------------------------------------------------ the source's numbers
    def source_info(self, max_age: float = STATS_PERIOD) -> dict[str, Any]:
        """The source's query-migrate, asked again when older than `max_age`; each answer
        is also a sample of the run (harness/runner/samples.py)."""
        state = self.state
        now = time.monotonic()
        if now - state.info_at >= max_age and self.src is not None and self.src.alive() \
                and "source" not in self.frozen:
            try:
                info = pm.MigrationInfo.of(self.src.execute("query-migrate", timeout=5))
            except (ControlError, QMPError, OSError):
                self.sampler.failed(now - self.t0)
            else:
                state.info = info
                self.progress("sample", self.sampler.add(now - self.t0, info.raw,
                                                         state.passes))
            state.info_at = now
        return state.info.raw if state.info is not None else {}

    # ------------------------------------------------------------------ end
    def _collect(self) -> Evidence:
        assert self.src is not None and self.dst is not None
        self._pump()
        source = self._outcome(self.src)
        destination = self._outcome(self.dst)
        if destination.error is None and destination.status in ("none", "setup"):
            destination.error = channels_waited(self.dst, self.sc.capabilities_of(
                "destination"), self.sc.parameters_of("destination"))
        self.result.source, self.result.destination = source, destination
        if self.refused:
            source.error = self.refused
        evidence = Evidence(_expectations(self.sc), source, destination)
        evidence.timeline = self.result.timeline
        evidence.faults = self.result.faults
        assert self.steps is not None
        evidence.steps = self.steps.report()
        evidence.frozen = set(self.frozen)
        if real_guest.uses_real_guest(self.sc):
            real_guest.collect(self, evidence)
        else:
            self._memory_evidence(evidence)
        evidence.expect.disks = self.sc.expect.disks
        if self.sc.expect.disks and self.status["destination"] == "completed":
            evidence.disks = run_disks.compare(self.disk_paths)
        if self.proxy is not None and self.proxy.alive():
            evidence.proxy = dict(self.proxy.execute("query-proxy") or {})
        return evidence

    def _judge(self, evidence: Evidence) -> None:
        self.result.invariants = check_all(evidence)
        failed = [i for i in self.result.invariants if not i.ok]
        self.result.verdict = "fail" if failed else "pass"
        self.result.reason = "; ".join(f"{i.name}: {i.detail}" for i in failed)

    def _memory_evidence(self, evidence: Evidence) -> None:
        want = self.sc.expect.memory
        if want is None:
            return
        src, dst = self.src, self.dst
        assert src is not None and dst is not None

        def source_side() -> None:
            evidence.source_digests = src.digests()
            evidence.source_mismatched = src.check_intact()

        def destination_side() -> None:
            evidence.destination_digests = dst.digests(at_incoming=True)

        sides = []
        if src.alive() and "source" not in self.frozen:
            sides.append(source_side)
        if want == "identical" and dst.alive() and "destination" not in self.frozen \
                and self.status["destination"] == "completed":
            sides.append(destination_side)
        with ThreadPoolExecutor(2) as pool:  # each peer hashes its RAM: at the same time
            for done in [pool.submit(side) for side in sides]:
                done.result()

    def _outcome(self, peer: PeerHandle) -> PeerOutcome:
        role = peer.role
        return outcome_of(peer, self.status[role], self.statuses[role], role in self.frozen,
                          self._stacks.get(role))

    def _collect_quietly(self) -> None:
        for role, peer in (("source", self.src), ("destination", self.dst)):
            if peer is None:
                continue
            if role in self.unanswering:  # asked nothing more: killed and reaped at close
                setattr(self.result, role, hung_outcome(self, role, peer))
                continue
            try:
                outcome = self._outcome(peer)
            except Exception as err:  # noqa: BLE001 - collecting after a failure: best effort
                outcome = PeerOutcome(kind=peer.kind, status=self.status[role],
                                      error=f"not reachable: {err}",
                                      stacks=self._stacks.get(role))
            setattr(self.result, role, outcome)

    def _close(self) -> None:
        self.actuator.thaw_all("end of run")  # the run is over: let it be shut down cleanly
        handles: list[Any] = [*self._peers(), *([self.proxy] if self.proxy else [])]
        with ThreadPoolExecutor(max(1, len(handles))) as pool:  # each quits and is reaped:
            for handle in handles:                             # at the same time
                pool.submit(self._close_one, handle)
        if self.agents:
            fetch_back(self)  # issue 14: the run's files on each host (runner/fetch.py)
            self._agent_leftovers = self.agents.end()
            for who, name, data in self.agents.pump():
                self.note(who, name, data)
            self.result.hosts = self.agents.report()
        for s in self._fds:
            s.close()
        import shutil

        for d in self.handles.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _close_one(self, handle: Any) -> None:
        try:
            if handle.role in self.unanswering and handle.alive() and handle.pid and \
                    getattr(handle, "host", None) is None:  # (a remote pid is not ours)
                kill_tree(handle.pid)  # a hung QMP would only make `quit` wait
            handle.close()
        except Exception as err:  # noqa: BLE001 - keep closing (reaping) the others
            log.warning("closing the %s: %s", handle.role, err)

    def abandon(self) -> None:
        """A signal cut `run` short before it could close (or during its close): kill and
        reap what still runs, remove the directories.  Bounded; raises nothing."""
        handles: list[Any] = [*self._peers(), *([self.proxy] if self.proxy else [])]
        for handle in handles:
            try:
                if handle.alive() and handle.pid is not None and \
                        getattr(handle, "host", None) is None:  # not reaped: not reused
                    kill_tree(handle.pid)
            except Exception as err:  # noqa: BLE001 - keep reaping the others
                log.warning("killing the %s: %s", handle.role, err)
        self._close()

    def _peers(self) -> list[PeerHandle]:
        return [p for p in (self.src, self.dst) if p is not None]

    # ------------------------------------------------------------------ agents
    def _remote_leftovers(self) -> list[str]:
        """What the agents found alive of the sessions of the peers they stopped."""
        left = [x for p in self._peers() if isinstance(p, AgentPeer) for x in p.leftovers or []]
        return left + [x for x in getattr(self, "_agent_leftovers", []) if x not in left]

    def _blame_dead_agents(self) -> None:
        """An agent that died mid-run makes the verdict `error`, naming it first."""
        dead = self.agents.dead()
        if not dead:
            return
        blame = "; ".join(
            f"agent {c.name} ({c.url}) died mid-run at "
            f"{(c.dead_at or self.t0) - self.t0:.2f} s: {c.dead_reason}" for c in dead)
        self.result.verdict = "error"
        self.result.reason = blame + (f"; {self.result.reason}" if self.result.reason else "")

    # ------------------------------------------------------------------ for real_guest
    def peer(self, role: str) -> PeerHandle:
        return self.handles.peer(role)


def _expectations(sc: Scenario) -> Expectations:
    e = sc.expect
    return Expectations(source=e.source, destination=e.destination, memory=e.memory,
                        guest_runs_on=e.guest_runs_on, delivered=e.delivered)
