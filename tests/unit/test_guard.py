"""The control planes' host rules (`harness.control.guard`) and the agent's run directories.

Pure functions and a temporary directory: names that become file names, the refusal of
exec:/file:/x-record without --allow-exec, the --control/--keys/--insecure rule, and run
directories that never follow a planted symlink nor prune what the agent did not make.
"""

from __future__ import annotations

import os

import pytest

from harness.control.agent_runs import KEEP_RUNS, MARKER, RUNS, run_directory
from harness.control.guard import check_name, control_access, host_effect_refusal, inside


@pytest.mark.parametrize("name", ["source", "run-1_A", "x" * 64])
def test_plain_names_pass(name):
    assert check_name(name, "run id") is None


@pytest.mark.parametrize("name", ["", "x" * 65, "../app", "a/b", ".", "..", "a b", "é", "a\n"])
def test_anything_else_is_not_a_name(name):
    problem = check_name(name, "run id")
    assert problem is not None and "[A-Za-z0-9_-]{1,64}" in problem


@pytest.mark.parametrize("command, arguments", [
    ("migrate", {"uri": "exec:cat > /tmp/x"}), ("migrate-incoming", {"uri": "file:/etc/x"}),
    ("migrate-recover", {"uri": "exec:sh"}), ("x-record", {"dir": "/"})])
def test_commands_that_act_on_the_host_are_refused(command, arguments):
    refusal = host_effect_refusal(command, arguments, "this peer")
    assert refusal is not None and "--allow-exec" in refusal and "this peer" in refusal


@pytest.mark.parametrize("command, arguments", [
    ("migrate", {"uri": "tcp:127.0.0.1:4444"}), ("migrate-incoming", {"uri": "unix:/tmp/s"}),
    ("query-status", {"uri": "exec:sh"}), ("migrate", {})])
def test_commands_on_the_peers_own_sockets_pass(command, arguments):
    assert host_effect_refusal(command, arguments, "this peer") is None


def test_the_control_rule():
    assert control_access("tcp://127.0.0.1:0", None, False) == (None, None)
    assert control_access("ipc:///tmp/c", None, False) == (None, None)
    assert control_access(None, None, False) == (None, None)
    for exposed in ("tcp://0.0.0.0:1", "tcp://*:1", "tcp://10.0.0.1:1", "tcp://host:1"):
        with pytest.raises(ValueError, match="--keys DIR.*--insecure"):
            control_access(exposed, None, False)
        keys, warning = control_access(exposed, None, True)
        assert keys is None and warning is not None and "no authentication" in warning
    with pytest.raises(ValueError, match="--keys: .*no such key file"):
        control_access("tcp://0.0.0.0:1", __import__("pathlib").Path("/nonexistent"), False)


def test_inside_resolves_symlinks(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "run" / "x.log", tmp_path / "run")
    assert not inside(tmp_path / "run" / "link" / "x.log", tmp_path / "run")
    assert not inside(tmp_path / "run" / ".." / "x.log", tmp_path / "run")


def test_run_directories_never_follow_a_planted_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "work" / RUNS).mkdir(parents=True)
    (tmp_path / "work" / RUNS / "r1").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="lies outside"):
        run_directory(tmp_path / "work", "r1", {})
    with pytest.raises(ValueError, match="is not a name"):
        run_directory(tmp_path / "work", "../r1", {})
    assert list(elsewhere.iterdir()) == []


def test_only_marked_run_directories_are_pruned(tmp_path):
    work = tmp_path / "work"
    users = [work / f"user{n}" for n in range(KEEP_RUNS + 5)]
    unmarked = [work / RUNS / f"unmarked{n}" for n in range(KEEP_RUNS + 5)]
    for n, directory in enumerate(users + unmarked):
        directory.mkdir(parents=True)
        os.utime(directory, (n, n))
    made = []
    for n in range(KEEP_RUNS + 5):  # each newer than the last (file times may be coarse)
        made.append(run_directory(work, f"r{n}", {}))
        os.utime(made[-1], (1000 + n, 1000 + n))
    assert all(d.is_dir() for d in users + unmarked)
    kept = [d for d in made if d.is_dir()]
    assert len(kept) == KEEP_RUNS + 1 and made[-1] in kept and made[0] not in kept
    assert all((d / MARKER).is_file() for d in kept)
