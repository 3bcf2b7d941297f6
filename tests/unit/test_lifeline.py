"""harness.lifeline: a child started through it dies with its starter (even SIGKILLed), and
`sweep` removes what a dead owner left -- and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness import lifeline
from harness.guest.leaks import SHM_DIR
from harness.guest.memory import SEGMENT_PREFIX

DEADLINE = 30.0


def _dead_pid() -> int:
    """A pid that existed (ours: a finished child) and is gone now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=DEADLINE)
    return proc.pid


def _gone(pid: int, timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


STARTER = """
import subprocess, sys, time
from harness import lifeline
child = subprocess.Popen(lifeline.command(["/bin/sleep", "300"]) if sys.argv[1] == "yes"
                         else ["/bin/sleep", "300"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("wrapped", [True, False])
def test_a_child_started_through_the_lifeline_dies_with_its_killed_starter(wrapped):
    starter = subprocess.Popen([sys.executable, "-c", STARTER, "yes" if wrapped else "no"],
                               stdout=subprocess.PIPE, text=True)
    child_pid = None
    try:
        assert starter.stdout is not None
        child_pid = int(starter.stdout.readline())
        deadline = time.monotonic() + DEADLINE  # the exec: the child becomes /bin/sleep
        while psutil.Process(child_pid).cmdline()[:1] != ["/bin/sleep"]:
            assert time.monotonic() < deadline, "the child never exec'd sleep"
            time.sleep(0.02)
        starter.kill()
        starter.wait(timeout=DEADLINE)
        assert _gone(child_pid, 10 if wrapped else 1) is wrapped
    finally:
        starter.kill()
        starter.wait(timeout=DEADLINE)
        if child_pid is not None and not _gone(child_pid, 0):
            os.kill(child_pid, signal.SIGKILL)


TERM_STARTER = """
import signal, subprocess, sys, time
from harness import lifeline
child = subprocess.Popen(lifeline.command([sys.executable, "-c", sys.argv[1]],
                                          on_death=signal.SIGTERM), start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""
def test_an_agents_peer_gets_sigterm_to_shut_down_cleanly(tmp_path):
    """on_death=SIGTERM (what an agent asks for its peers): the child's handler runs."""
    mark = tmp_path / "terminated"
    child_code = (f"import signal, sys, time\n"
                  f"def on_term(*_):\n"
                  f"    open({str(mark)!r}, 'w').close()\n"
                  f"    sys.exit(0)\n"
                  f"signal.signal(signal.SIGTERM, on_term)\n"
                  f"print('ready', flush=True)\n"
                  f"time.sleep(300)\n")
    starter = subprocess.Popen([sys.executable, "-c", TERM_STARTER, child_code],
                               stdout=subprocess.PIPE, text=True)
    child_pid = None
    try:
        assert starter.stdout is not None
        child_pid = int(starter.stdout.readline())
        assert starter.stdout.readline().strip() == "ready"  # its handler is installed
        starter.kill()
        starter.wait(timeout=DEADLINE)
        assert _gone(child_pid)
        assert mark.exists(), "the child was not terminated by SIGTERM"
    finally:
        starter.kill()
        starter.wait(timeout=DEADLINE)
        if child_pid is not None and not _gone(child_pid, 0):
            os.kill(child_pid, signal.SIGKILL)


def test_the_lifeline_does_not_start_a_command_whose_starter_is_already_gone():
    out = subprocess.run([sys.executable, "-m", "harness.lifeline", str(_dead_pid()), "--",
                          "/bin/echo", "started"], capture_output=True, text=True,
                         timeout=DEADLINE, check=False)
    assert out.returncode == 1
    assert "started" not in out.stdout
    assert "the starter is gone; not starting /bin/echo started" in out.stderr


CANNOT_RUN = """
import os, subprocess, sys
sys.exit(subprocess.run([sys.executable, "-m", "harness.lifeline", str(os.getpid()), "--",
                         "/nonexistent/qemu"]).returncode)
"""


def test_the_lifeline_names_a_command_it_cannot_run():
    out = subprocess.run([sys.executable, "-c", CANNOT_RUN], capture_output=True, text=True,
                         timeout=DEADLINE, check=False)
    assert out.returncode == 127
    assert out.stderr.strip() == "lifeline: cannot run /nonexistent/qemu: No such file or " \
                                 "directory"


def test_owned_dirs_name_their_owner_and_refuse_unknown_prefixes():
    path = lifeline.owned_dir("mhu")
    try:
        assert path.parent == Path("/tmp")
        assert path.name.startswith(f"mhu-{os.getpid()}-")
        assert (path / lifeline.MARKER).read_text() == f"{os.getpid()}\n"
    finally:
        (path / lifeline.MARKER).unlink()
        path.rmdir()
    with pytest.raises(ValueError, match="prefix 'results' is not one sweep"):
        lifeline.owned_dir("results")


def test_sweep_removes_what_dead_owners_left_and_nothing_else(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    made = {}
    for name, marker in (("dead", f"mh-{dead}-abc"), ("alive", f"mh-{alive}-abc"),
                         ("no-marker", f"mhx-{dead}-nomark"), ("other-pid", f"mhr-{dead}-x1"),
                         ("foreign", f"results-{dead}-abc")):
        made[name] = tmp_path / marker
        made[name].mkdir()
        (made[name] / "s.ctl").write_text("")
    for name in ("dead", "alive", "foreign"):
        pid = dead if name != "alive" else alive
        (made[name] / lifeline.MARKER).write_text(f"{pid}\n")
    (made["other-pid"] / lifeline.MARKER).write_text(f"{alive}\n")  # a marker that disagrees
    (made["no-marker"] / "s.ctl").unlink()
    stray_file = tmp_path / f"mh-{dead}-file"  # a file, not a directory
    stray_file.write_text("keep")
    segments = {who: SHM_DIR / f"{SEGMENT_PREFIX}{pid}-{os.urandom(6).hex()}"
                for who, pid in (("dead", dead), ("alive", alive))}
    try:
        for seg in segments.values():
            seg.write_bytes(b"\0" * 16)
        removed = lifeline.sweep(tmp_path)
        assert sorted(removed) == sorted([str(made["dead"]), str(segments["dead"])])
        assert not made["dead"].exists() and not segments["dead"].exists()
        for name in ("alive", "no-marker", "other-pid", "foreign"):
            assert made[name].is_dir(), name
        assert stray_file.read_text() == "keep"
        assert segments["alive"].exists()
    finally:
        for seg in segments.values():
            seg.unlink(missing_ok=True)
