"""Handles on the two peers of a run: a harness peer process, or a real QEMU.

Strategy: the coordinator talks to both kinds through one small interface (`PeerHandle`):
start, execute a QMP command, drain events, report its runstate, per-page digests of its
memory, and close (always reaping the process, also after a failure).  A harness peer is
`python -m harness source|destination` with a zmq control address; a QEMU peer is
`qemu-system-x86_64` with QMP on a unix socket: `-M none -m N`, whose memory is read with
`pmemsave`, or a real pc/q35 machine running the harness's real guest, whose every RAM
block is read through a migration stream (harness.qemu.snapshot); either is digested the
same way as a harness guest's.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import psutil

from harness.control import CommandError, ControlClient, ControlError, PeerGone
from harness.control.errors import ControlTimeout
from harness.errors import EnvironmentFailure
from harness.guest.content import page_digests
from harness.guest.leaks import remove_segments
from harness.lifeline import command as lifeline_command
from harness.lifeline import owned_dir
from harness.qemu.qmp import QMPError

if TYPE_CHECKING:
    from harness.qemu.snapshot import Snapshot
    from harness.realguest.heartbeat import Heartbeat
    from harness.realguest.image import GuestProgram

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0


class PeerError(EnvironmentFailure, RuntimeError):
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


def pollables(handle: Any) -> list[Any]:
    """What a coordinator's zmq.Poller waits on for news from `handle` (its sockets, or
    the file descriptor of a QMP socket); none for a handle whose news comes by an agent."""
    method = getattr(handle, "pollables", None)
    return list(method()) if method is not None else []


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
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Start the process without waiting for it (the runner launches both peers, then
        waits for each: their start-ups overlap)."""
        with self.stderr_path.open("wb") as err:
            argv = self.command_line()
            self._proc = subprocess.Popen(
                lifeline_command(argv) if self.die_with_starter else argv,
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                pass_fds=self._pass_fds(), start_new_session=True)
        self._client = ControlClient(self.address, timeout=COMMAND_TIMEOUT)
        self._launched_at = time.monotonic()

    def wait_started(self) -> None:
        """Until the launched process answers `hello` (START_TIMEOUT from its launch)."""
        assert self._proc is not None and self._client is not None, f"{self.role} not launched"
        deadline = self._launched_at + START_TIMEOUT
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

    def pollables(self) -> list[Any]:
        return [] if self._client is None else self._client.pollables()

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


