"""`harness.qemu` itself: launch failures, QMP errors and deadlines, reaping.

Strategy: each test starts a paused CPU-less `-M none` QEMU (tens of milliseconds) in its
own temporary directory and provokes one failure: QEMU exiting at start, an unknown
command, a QEMU that stops answering, a closed socket, leftover `exec:` children.  The
assertions are on what a caller sees (error class and message, exit status) and on the
process table afterwards.  The `qemu` fixture closes every QEMU on every path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from harness.qemu import (
    QemuError,
    QemuProcess,
    QMPError,
    find_qemu,
    userfaultfd_available,
)
from tests.qemu_env import COMMON, QEMU_MARKS

pytestmark = [*QEMU_MARKS]


Launch = Callable[..., QemuProcess]


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Launch]:
    """Start paused QEMUs (COMMON + -S + extra args); every one is reaped."""
    started: list[QemuProcess] = []

    def launch(*args: str, workdir: Path | None = None, name: str = "qemu") -> QemuProcess:
        proc = QemuProcess([*COMMON, "-S", *args], workdir or tmp_path, name=name)
        started.append(proc)
        return proc.start()

    try:
        yield launch
    finally:
        for proc in started:
            proc.close()


def test_qemu_exiting_at_start_raises_qemu_error_naming_the_exit_code(tmp_path: Path) -> None:
    proc = QemuProcess([*COMMON, "-M", "no-such-machine"], tmp_path, name="bad")
    with pytest.raises(QemuError) as failed:
        proc.start()
    text = str(failed.value)
    assert "exit code 1" in text
    assert "-M no-such-machine" in text, "the message names the command line"
    assert "unsupported machine type" in text, "the message quotes QEMU's stderr"
    assert proc.returncode == 1, "a failed start leaves QEMU reaped"
    proc.close()  # idempotent after a failed start


def test_missing_binary_raises_qemu_error(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "no-qemu-here")
    monkeypatch.setenv("HARNESS_QEMU", missing)
    assert find_qemu() == missing
    with pytest.raises(QemuError, match="no-qemu-here"):
        QemuProcess(COMMON, tmp_path).start()


def test_unknown_command_raises_command_not_found_and_session_continues(qemu: Launch) -> None:
    proc = qemu()
    with pytest.raises(QMPError) as failed:
        proc.qmp.execute("no-such-command")
    assert failed.value.error_class == "CommandNotFound"
    assert "no-such-command" in failed.value.desc
    assert proc.qmp.execute("query-status")["status"] == "prelaunch"


def test_hmp_returns_monitor_text(qemu: Launch) -> None:
    assert "paused (prelaunch)" in qemu().qmp.hmp("info status")


def test_events_arriving_between_replies_are_queued(qemu: Launch) -> None:
    proc = qemu()
    proc.qmp.execute("cont")
    proc.qmp.execute("query-status")  # the RESUME event may arrive while this waits
    assert proc.qmp.get_event("RESUME", timeout=5)["event"] == "RESUME"
    with pytest.raises(QMPError) as failed:
        proc.qmp.get_event("RESUME", timeout=0.2)
    assert failed.value.error_class == "Timeout"


def test_a_silent_qemu_times_out_and_late_replies_are_dropped(qemu: Launch) -> None:
    proc = qemu()
    frozen = psutil.Process(proc.pid)
    frozen.suspend()
    try:
        with pytest.raises(QMPError) as failed:
            proc.qmp.execute("query-name", timeout=0.3)
        assert failed.value.error_class == "Timeout"
    finally:
        frozen.resume()
    # the late {} answering query-name must not be taken for query-status's reply
    assert proc.qmp.execute("query-status")["status"] == "prelaunch"


def test_closed_socket_raises_connection_closed(qemu: Launch) -> None:
    proc = qemu()
    try:
        proc.qmp.execute("quit")
    except QMPError as exc:  # QEMU may close before the reply is read
        assert exc.error_class == "ConnectionClosed"
    assert proc.wait_exit(timeout=10) == 0
    with pytest.raises(QMPError) as failed:
        proc.qmp.execute("query-status", timeout=5)
    assert failed.value.error_class == "ConnectionClosed"


def test_close_kills_a_qemu_that_ignores_quit(tmp_path: Path) -> None:
    proc = QemuProcess([*COMMON, "-S"], tmp_path).start()
    try:
        psutil.Process(proc.pid).suspend()
    finally:
        status = proc.close(timeout=0.5)
    assert status == -9
    assert proc.returncode == -9


def test_close_reaps_exec_children_left_by_a_qemu_that_exited(qemu: Launch) -> None:
    proc = qemu("-incoming", "defer")
    proc.qmp.execute("migrate-incoming", {"uri": "exec:sleep 60"})
    children = _wait_for_children(psutil.Process(proc.pid), count=1)
    try:
        proc.qmp.execute("quit")
    except QMPError:
        pass
    assert proc.wait_exit(timeout=10) == 0
    assert any(_running(c) for c in children), "QEMU leaves its exec: child behind"
    proc.close()
    alive = [c for c in children if _running(c)]
    assert not alive, f"still running after close(): {alive}"


def test_long_workdir_puts_the_qmp_socket_in_a_short_directory(qemu: Launch,
                                                                tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    proc = qemu(workdir=deep)
    assert len(str(proc.qmp_path)) <= 107 < len(str(deep / "qemu.qmp"))
    socket_dir = proc.qmp_path.parent
    assert socket_dir.name.startswith("hq") and socket_dir.parent == Path("/tmp")
    assert (deep / "qemu.stderr").exists(), "logs stay in the work directory"
    assert proc.qmp.execute("query-status")["status"] == "prelaunch"
    proc.close()
    assert not socket_dir.exists()


def test_userfaultfd_probe_answers_a_bool() -> None:
    assert isinstance(userfaultfd_available(), bool)


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's reaping is up to init)."""
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_for_children(parent: psutil.Process, count: int,
                       timeout: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while len(children := list(parent.children(recursive=True))) < count:
        assert time.monotonic() < deadline, f"QEMU started no exec: child in {timeout}s"
        time.sleep(0.01)
    return children
