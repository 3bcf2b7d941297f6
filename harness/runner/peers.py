"""Handles on the two peers of a run: a harness peer process, or a real QEMU.

Strategy: the coordinator talks to both kinds through one small interface (`PeerHandle`):
start, execute a QMP command, drain events, report its runstate, per-page digests of its
memory, and close (always reaping the process, also after a failure).  A harness peer is
`python -m harness source|destination` with a zmq control address; a QEMU peer is
`qemu-system-x86_64 -M none -m N` with QMP on a unix socket, whose memory is read with
`pmemsave` and digested the same way as a harness guest's.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from harness.control import ControlClient, ControlError, PeerGone
from harness.guest.content import page_digests
from harness.guest.leaks import remove_segments
from harness.lifeline import command as lifeline_command
from harness.lifeline import owned_dir
from harness.qemu.qmp import QMPError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0


class PeerError(RuntimeError):
    """A peer could not be started or stopped; the message says why (stderr included)."""


@dataclass
class PeerEvent:
    name: str
    data: dict[str, Any]
    timestamp: float


class PeerHandle(Protocol):
    role: str
    kind: str

    def start(self) -> None: ...
    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any: ...
    def poll_events(self) -> list[PeerEvent]: ...
    def runstate(self) -> str | None: ...
    def digests(self, at_incoming: bool = False) -> dict[str, np.ndarray] | None: ...
    def check_intact(self) -> dict[str, int] | None: ...
    def alive(self) -> bool: ...
    def exit_code(self) -> int | None: ...
    def stderr_tail(self, lines: int = 20) -> str: ...
    def close(self) -> None: ...
    @property
    def pid(self) -> int | None: ...


def short_dir(prefix: str) -> Path:
    """A directory with a short path: unix and ipc socket paths are limited to 107 bytes.
    It names its owner (this process), so a later run sweeps it if we die (lifeline)."""
    return owned_dir(prefix)


class ControlledProcess:
    """A `python -m harness ...` process driven over its zmq control plane: started in a
    session of its own, answered `hello` before `start` returns, always reaped by `close`.
    With `die_with_starter` (the runner sets it) it is started through harness.lifeline,
    so it dies when the process that started it does, even by SIGKILL."""

    role: str
    workdir: Path
    die_with_starter = False

    def _init_process(self) -> None:
        self._sockdir = short_dir("mh")
        self.address = f"ipc://{self._sockdir}/{self.role[0]}.ctl"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: ControlClient | None = None
        self.stderr_path = self.workdir / f"{self.role}.log"

    def command_line(self) -> list[str]:
        raise NotImplementedError

    def _pass_fds(self) -> tuple[int, ...]:
        return ()

    def start(self) -> None:
        with self.stderr_path.open("wb") as err:
            argv = self.command_line()
            self._proc = subprocess.Popen(
                lifeline_command(argv) if self.die_with_starter else argv,
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                pass_fds=self._pass_fds(), start_new_session=True)
        self._client = ControlClient(self.address, timeout=COMMAND_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise PeerError(f"{self.role} exited with status {self._proc.returncode} while "
                                f"starting:\n{self.stderr_tail()}")
            try:
                self._client.hello(timeout=0.5)
                return
            except (ControlError, OSError):
                if time.monotonic() > deadline:
                    raise PeerError(f"{self.role} did not answer on {self.address} within "
                                    f"{START_TIMEOUT:.0f} s:\n{self.stderr_tail()}") from None

    @property
    def client(self) -> ControlClient:
        assert self._client is not None, f"{self.role} not started"
        return self._client

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        return self.client.execute(command, arguments, timeout)

    def poll_events(self) -> list[PeerEvent]:
        if self._client is None:
            return []
        try:
            self._client.handle_readable()
        except PeerGone:
            pass
        return [PeerEvent(e.name, dict(e.data), e.timestamp) for e in self._client.events()]

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        try:
            if self.alive() and self._client is not None:
                try:
                    self._client.execute("quit", timeout=5)
                except ControlError as err:  # it may be gone already: reaped below anyway
                    log.debug("quit %s: %s", self.role, err)
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    kill_tree(self._proc.pid)
                    self._proc.wait(timeout=10)
        finally:
            if self._client is not None:
                self._client.close()
            shutil.rmtree(self._sockdir, ignore_errors=True)
            if self._proc is not None and self._proc.returncode is not None:
                removed = remove_segments(self._proc.pid)  # a killed peer leaves its RAM
                if removed:
                    log.info("%s: removed %d guest memory segment(s) it left", self.role,
                             len(removed))


@dataclass
class HarnessPeer(ControlledProcess):
    """`python -m harness ROLE` driven over its control plane."""

    role: str
    workdir: Path
    guest: dict[str, Any]
    extra_args: list[str] = field(default_factory=list)
    pass_fds: dict[str, int] = field(default_factory=dict)
    kind: str = "harness"

    def __post_init__(self) -> None:
        self._init_process()

    def command_line(self) -> list[str]:
        # its own peer on an ipc socket in a 0700 directory: exec:/file: URIs stay allowed
        args = [sys.executable, "-m", "harness", self.role, "--control", self.address,
                "--guest-json", json.dumps(self.guest), "--allow-exec", *self.extra_args]
        for name, fd in self.pass_fds.items():
            args += ["--fd", f"{name}={fd}"]
        return args

    def _pass_fds(self) -> tuple[int, ...]:
        return tuple(self.pass_fds.values())

    def runstate(self) -> str | None:
        return str(self.execute("query-status", timeout=10)["status"])

    def digests(self, at_incoming: bool = False) -> dict[str, np.ndarray] | None:
        args = {"at": "incoming"} if at_incoming else {}
        value, blob = self.client.execute_blob("x-guest-digests", args, timeout=120)
        return digests_from_reply(value, blob)

    def check_intact(self) -> dict[str, int] | None:
        return dict(self.execute("x-guest-check", timeout=120)["mismatched"])


def digests_from_reply(value: Any, blob: bytes | None) -> dict[str, np.ndarray] | None:
    """Per-block page digests from an `x-guest-digests` reply (metadata + uint64 blob)."""
    if value is None or blob is None:
        return None
    out: dict[str, np.ndarray] = {}
    offset = 0
    for block in value["blocks"]:
        count = int(block["pages"])
        out[block["name"]] = np.frombuffer(blob, dtype=np.uint64, count=count,
                                           offset=offset * 8).copy()
        offset += count
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    victims = [*root.children(recursive=True), root]
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=5)


@dataclass
class QemuPeer:
    """A real `qemu-system-x86_64 -M none -m N` as a peer, driven over QMP."""

    role: str
    workdir: Path
    memory: int  # bytes of the one RAM block "ram"
    args: list[str] = field(default_factory=list)
    loader: Path | None = None  # a file loaded at guest address 0 (known content)
    paused: bool = False
    binary: str | None = None
    kind: str = "qemu"
    die_with_starter: bool = False  # see ControlledProcess

    def __post_init__(self) -> None:
        self._qemu: Any = None

    def command_args(self) -> list[str]:
        args = ["-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
                "-M", "none", "-m", f"{self.memory >> 20}M"]
        if self.role == "destination":
            args += ["-incoming", "defer"]
        if self.paused:
            args.append("-S")
        if self.loader is not None:
            args += ["-device", f"loader,file={self.loader},addr=0x0"]
        return args + list(self.args)

    def start(self) -> None:
        from harness.qemu import QemuProcess

        self._qemu = QemuProcess(self.command_args(), self.workdir, name=self.role,
                                 binary=self.binary, die_with_starter=self.die_with_starter)
        self._qemu.start(timeout=START_TIMEOUT)

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        return self._qemu.qmp.execute(command, arguments, timeout=timeout or COMMAND_TIMEOUT)

    def poll_events(self) -> list[PeerEvent]:
        if self._qemu is None or not self.alive():
            return []
        qmp = self._qemu.qmp
        try:
            qmp.execute("query-status", timeout=5)  # pulls in pending events
        except (QMPError, OSError):  # QEMU exited: the coordinator sees it as not alive
            return []
        events, qmp.events[:] = list(qmp.events), []
        return [PeerEvent(e["event"], e.get("data", {}), _qmp_time(e)) for e in events]

    def runstate(self) -> str | None:
        return str(self.execute("query-status", timeout=10)["status"])

    def digests(self, at_incoming: bool = False) -> dict[str, np.ndarray] | None:
        from harness.qemu import pmemsave

        dump = self.workdir / f"{self.role}-memory.bin"
        pmemsave(self._qemu.qmp, 0, self.memory, dump)
        mem = np.fromfile(dump, dtype=np.uint8)
        dump.unlink()
        return {"ram": page_digests(mem)}

    def check_intact(self) -> dict[str, int] | None:
        return None

    def alive(self) -> bool:
        return self._qemu is not None and self._qemu.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self._qemu is None else self._qemu.pid

    def exit_code(self) -> int | None:
        return None if self._qemu is None else self._qemu.returncode

    def stderr_tail(self, lines: int = 20) -> str:
        if self._qemu is None:
            return ""
        return "\n".join(self._qemu.stderr_text().splitlines()[-lines:])

    def close(self) -> None:
        if self._qemu is not None:
            self._qemu.close()


def _qmp_time(event: dict[str, Any]) -> float:
    ts = event.get("timestamp", {})
    return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