def start_together(handles: list[Any]) -> None:
    """Start several handles with their start-ups overlapping: every `ControlledProcess`
    is launched first, then each is waited for (its own START_TIMEOUT); any other handle
    (a QEMU) is started in turn.  The first error is raised; what was launched is the
    caller's to close (reaped by `close`, as after any failed start)."""
    for handle in handles:
        if isinstance(handle, ControlledProcess):
            handle.launch()
    for handle in handles:
        if isinstance(handle, ControlledProcess):
            handle.wait_started()
        else:
            handle.start()


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
    """A real `qemu-system-x86_64` as a peer, driven over QMP.

    `machine="none"` (the default) is `-M none -m N`: no vCPU, one RAM block "ram",
    read with pmemsave, exactly as before.  A real machine (pc, q35, pc-i440fx-7.2, ...,
    see harness.qemu.machine) boots `program` (harness.realguest) from a raw image, with
    its serial port in `serial_path`; its memory is every RAM block, read through a
    migration stream (harness.qemu.snapshot).  The image is `workdir/guest.img`: a
    source and a destination sharing a workdir (one host) open the same file -- an
    `-incoming` destination may share a running source's image (fact F12), as shared
    storage is shared in a real migration; peers in different workdirs each write their
    own copy, identical bytes since write_image is a function of the program and the
    guest never writes its disk.
    """

    role: str
    workdir: Path
    memory: int  # bytes of RAM (-M none: the one RAM block "ram")
    args: list[str] = field(default_factory=list)
    loader: Path | None = None  # -M none only: a file loaded at guest address 0
    paused: bool = False
    binary: str | None = None
    kind: str = "qemu"
    die_with_starter: bool = False  # see ControlledProcess
    machine: str = "none"
    accel: str = "tcg"  # resolved already (harness.qemu.machine.resolve_accel)
    accel_reason: str = ""  # resolve_accel's why, for the report
    program: GuestProgram | None = None  # the real guest (None: no disk, SeaBIOS idles)
    serial_path: Path | None = None  # default workdir/ROLE.serial on a real machine
    new_session: bool = True  # False: in its starter's session (harness/qemu/served.py)

    def __post_init__(self) -> None:
        self._qemu: Any = None
        self.image: Path | None = None
        self.last_snapshot: Snapshot | None = None
        if self.machine != "none":
            if self.loader is not None:
                raise PeerError(f"{self.role}: a loader file is for -M none only, not "
                                f"machine {self.machine}")
            if self.serial_path is None:
                self.serial_path = self.workdir / f"{self.role}.serial"

    def command_args(self) -> list[str]:
        from harness.qemu.machine import machine_args

        args = machine_args(self.machine, self.accel, self.memory, self.image,
                            self.serial_path, self.role, self.paused)
        if self.loader is not None:
            args += ["-device", f"loader,file={self.loader},addr=0x0"]
        return args + list(self.args)

    def start(self) -> None:
        from harness.qemu import QemuProcess

        if self.machine != "none":
            self._prepare_machine()
        self._qemu = QemuProcess(self.command_args(), self.workdir, name=self.role,
                                 binary=self.binary, die_with_starter=self.die_with_starter,
                                 new_session=self.new_session)
        self._qemu.start(timeout=START_TIMEOUT)

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """A QMP command; QEMU's refusal is a CommandError and a QMP socket that closed or
        timed out a PeerGone / ControlTimeout, as with a harness peer, so the runner
        handles both kinds alike."""
        try:
            return self._qemu.qmp.execute(command, arguments,
                                          timeout=timeout or COMMAND_TIMEOUT)
        except QMPError as err:
            raise _control_error(err) from None

    def poll_events(self) -> list[PeerEvent]:
        if self._qemu is None or not self.alive():
            return []
        events = self._qemu.qmp.take_available()  # without a round trip
        return [PeerEvent(e["event"], e.get("data", {}), _qmp_time(e)) for e in events]

    def pollables(self) -> list[Any]:
        qmp = getattr(self._qemu, "_qmp", None)  # None: not connected (yet, or any more)
        return [] if qmp is None or qmp.eof else [qmp.fileno()]

    def runstate(self) -> str | None:
        return str(self.execute("query-status", timeout=10)["status"])

    def _prepare_machine(self) -> None:
        from harness.qemu.machine import MachineError, validate_machine

        try:
            validate_machine(self.machine, self.binary)
        except MachineError as err:
            raise PeerError(f"{self.role}: {err}") from None
        if self.program is not None:
            self.image = shared_image(self.program, self.workdir / "guest.img")

    def snapshot(self) -> dict[str, np.ndarray]:
        """Every RAM block (used length each): `-M none` its one block "ram" read with
        pmemsave; a real machine through harness.qemu.snapshot (the VM is left paused)."""
        if self.machine == "none":
            from harness.qemu import pmemsave

            dump = self.workdir / f"{self.role}-memory.bin"
            pmemsave(self._qemu.qmp, 0, self.memory, dump)
            mem = np.fromfile(dump, dtype=np.uint8)
            dump.unlink()
            return {"ram": mem}
        from harness.qemu.snapshot import snapshot

        self.last_snapshot = snapshot(self._qemu.qmp, timeout=max(60.0, self.memory / 50e6))
        return self.last_snapshot.blocks

    def digests(self, at_incoming: bool = False) -> dict[str, np.ndarray] | None:
        """page_digests of every block of `snapshot()` (QEMU's memory is what it holds
        now: `at_incoming` changes nothing for a real QEMU)."""
        return {name: page_digests(mem) for name, mem in self.snapshot().items()}

    def heartbeat(self) -> Heartbeat | None:
        """The real guest's heartbeat (harness.realguest); None for -M none or no guest."""
        if self.machine == "none" or self.program is None:
            return None
        from harness.realguest.heartbeat import read_heartbeat

        return read_heartbeat(self._qemu.qmp)

    def serial_text(self, limit: int = 1 << 20) -> str:
        """What the guest wrote to its serial port (the last `limit` bytes), "" if none."""
        if self.serial_path is None:
            return ""
        try:
            with self.serial_path.open("rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - limit))
                return f.read(limit).decode("latin-1")
        except OSError:
            return ""

    def facts(self) -> dict[str, Any]:
        """For the report: the machine as QEMU resolved it, accel and why, the QEMU
        version, the command line (None where the QEMU could not say)."""
        out: dict[str, Any] = {
            "machine-requested": self.machine, "machine": None, "accel": self.accel,
            "accel-reason": self.accel_reason, "qemu-version": None, "kvm-enabled": None,
            "command-line": None if self._qemu is None else shlex.join(self._qemu.command),
            "image": None if self.image is None else str(self.image),
            "serial": None if self.serial_path is None else str(self.serial_path)}
        if self.last_snapshot is not None:
            snap = self.last_snapshot
            out["snapshot"] = {"seconds": round(snap.seconds, 3), "blocks": list(snap.blocks),
                               "stream-bytes": snap.stream_bytes, "notes": list(snap.notes)}
        if self.alive():
            out.update(self._asked_facts())
        return out

    def _asked_facts(self) -> dict[str, Any]:
        qmp = self._qemu.qmp
        out: dict[str, Any] = {}
        try:
            version = qmp.execute("query-version", timeout=5)
            q = version["qemu"]
            out["qemu-version"] = (f"{q['major']}.{q['minor']}.{q['micro']} "
                                   f"{version.get('package', '')}".strip())
            qom_type = str(qmp.execute("qom-get", {"path": "/machine", "property": "type"},
                                       timeout=5))
            out["machine"] = qom_type.removesuffix("-machine")
            out["kvm-enabled"] = bool(qmp.execute("query-kvm", timeout=5)["enabled"])
        except (QMPError, OSError, KeyError, TypeError) as err:
            log.debug("%s: facts: %s", self.role, err)
        return out

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


def shared_image(program: GuestProgram, path: Path) -> Path:
    """`path` holding `program`'s image: written when absent (link of a finished temp
    file: never half-written, never replaced under a QEMU that has it open), else
    checked to hold the same bytes."""
    from harness.realguest.image import write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".guest-", suffix=".img", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_image(program, tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if not filecmp.cmp(tmp, path, shallow=False):
                raise PeerError(f"{path} holds another guest image than this peer's "
                                f"program") from None
    finally:
        tmp.unlink()
    return path


def _control_error(err: QMPError) -> ControlError:
    if err.error_class == "ConnectionClosed":
        return PeerGone(f"QEMU's QMP socket closed: {err.desc}")
    if err.error_class == "Timeout":
        return ControlTimeout(f"QEMU did not answer: {err.desc}")
    if err.error_class == "ProtocolError":
        return ControlError(f"QEMU's QMP: {err.desc}")
    return CommandError(err.error_class, err.desc)


def _qmp_time(event: dict[str, Any]) -> float:
    ts = event.get("timestamp", {})
    return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
