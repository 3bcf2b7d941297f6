"""Start a real `qemu-system-x86_64` as a migration peer, talk QMP to it, always reap it.

Strategy: QEMU runs as a child process in its own session, stdout/stderr going to files in
the caller's work directory (QEMU's destination reports load errors only on stderr and
then exits 1, so stderr is evidence, not noise).  QMP is a unix socket QEMU listens on
(`server=on,wait=off`), so no TCP port is ever chosen and parallel tests cannot collide.
`start()` polls, against a deadline, until the socket accepts or QEMU dies, then
negotiates QMP; any failure raises `QemuError` naming the command line, the exit code and
the last stderr lines.  `close()` is the one way out and is idempotent: `quit` over QMP,
a bounded wait, then SIGKILL of the whole process tree (psutil; `exec:` migrations give
QEMU `sh`/`cat` children).  Children outlive a QEMU that exits by itself (they are
reparented to init, out of reach of a tree walk), so `close()` also sweeps QEMU's
session: QEMU is started as a session leader, and a process in that session created
after QEMU is one of its descendants.  It runs on every path: the context manager, a
failed `start()`, a failed test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Self

import psutil

from harness.errors import EnvironmentFailure
from harness.lifeline import command as lifeline_command
from harness.lifeline import owned_dir

from .qmp import QMPClient, QMPError

__all__ = ["QemuError", "QemuProcess", "find_qemu", "userfaultfd_available"]

QEMU_BINARY = "qemu-system-x86_64"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_SYS_USERFAULTFD_X86_64 = 323
_UFFD_USER_MODE_ONLY = 1
_STDERR_TAIL_LINES = 12
_POLL_INTERVAL = 0.005


class QemuError(EnvironmentFailure, RuntimeError):
    """QEMU did not start, exited early, or did not exit when asked."""


def find_qemu() -> str | None:
    """The QEMU binary: $HARNESS_QEMU when set, else `qemu-system-x86_64` on PATH."""
    override = os.environ.get("HARNESS_QEMU")
    if override:
        return override
    return shutil.which(QEMU_BINARY)


def userfaultfd_available() -> bool:
    """Whether this process may create a userfaultfd (what a postcopy destination needs).

    Probes the raw x86_64 syscall with O_CLOEXEC|O_NONBLOCK, then again adding
    UFFD_USER_MODE_ONLY (allowed to unprivileged users, but it only catches user-mode
    faults, so a True from that second try may overstate what QEMU can do); the fd is
    closed at once.  False on any failure.
    """
    if platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        syscall.argtypes = [ctypes.c_long, ctypes.c_int]
    except (OSError, AttributeError):
        return False
    base = os.O_CLOEXEC | os.O_NONBLOCK
    for flags in (base, base | _UFFD_USER_MODE_ONLY):
        fd = syscall(_SYS_USERFAULTFD_X86_64, flags)
        if fd >= 0:
            os.close(fd)
            return True
    return False


class QemuProcess:
    """A QEMU child process with a QMP socket in `workdir`.

    States: created -> started (QMP negotiated) -> closed.  `start()` accepts only a
    created process; `close()` accepts any state and always leaves the process reaped.
    """

    def __init__(self, args: list[str], workdir: Path, name: str = "qemu",
                 binary: str | None = None, die_with_starter: bool = False,
                 new_session: bool = True) -> None:
        self.args = list(args)
        #: False: QEMU stays in its starter's session, so a fault on that session
        #: (harness/qemu/served.py's wrapper, as an agent runs it) reaches QEMU too
        self.new_session = new_session
        self.die_with_starter = die_with_starter  # exec'd through harness.lifeline
        self.workdir = Path(workdir).resolve()
        self.name = name
        self.binary = binary or find_qemu() or QEMU_BINARY
        self.stdout_path = self.workdir / f"{name}.stdout"
        self.stderr_path = self.workdir / f"{name}.stderr"
        self._socket_dir: Path | None = None
        self.qmp_path = self.workdir / f"{name}.qmp"  # moved to /tmp at start if too long
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QMPClient | None = None
        self._started_at = 0.0  # QEMU's create time (psutil clock)
        self._closed = False

    # ------------------------------------------------------------------ properties
    @property
    def qmp(self) -> QMPClient:
        if self._qmp is None:
            raise QemuError(f"QMP of {self.name} is not connected (start() first)")
        return self._qmp

    @property
    def command(self) -> list[str]:
        """The full command line (with the QMP option this class adds)."""
        return [self.binary, *self.args, "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> Self:
        """Launch QEMU and connect QMP; on any failure reap QEMU and raise QemuError."""
        if self._proc is not None or self._closed:
            raise QemuError(f"{self.name}: start() on a process already started or closed")
        try:
            self._spawn()
            self._qmp = self._connect(time.monotonic() + timeout, timeout)
        except BaseException:
            self.close(timeout=1.0)
            raise
        return self

    def wait_exit(self, timeout: float) -> int:
        """Wait until QEMU exits by itself; its exit status (negative: killed by signal)."""
        proc = self._require_proc()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise QemuError(self._describe(f"still running after {timeout}s")) from None

    def close(self, timeout: float = 5.0) -> int | None:
        """Quit QEMU (QMP `quit`, then SIGKILL of its tree), reap it; idempotent."""
        self._closed = True
        proc = self._proc
        try:
            if proc is not None:
                if proc.poll() is None:
                    self._ask_to_quit(min(timeout, 2.0))
                self._wait_or_kill(proc, timeout)
        finally:
            self._drop_qmp()
            self._remove_socket_dir()
        return None if proc is None else proc.returncode

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ starting
    def _place_qmp_socket(self) -> None:
        """Keep the socket in workdir unless its path exceeds sun_path (107 bytes)."""
        if len(os.fsencode(str(self.qmp_path))) <= UNIX_PATH_MAX:
            return
        self._socket_dir = owned_dir("hq")  # named after its owner: swept if we die
        self.qmp_path = self._socket_dir / f"{self.name}.qmp"

    def _spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._place_qmp_socket()
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()  # a stale socket would refuse connections
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            command = lifeline_command(self.command) if self.die_with_starter else self.command
            self._proc = _popen(command, out, err, self.workdir, self.new_session)
        with contextlib.suppress(psutil.Error):
            self._started_at = psutil.Process(self._proc.pid).create_time()

    def _connect(self, deadline: float, timeout: float) -> QMPClient:
        while True:
            if self.returncode is not None:
                raise QemuError(self._describe("exited before QMP was ready"))
            sock = _try_connect(self.qmp_path)
            if sock is not None:
                break
            if time.monotonic() >= deadline:
                raise QemuError(self._describe(f"QMP socket {self.qmp_path} not ready "
                                               f"after {timeout}s"))
            time.sleep(_POLL_INTERVAL)
        try:
            client = QMPClient(sock, max(deadline - time.monotonic(), 0.1))
            client.negotiate(max(deadline - time.monotonic(), 0.1))
        except QMPError as exc:
            sock.close()
            time.sleep(0.05)  # let an exiting QEMU finish writing stderr
            raise QemuError(self._describe(f"QMP handshake failed ({exc})")) from exc
        return client

    # ------------------------------------------------------------------ stopping
    def _ask_to_quit(self, timeout: float) -> None:
        if self._qmp is None:
            return
        with contextlib.suppress(QMPError, OSError):
            self._qmp.execute("quit", timeout=timeout)

    def _wait_or_kill(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc.pid)
            proc.wait()
        _kill_all(_session_members(proc.pid, self._started_at))

    def _drop_qmp(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # ------------------------------------------------------------------ errors
    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise QemuError(f"{self.name}: not started")
        return self._proc

    def _describe(self, what: str) -> str:
        """A QemuError message: what happened, exit code, command line, stderr tail."""
        code = self.returncode
        status = "still running" if code is None else f"exit code {code}"
        tail = self.stderr_text().splitlines()[-_STDERR_TAIL_LINES:]
        lines = "\n".join(f"    {line}" for line in tail) or "    (empty)"
        return (f"QEMU {self.name!r} {what} ({status})\n  command: {shlex.join(self.command)}"
                f"\n  last stderr lines:\n{lines}")


def _popen(command: list[str], out: IO[bytes], err: IO[bytes],
           cwd: Path, new_session: bool = True) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                cwd=cwd, start_new_session=new_session)
    except OSError as exc:
        raise QemuError(f"cannot run {shlex.join(command)}: {exc}") from exc


def _try_connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return sock


def _kill(pid: int) -> None:
    """SIGKILL our child `pid` and every descendant it has now.

    The child itself is left for `Popen.wait` to reap (psutil would reap it first and
    lose the exit status); the descendants are waited for here.
    """
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)
        parent.kill()
        _kill_all(children)


def _session_members(sid: int, not_before: float) -> list[psutil.Process]:
    """Processes left in the session QEMU led (`sid` is QEMU's pid), QEMU reaped or not.

    A session id cannot be taken over while a member lives, and the create-time bound
    excludes any older process, so this finds only QEMU's own leftovers.
    """
    found = []
    for p in psutil.process_iter(["create_time"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.pid != sid and os.getsid(p.pid) == sid and \
                    p.info["create_time"] >= not_before:
                found.append(p)
    return found


def _kill_all(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    """SIGKILL the still-running ones (psutil checks identity, so no reused pid is hit).

    Waits until each is dead; a zombie counts as dead, since reaping an orphan is its new
    parent's business (some inits reap only now and then).
    """
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)


def _running(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
