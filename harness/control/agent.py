"""`harness agent`: run migration peers on this host for a runner elsewhere.

Strategy (after locust's workers): one loop owns all state -- the runs, their peers,
their link faults -- and waits on one zmq poller: the ROUTER the runners talk to (bound
at `--bind`; CURVE with an explicit list of client keys when it is not loopback) and one
DEALER per peer (its private ipc:// control address).  Nothing blocks the loop for long:
commands relayed to a peer are forwarded with a new id and answered when the peer
answers (blobs too), starting and stopping peers are state machines the loop advances,
so heartbeats go out on time whatever a peer is doing.

A runner binds its client to a run (`agent-hello RUN-ID`); events of the run's peers go
to that client, wrapped as PEER_EVENT, beside AGENT_HEARTBEAT every `heartbeat` s.  The
runner's heartbeats (`agent-heartbeat RUN-ID` from any connection -- the runner sends them
from a thread of its own -- or any message of the run's client) keep the run ACTIVE;
late, it is MISSING; silent for `orphan_grace` s, it is ORPHANED and its peers are
stopped and its link faults undone.  Silence is not counted while a timed link fault of
the run is in force, nor while the agent itself was not running (stopped, swapped out).
A runner that comes back within the grace with the same run id (a restarted runner, a
new connection) resyncs: the reply to its hello lists the peers still running and their
states, and the events it missed while unreachable follow.  `exec:` and `file:` migration URIs run commands or write files
on this host, so relaying a command with one is refused unless `--allow-exec` (`guard`);
a `unix:PATH` listener may not take over a path that exists outside the run's directory
(the peer's listener never removes a live socket anywhere).  The ROUTER takes messages of
`MAX_MESSAGE` bytes at most: a bigger one ends that client's connection, not the agent.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from harness import __version__
from harness.control import agent_messages as am
from harness.control.address import ipc_path
from harness.control.agent_files import EventLog, list_files, read_chunk
from harness.control.agent_links import apply_link
from harness.control.agent_messages import AgentCommand, PeerState, RunState
from harness.control.agent_peers import PeerProcess, Pending
from harness.control.agent_preflight import PreflightJobs
from harness.control.agent_proxy import relay_refusal as proxy_relay_refusal
from harness.control.agent_runs import Run, host_facts, run_base, run_directory
from harness.control.curve import ServerKeys, make_curve_server, start_authenticator
from harness.control.errors import CommandError, ProtocolMessageError
from harness.control.guard import URI_COMMANDS, host_effect_refusal, inside
from harness.control.messages import (
    GENERIC_ERROR,
    MAX_MESSAGE,
    Error,
    Event,
    Execute,
    Hello,
    Return,
    encode,
    from_frames,
    to_frames,
)
from harness.transport.unix_mode import private_umask

__all__ = ["Agent", "host_facts"]

log = logging.getLogger(__name__)

HEARTBEAT = 0.5
ORPHAN_GRACE = 10.0
MISSING_AFTER = 3  # heartbeats
MAX_PREFLIGHTS = 4  # agent-preflight requests probing at once
STALL = 0.5  # a loop turn this much late: the agent itself was not running
_DEFERRED = object()  # a handler that will answer later


class Agent:
    """The agent's state and loop.  `serve` runs until `stop()` (or SIGTERM in `main`)."""

    def __init__(self, bind: str, *, keys: ServerKeys | None = None, allow_exec: bool = False,
                 orphan_grace: float = ORPHAN_GRACE, workdir: Path | None = None,
                 heartbeat: float = HEARTBEAT) -> None:
        self.allow_exec = allow_exec
        self.orphan_grace = orphan_grace
        self.heartbeat = heartbeat
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="harness-agent-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.context: zmq.Context[Any] = zmq.Context()
        self.auth = start_authenticator(self.context, keys) if keys is not None else None
        self.router = self._bind(bind, keys)
        self.address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.runs: dict[str, Run] = {}
        self.clients: dict[bytes, str] = {}  # routing id -> run id
        self._greeted: set[bytes] = set()
        self._greeting = encode(Hello(am.AGENT_ROLE, os.getpid(), __version__))
        self._stop = False
        self._next_beat = 0.0
        self._last_tick = time.monotonic()
        self.dropped = 0
        self._preflights = PreflightJobs()  # agent-preflight probes, in threads
        self._handlers: dict[type, Callable[[bytes, int, Any], Any]] = {
            am.HelloAgent: self._hello, am.Preflight: self._preflight,
            am.TimeSample: lambda c, i, b: {"time": time.time()},
            am.Heartbeat: self._heartbeat, am.EndRun: self._end_run,
            am.PeerStart: self._peer_start, am.PeerExecute: self._peer_execute,
            am.PeerFault: self._peer_fault, am.PeerStop: self._peer_stop,
            am.PeerStacks: self._peer_stacks, am.PeerLog: self._peer_log,
            am.LinkFaultRequest: self._link_fault, am.LinkUndo: self._link_undo,
            am.RunFiles: self._run_files, am.RunFileRead: self._run_file_read}

    def _bind(self, bind: str, keys: ServerKeys | None) -> zmq.Socket[Any]:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        if keys is not None:
            make_curve_server(sock, keys)
        try:
            with private_umask(ipc_path(bind)):  # an ipc:// socket file is mode 0600
                sock.bind(bind)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            self._close_context()
            raise OSError(f"cannot bind the agent to {bind}: {err}") from None
        return sock

    # ------------------------------------------------------------------ loop
    def stop(self) -> None:
        """Make `serve` return (safe from a signal handler)."""
        self._stop = True

    def serve(self) -> None:
        while not self._stop:
            ready = dict(self.poller.poll(50))
            if ready.get(self.router):
                self._drain_router()
            for run in list(self.runs.values()):
                for peer in list(run.peers.values()):
                    if not peer.sock.closed and ready.get(peer.sock):
                        self._from_peer(run, peer)
            self._tick(time.monotonic())

    def close(self) -> None:
        """Stop every peer (bounded), undo every link fault, close the sockets."""
        for run in list(self.runs.values()):
            self._wind_down(run, RunState.ENDED)
        deadline = time.monotonic() + 15
        while any(not p.stop_finished for r in self.runs.values() for p in r.peers.values()) \
                and time.monotonic() < deadline:
            self._tick(time.monotonic())
            time.sleep(0.05)
        for run in self.runs.values():
            for peer in run.peers.values():
                peer.kill_now()
                peer.close_socket()
        self.router.close(linger=0)
        self._close_context()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _close_context(self) -> None:
        if getattr(self, "auth", None) is not None:
            self.auth.stop()  # type: ignore[union-attr]
        self.context.destroy(linger=0)

    # ------------------------------------------------------------------ runner side
    def _drain_router(self) -> None:
        while self.router.poll(0, zmq.POLLIN):
            client, *frames = self.router.recv_multipart(zmq.NOBLOCK)
            self._request(client, frames)

    def _request(self, client: bytes, frames: list[bytes]) -> None:
        if client not in self._greeted:
            if len(self._greeted) > 10_000:  # a long-lived agent: forget old clients
                self._greeted = set(self.clients)
            self._greeted.add(client)
            self._send(client, [self._greeting])
        self._touch(client)
        try:
            msg = from_frames(frames)
        except ProtocolMessageError as err:
            self._send(client, to_frames(Error(GENERIC_ERROR, str(err), None)))
            return
        if not isinstance(msg, Execute):
            self._reply_error(client, getattr(msg, "id", None), "Expected 'execute', got a "
                              f"{msg.kind.value} message")
            return
        try:
            result = self._dispatch(client, msg)
        except CommandError as err:
            self._send(client, to_frames(Error(err.error_class, err.desc, msg.id)))
            return
        except ProtocolMessageError as err:
            self._reply_error(client, msg.id, str(err))
            return
        except Exception as err:  # a bug of ours: an error reply, not a dead agent
            log.exception("agent: %s failed", msg.command)
            self._reply_error(client, msg.id, f"{msg.command}: {type(err).__name__}: {err}")
            return
        if result is not _DEFERRED:
            self._reply(client, msg.id, result)

    def _dispatch(self, client: bytes, msg: Execute) -> Any:
        if msg.command == "qmp_capabilities":
            return {}
        if msg.command == "query-commands":
            return [{"name": c.value} for c in AgentCommand]
        body = am.decode_request(msg.command, dict(msg.arguments))
        return self._handlers[type(body)](client, msg.id, body)

    def _reply(self, client: bytes, msg_id: int, value: Any, blob: bytes | None = None) -> None:
        try:
            frames = to_frames(Return(value, msg_id, blob))
        except ProtocolMessageError as err:
            frames = to_frames(Error(GENERIC_ERROR, f"the result is not JSON: {err}", msg_id))
        self._send(client, frames)

    def _reply_error(self, client: bytes, msg_id: int | None, desc: str) -> None:
        self._send(client, to_frames(Error(GENERIC_ERROR, desc,
                                           msg_id if isinstance(msg_id, int) else None)))

    def _send(self, client: bytes, frames: list[bytes]) -> bool:
        try:
            self.router.send_multipart([client, *frames], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped += 1
            return False
        except zmq.ZMQError as err:
            if err.errno != errno.EHOSTUNREACH:
                raise
            return False

    def _to_owner(self, run: Run, name: str, data: dict[str, Any]) -> None:
        if run.event_log is not None:
            run.event_log.write(name, data)
        frame = [encode(Event(name, data, time.time()))]
        if run.owner_reachable and self._send(run.owner, frame):
            return
        run.owner_reachable = False
        run.backlog.append(frame)

    def _touch(self, client: bytes) -> None:
        run = self.runs.get(self.clients.get(client, ""))
        if run is not None and run.owner == client:
            run.last_seen = time.monotonic()
            run.owner_reachable = True
            if run.state is RunState.MISSING:
                run.state = RunState.ACTIVE

    def _run_of(self, client: bytes) -> Run:
        run = self.runs.get(self.clients.get(client, ""))
        if run is None or run.owner != client:
            raise CommandError(GENERIC_ERROR, "no run: send agent-hello with a run id first")
        if run.state in (RunState.ORPHANED, RunState.ENDED):
            raise CommandError(GENERIC_ERROR, f"run {run.run_id} has {run.state.value}")
        return run

    def _peer_of(self, client: bytes, name: str) -> tuple[Run, PeerProcess]:
        run = self._run_of(client)
        peer = run.peers.get(name)
        if peer is None:
            raise CommandError(GENERIC_ERROR, f"run {run.run_id} has no peer {name!r} on "
                                              f"this agent")
        return run, peer

    # ------------------------------------------------------------------ handlers: runs
    def _hello(self, client: bytes, msg_id: int, body: am.HelloAgent) -> Any:
        run = self.runs.get(body.run_id)
        if run is not None and run.state in (RunState.ORPHANED, RunState.ENDED):
            raise CommandError(GENERIC_ERROR, f"run {body.run_id} was {run.state.value}; its "
                                              f"peers are being stopped")
        resynced = run is not None
        if run is None:
            try:
                base = run_base(self.workdir, body.workdir)  # the host's workdir:
                directory = run_directory(base, body.run_id, self.runs)
            except (ValueError, OSError) as err:
                raise CommandError(GENERIC_ERROR, f"agent-hello: {err}") from None
            run = Run(body.run_id, directory, client, body.heartbeat, time.monotonic())
            run.event_log = EventLog(directory)
            self.runs[body.run_id] = run
        else:
            log.info("run %s resynced by a new client", body.run_id)
        run.owner, run.heartbeat, run.last_seen = client, body.heartbeat, time.monotonic()
        run.state, run.owner_reachable = RunState.ACTIVE, True
        self.clients[client] = body.run_id
        self._reply(client, msg_id, {
            "facts": host_facts(), "resynced": resynced, "time": time.time(),
            "peers": [p.info() for p in run.peers.values()], "allow-exec": self.allow_exec,
            "orphan-grace": self.orphan_grace, "heartbeat": self.heartbeat,
            "run-dir": str(run.directory), "links": sorted(run.links)})
        while run.backlog:  # what it missed, after the reply that tells it what it has
            self._send(client, run.backlog.popleft())
        return _DEFERRED

    def _preflight(self, client: bytes, msg_id: int, body: am.Preflight) -> Any:
        """Facts for `harness hosts check` (no run needed), answered from `_tick`."""
        if self._preflights.running >= MAX_PREFLIGHTS:
            raise CommandError(GENERIC_ERROR, f"{MAX_PREFLIGHTS} preflights are running")
        self._preflights.start(client, msg_id, body.qemu)
        return _DEFERRED

    def _heartbeat(self, client: bytes, msg_id: int, body: am.Heartbeat) -> Any:
        run = self.runs.get(body.run_id)  # from the runner's heartbeat thread: any client
        if run is not None and run.state in (RunState.ACTIVE, RunState.MISSING):
            run.last_seen = time.monotonic()
            run.state = RunState.ACTIVE
        return {}

    def _end_run(self, client: bytes, msg_id: int, body: am.EndRun) -> Any:
        run = self._run_of(client)
        run.end_waiters.append((client, msg_id))
        self._wind_down(run, RunState.ENDED)
        return _DEFERRED

    def _wind_down(self, run: Run, state: RunState) -> None:
        """Stop the run's peers and undo its link faults; the run goes once they are."""
        run.state = state
        for key in list(run.links):
            self._undo_link(run, key)
        for peer in run.peers.values():
            peer.begin_stop()

    # ------------------------------------------------------------------ handlers: peers
    def _peer_start(self, client: bytes, msg_id: int, body: am.PeerStart) -> Any:
        run = self._run_of(client)
        old = run.peers.get(body.peer)
        if old is not None and not old.stop_finished:
            raise CommandError(GENERIC_ERROR, f"run {run.run_id} already has a peer "
                                              f"{body.peer!r} ({old.state.value})")
        peer = PeerProcess(body, run.directory, self.context)
        try:
            peer.launch()
        except OSError as err:
            peer.close_socket()
            raise CommandError(GENERIC_ERROR, f"cannot start the {body.peer}: {err}") from None
        run.peers[body.peer] = peer
        self.poller.register(peer.sock, zmq.POLLIN)
        peer.start_waiters.append((client, msg_id))
        return _DEFERRED

    def _peer_execute(self, client: bytes, msg_id: int, body: am.PeerExecute) -> Any:
        run, peer = self._peer_of(client, body.peer)
        if peer.state is not PeerState.RUNNING:
            raise CommandError(GENERIC_ERROR, f"the {peer.name} is {peer.state.value}"
                               + (f" (exit status {peer.exit_code})"
                                  if peer.exit_code is not None else ""))
        arguments = dict(body.arguments)
        refusal = self._uri_refusal(run, body.command, arguments) or \
            proxy_relay_refusal(peer, body.command, arguments, run.directory)
        if refusal:
            raise CommandError(GENERIC_ERROR, refusal)
        if body.command == "x-record":  # stream recordings stay in the run's directory
            arguments["dir"] = str(run.directory)
        peer_id = peer.send(body.command, arguments)
        peer.pending[peer_id] = Pending(client, msg_id, body.command, time.monotonic())
        return _DEFERRED

    def _uri_refusal(self, run: Run, command: str, arguments: dict[str, Any]) -> str | None:
        if command not in URI_COMMANDS:
            return None  # x-record: its directory is the run's, set above
        refusal = None if self.allow_exec else host_effect_refusal(command, arguments,
                                                                   "this agent")
        uri = arguments.get("uri")
        if refusal or command == "migrate" or not isinstance(uri, str) \
                or not uri.startswith("unix:"):
            return refusal
        path = run.directory / uri[len("unix:"):]  # relative: the peer's cwd is the run's
        if (path.exists() or path.is_symlink()) and not inside(path, run.directory):
            return (f"{command} {uri!r}: {path} exists and lies outside the run's directory "
                    f"{run.directory}: the agent does not let a listener take it over")
        return None

    def _peer_fault(self, client: bytes, msg_id: int, body: am.PeerFault) -> Any:
        from harness.faults import process

        run, peer = self._peer_of(client, body.peer)
        pid = peer.pid
        if pid is None or peer.reaped():
            return {"pids": [], "skipped": "not running", "exit-code": peer.exit_code}
        if body.kind in ("kill", "crash"):
            hit = process.kill(pid) if body.kind == "kill" else process.crash(pid)
            deadline = time.monotonic() + 5
            while not peer.reaped() and time.monotonic() < deadline:
                time.sleep(0.005)
            self._peer_gone(run, peer)
            return {"pids": hit, "exit-code": peer.exit_code}
        if body.kind == "stop":
            if peer.frozen is None:
                peer.frozen = process.freeze(pid)
            return {"pids": peer.frozen.pids}
        hit = peer.frozen.thaw() if peer.frozen is not None else []
        peer.frozen = None
        return {"pids": hit}

    def _peer_stop(self, client: bytes, msg_id: int, body: am.PeerStop) -> Any:
        _, peer = self._peer_of(client, body.peer)
        peer.stop_waiters.append((client, msg_id))
        peer.begin_stop()
        return _DEFERRED

    def _peer_stacks(self, client: bytes, msg_id: int, body: am.PeerStacks) -> Any:
        from harness.control.agent_qemu import qemu_stacks
        from harness.runner.stacks import proc_stacks, python_stacks

        _, peer = self._peer_of(client, body.peer)
        if peer.pid is None or peer.reaped():
            return {"stacks": f"(the {peer.name} has exited)"}
        if peer.spec.kind == "qemu":  # QEMU's own threads, not the wrapper's (agent_qemu.py)
            stacks = qemu_stacks(peer.pid)
            if stacks is not None:
                return {"stacks": stacks}
        if peer.frozen is not None:
            return {"stacks": proc_stacks(peer.pid)}
        return {"stacks": python_stacks(peer.pid, peer.log_path)}

    def _peer_log(self, client: bytes, msg_id: int, body: am.PeerLog) -> Any:
        _, peer = self._peer_of(client, body.peer)
        return {"tail": peer.stderr_tail(body.lines), "log": str(peer.log_path)}

    # ------------------------------------------------------------------ handlers: files
    def _run_files(self, client: bytes, msg_id: int, body: am.RunFiles) -> Any:
        run = self._run_of(client)
        return {"files": list_files(run.directory), "dir": str(run.directory)}

    def _run_file_read(self, client: bytes, msg_id: int, body: am.RunFileRead) -> Any:
        run = self._run_of(client)
        try:
            data = read_chunk(run.directory, body.file, body.offset, body.length)
        except (ValueError, OSError) as err:
            raise CommandError(GENERIC_ERROR, f"run-file-read {body.file}: {err}") from None
        self._reply(client, msg_id, {"offset": body.offset, "length": len(data)}, data)
        return _DEFERRED

    # ------------------------------------------------------------------ handlers: links
    def _link_fault(self, client: bytes, msg_id: int, body: am.LinkFaultRequest) -> Any:
        run = self._run_of(client)
        if body.id in run.links:
            raise CommandError(GENERIC_ERROR, f"link fault {body.id!r} is already applied")
        active = apply_link(body)
        run.links[body.id] = active
        return {"detail": active.detail}

    def _link_undo(self, client: bytes, msg_id: int, body: am.LinkUndo) -> Any:
        run = self._run_of(client)
        if body.id not in run.links:
            return {"detail": {}, "already-undone": True}
        detail, error = self._undo_link(run, body.id, tell=False)
        if error:
            raise CommandError(GENERIC_ERROR, f"undoing {body.id}: {error}")
        return {"detail": detail}

    def _undo_link(self, run: Run, key: str, tell: bool = True) -> tuple[dict[str, Any],
                                                                         str | None]:
        active = run.links.pop(key)
        detail, error = active.undo()
        run.last_seen = max(run.last_seen, time.monotonic())  # a fresh grace after a cut
        if tell:
            self._to_owner(run, *am.event_data(am.LinkUndone(key, detail, error)))
        return detail, error

    # ------------------------------------------------------------------ peer side
    def _from_peer(self, run: Run, peer: PeerProcess) -> None:
        for msg in peer.receive():
            if isinstance(msg, Event):
                self._to_owner(run, *am.event_data(am.PeerEventData(
                    peer.name, msg.name, dict(msg.data), msg.timestamp)))
            elif isinstance(msg, (Return, Error)):
                self._peer_reply(peer, msg)

    def _peer_reply(self, peer: PeerProcess, msg: Return | Error) -> None:
        if peer.start_reply(msg.id) and peer.state is PeerState.STARTING:
            peer.started()
            for client, msg_id in peer.start_waiters:
                self._reply(client, msg_id, {"pid": peer.pid, "log": str(peer.log_path),
                                             "dir": str(peer.run_dir)})
            peer.start_waiters.clear()
            return
        pending = peer.pending.pop(msg.id, None) if msg.id is not None else None
        if pending is None:
            return
        if isinstance(msg, Error):
            self._send(pending.client, to_frames(Error(msg.error_class, msg.desc,
                                                       pending.msg_id)))
        else:
            self._reply(pending.client, pending.msg_id, msg.value, msg.blob)

    def _peer_gone(self, run: Run, peer: PeerProcess) -> None:
        """The peer's process ended: its last words out, then the news, once."""
        if not peer.sock.closed:
            self._from_peer(run, peer)
        for pending in peer.pending.values():
            self._reply_error(pending.client, pending.msg_id, f"the {peer.name} exited with "
                              f"status {peer.exit_code} before it answered {pending.command}")
        peer.pending.clear()
        if not peer.exit_reported:
            peer.exit_reported = True
            self._to_owner(run, *am.event_data(am.PeerExited(
                peer.name, peer.exit_code, peer.stderr_tail(20))))

    # ------------------------------------------------------------------ timers
    def _tick(self, now: float) -> None:
        stalled = now - self._last_tick - STALL
        self._last_tick = now
        for client, msg_id, facts in self._preflights.finished():
            self._reply(client, msg_id, facts)
        if stalled > 0:  # we were not listening (stopped, swapped out): not their silence
            for run in self.runs.values():
                run.last_seen += stalled
        beat = now >= self._next_beat
        if beat:
            self._next_beat = now + self.heartbeat
        for run in list(self.runs.values()):
            self._tick_peers(run, now)
            self._tick_links(run, now)
            self._tick_run(run, now, beat)

    def _tick_peers(self, run: Run, now: float) -> None:
        for peer in run.peers.values():
            if peer.state is PeerState.STARTING:
                problem = peer.start_problem(now)
                if problem is not None:
                    for client, msg_id in peer.start_waiters:
                        self._reply_error(client, msg_id, problem)
                    peer.start_waiters.clear()
                    peer.begin_stop()
            elif peer.state is PeerState.STOPPING:
                if peer.advance_stop(now):
                    self._peer_gone(run, peer)
                    self._unregister(peer)
                    peer.close_socket()
                    for client, msg_id in peer.stop_waiters:
                        self._reply(client, msg_id, {"exit-code": peer.exit_code,
                                                     "leftovers": peer.leftovers})
                    peer.stop_waiters.clear()
            elif peer.state is PeerState.RUNNING and peer.reaped():
                self._peer_gone(run, peer)
            elif peer.state is PeerState.EXITED and peer.stop_waiters:
                peer.begin_stop()  # a stop asked of an exited peer: check its session

    def _unregister(self, peer: PeerProcess) -> None:
        try:
            self.poller.unregister(peer.sock)
        except KeyError:
            pass

    def _tick_links(self, run: Run, now: float) -> None:
        for key, active in list(run.links.items()):
            if active.until is not None and now >= active.until:
                self._undo_link(run, key)

    def _tick_run(self, run: Run, now: float, beat: bool) -> None:
        if run.state in (RunState.ACTIVE, RunState.MISSING):
            silent = now - run.last_seen
            if run.link_cut(now):
                run.last_seen = max(run.last_seen, now - run.heartbeat)
            elif silent > self.orphan_grace:
                log.warning("run %s: no word from its runner for %.1f s: stopping its peers",
                            run.run_id, silent)
                self._wind_down(run, RunState.ORPHANED)
            elif silent > MISSING_AFTER * run.heartbeat:
                run.state = RunState.MISSING
            if beat and run.owner_reachable:  # not kept for later: stale at once
                name, data = am.event_data(am.AgentHeartbeat(
                    time.time(), {n: p.state.value for n, p in run.peers.items()}))
                run.owner_reachable = self._send(run.owner, [encode(Event(name, data,
                                                                          time.time()))])
        elif all(p.stop_finished for p in run.peers.values()):
            leftovers = [f"{p.name}: {x}" for p in run.peers.values() for x in p.leftovers]
            for client, msg_id in run.end_waiters:
                self._reply(client, msg_id, {"leftovers": leftovers})
            del self.runs[run.run_id]
            if run.event_log is not None:
                run.event_log.close()
            for client in [c for c, r in self.clients.items() if r == run.run_id]:
                del self.clients[client]


def main(bind: str, keys: ServerKeys | None, allow_exec: bool, orphan_grace: float,
         workdir: Path | None, out: Callable[[str], None]) -> int:
    """Run an agent until SIGTERM / SIGINT; `out` prints its one line of address."""
    agent = Agent(bind, keys=keys, allow_exec=allow_exec, orphan_grace=orphan_grace,
                  workdir=workdir)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    out(f"harness agent: listening on {agent.address} (pid {os.getpid()}, "
        f"{'CURVE' if keys else 'no authentication: loopback only'}, "
        f"exec: URIs {'allowed' if allow_exec else 'refused'})")
    try:
        agent.serve()
    except Exception as err:  # noqa: BLE001 - a bug of ours: said once, peers stopped
        import traceback

        where = traceback.extract_tb(err.__traceback__)[-1]
        log.error("the agent's loop failed at %s:%d: %s: %s; stopping every peer",
                  os.path.basename(where.filename), where.lineno, type(err).__name__, err)
        return 1
    finally:
        agent.close()
    return 0
