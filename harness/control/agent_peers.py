"""One peer process as an agent runs it: started, relayed to, stopped and reaped.

Strategy: the agent's loop owns every `PeerProcess` and calls it; nothing in here waits
or starts a thread.  A peer is `python -m harness source|destination`, launched through
`harness.lifeline` (so it gets SIGTERM if the agent dies) in a session of its own (so process
faults and the leftover check see its whole tree), with its control plane on a private
ipc:// address that only the agent connects to (so it runs with `--allow-exec`: the
agent's own rule decides what it relays).  Its log is `RUN-DIR/NAME.log`, NAME a plain
name, opened without following a symlink.  The agent's DEALER to it is
asynchronous: `send` returns the id the reply will carry, and `receive` hands back
whatever arrived, so a peer busy digesting 4 GiB never holds up the agent's heartbeats.

Stopping is a small state machine the loop advances with `advance_stop`: `quit`, then
(after `QUIT_WAIT`) SIGKILL to the session, then wait until every process of the session
has ended (or `LEFTOVER_GRACE` passed): only then is the stop finished and what is still
alive reported as leftovers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from harness import lifeline
from harness.control.agent_harness import layout_arguments
from harness.control.agent_messages import PeerStart, PeerState
from harness.control.agent_proxy import proxy_command_line
from harness.control.agent_qemu import qemu_command_line
from harness.control.errors import ProtocolMessageError
from harness.control.guard import inside
from harness.control.messages import Execute, Message, encode, from_frames
from harness.faults import process
from harness.guest.leaks import remove_segments

__all__ = ["PeerProcess", "Pending"]

START_TIMEOUT = 30.0
START_RETRY = 1.0  # resend qmp_capabilities this often while the peer starts
QUIT_WAIT = 10.0   # after `quit`, SIGKILL the session
LEFTOVER_GRACE = process.LEFTOVER_GRACE


@dataclass
class Pending:
    """A command relayed to the peer whose reply goes back to `client` as `msg_id`."""

    client: bytes
    msg_id: int
    command: str
    since: float


class PeerProcess:
    """A harness peer the agent started for a run."""

    def __init__(self, spec: PeerStart, run_dir: Path, context: zmq.Context[Any]) -> None:
        self.name = spec.peer
        self.role = spec.role
        self.spec = spec
        self.run_dir = run_dir
        self.state = PeerState.STARTING
        self.log_path = run_dir / f"{spec.peer}.log"
        self._sockdir = Path(tempfile.mkdtemp(prefix="mha", dir="/tmp"))  # ipc paths: short
        self.address = f"ipc://{self._sockdir}/ctl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self._ids = itertools.count(1)
        self.pending: dict[int, Pending] = {}
        self.start_waiters: list[tuple[bytes, int]] = []
        self.stop_waiters: list[tuple[bytes, int]] = []
        self._start_ids: set[int] = set()
        self._started_at = 0.0
        self._last_try = 0.0
        self._quit_at: float | None = None
        self._killed = False
        self._reaped_at: float | None = None
        self.stop_finished = False
        self.leftovers: list[str] = []
        self.exit_code: int | None = None
        self.exit_reported = False
        self.frozen: process.Frozen | None = None

    # ------------------------------------------------------------------ start
    def command_line(self) -> list[str]:
        build = _COMMAND_LINES.get(self.spec.kind)
        if build is None:
            raise OSError(f"this agent cannot start a process of kind {self.spec.kind!r}")
        return lifeline.command(build(self), on_death=signal.SIGTERM)

    def _harness_peer(self) -> list[str]:
        peer = [sys.executable, "-m", "harness", self.role, "--control", self.address,
                "--guest-json", json.dumps(self.spec.guest), "--allow-exec"]
        if self.role == "destination":
            peer += ["--incoming", "defer"] if self.spec.incoming else []
        peer += layout_arguments(self)  # options: {"layout": {...}} (agent_harness.py)
        if self.spec.paused:
            peer.append("--paused")
        return peer

    def launch(self) -> None:
        """Start the process and ask it for its greeting (raises OSError)."""
        if not inside(self.log_path, self.run_dir):
            raise OSError(f"{self.log_path} lies outside the run's directory {self.run_dir}")
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
        with open(fd, "wb") as log:
            self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=self.run_dir,
                                         env=_peer_environment(), start_new_session=True)
        self.sock.connect(self.address)
        self._started_at = time.monotonic()
        self._ask_greeting()

    def _ask_greeting(self) -> None:
        self._last_try = time.monotonic()
        self._start_ids.add(self.send("qmp_capabilities", {}))

    def start_reply(self, msg_id: int | None) -> bool:
        """Whether a reply is the one that says the peer is up."""
        return msg_id in self._start_ids

    def started(self) -> None:
        self.state = PeerState.RUNNING
        self._start_ids.clear()

    def start_problem(self, now: float) -> str | None:
        """Why a starting peer failed (it exited, or did not answer in time), or None.
        Resends the greeting request meanwhile."""
        if self.proc is not None and self.proc.poll() is not None:
            return (f"the {self.name} exited with status {self.proc.returncode} while "
                    f"starting:\n{self.stderr_tail()}")
        if now - self._started_at > START_TIMEOUT:
            return (f"the {self.name} did not answer within {START_TIMEOUT:.0f} s:\n"
                    f"{self.stderr_tail()}")
        if now - self._last_try >= START_RETRY:
            self._ask_greeting()
        return None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    # ------------------------------------------------------------------ relay
    def send(self, command: str, arguments: dict[str, Any]) -> int:
        msg_id = next(self._ids)
        try:
            self.sock.send(encode(Execute(command, arguments, msg_id)), zmq.NOBLOCK)
        except zmq.Again:
            pass  # queue full: the caller's deadline tells
        return msg_id

    def receive(self) -> list[Message]:
        """Every message the peer sent that is waiting (malformed ones are dropped)."""
        out: list[Message] = []
        while self.sock.poll(0, zmq.POLLIN):
            frames = self.sock.recv_multipart(zmq.NOBLOCK)
            try:
                out.append(from_frames(frames))
            except ProtocolMessageError:
                continue
        return out

    # ------------------------------------------------------------------ exit, stop
    def reaped(self) -> bool:
        """Whether the process has ended (reaps it); sets `exit_code` and EXITED."""
        if self.proc is None:
            return True
        code = self.proc.poll()
        if code is None:
            return False
        if self.exit_code is None:
            self.exit_code = code
            self._reaped_at = time.monotonic()
        if self.state is not PeerState.STOPPING:
            self.state = PeerState.EXITED
        return True

    def begin_stop(self) -> None:
        """Ask the peer to quit (thawing it first); `advance_stop` does the rest."""
        if self.state is PeerState.STOPPING or self.stop_finished:
            return
        if self.frozen is not None:
            self.frozen.thaw()
            self.frozen = None
        if not self.reaped():
            self.send("quit", {})
        self.state = PeerState.STOPPING
        self._quit_at = time.monotonic()

    def advance_stop(self, now: float) -> bool:
        """One step of stopping; True once the stop is finished (leftovers known)."""
        if self.stop_finished:
            return True
        if not self.reaped():
            if self._quit_at is not None and now - self._quit_at > QUIT_WAIT and \
                    not self._killed and self.pid is not None:
                self._killed = True
                process.kill(self.pid)
            return False
        alive = self.session_alive()
        if alive and now - (self._reaped_at or now) < LEFTOVER_GRACE:
            return False
        if self.pid is not None:
            remove_segments(self.pid)  # a killed peer cannot unlink its guest's RAM
        self.leftovers = alive
        self.stop_finished = True
        self.state = PeerState.EXITED
        return True

    def session_alive(self) -> list[str]:
        """'PID COMMAND' of each process of the peer's session still alive."""
        return [] if self.pid is None else process.leftovers([self.pid], grace=0.0)

    def kill_now(self) -> None:
        """The agent is going away: SIGKILL the session and reap (bounded)."""
        if self.pid is not None and not self.reaped():
            process.kill(self.pid)
            try:
                assert self.proc is not None
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.reaped()

    def close_socket(self) -> None:
        if not self.sock.closed:
            self.sock.close(linger=0)
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def info(self) -> dict[str, Any]:
        """What a resynced runner learns of this peer."""
        return {"peer": self.name, "role": self.role, "state": self.state.value,
                "pid": self.pid, "exit-code": self.exit_code, "log": str(self.log_path),
                "frozen": self.frozen is not None}


#: kind -> the command line of the process a `peer-start` of that kind runs
_COMMAND_LINES: dict[str, Any] = {"harness": PeerProcess._harness_peer,
                                  "proxy": proxy_command_line,
                                  "qemu": qemu_command_line}


def _peer_environment() -> dict[str, str]:
    """The agent's environment, with the `harness` it runs from first on the path (the
    peer runs in the run's directory, where a checkout's `harness` is not importable)."""
    import harness

    root = str(Path(harness.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}
