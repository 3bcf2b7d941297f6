"""Process faults on real process trees: kill, freeze/thaw, crash, and the leftover check."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from harness.faults import process

# a parent that starts a child and both sleep: the shape of a peer and its workload
TREE = ("import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('up', flush=True); time.sleep(60)")


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    try:
        yield proc
    finally:
        process.kill(proc.pid)
        proc.wait(10)


def _members(pid: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 5
    while len(found := process.session(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def test_kill_takes_the_whole_session_even_a_reparented_child(tree):
    members = _members(tree.pid)
    assert len(members) == 2
    hit = process.kill(tree.pid)
    assert sorted(hit) == sorted(p.pid for p in members)
    assert tree.wait(5) == -signal.SIGKILL
    assert process.leftovers([tree.pid], grace=2.0) == []


def test_freeze_stops_every_process_and_thaw_continues_exactly_those(tree):
    members = _members(tree.pid)
    frozen = process.freeze(tree.pid)
    assert sorted(frozen.pids) == sorted(p.pid for p in members)
    assert all(p.status() == psutil.STATUS_STOPPED for p in members)
    assert sorted(frozen.thaw()) == sorted(frozen.pids)
    time.sleep(0.1)
    assert all(p.status() != psutil.STATUS_STOPPED for p in members)


def test_crash_aborts_the_peer_and_kills_the_rest(tree):
    _members(tree.pid)
    process.crash(tree.pid)
    assert tree.wait(5) == -signal.SIGABRT
    assert process.leftovers([tree.pid], grace=2.0) == []


def test_leftovers_names_what_outlived_its_parent(tree):
    child = next(p for p in _members(tree.pid) if p.pid != tree.pid)
    tree.kill()  # only the parent: the child is re-parented but stays in the session
    tree.wait(5)
    left = process.leftovers([tree.pid], grace=0.2)
    assert len(left) == 1 and left[0].startswith(f"{child.pid} ")
