"""Nothing outlives `harness run`: killed mid-migration (SIGKILL) its peers, workloads and
resource trackers die with it and the next run sweeps what is left in /tmp and /dev/shm;
SIGTERM and SIGHUP end it as Ctrl-C does (exit 3, the JSON report with verdict `error`,
reason `interrupted`, the work directory named and kept, every process reaped); a run
that passes without --record/--json leaves nothing in its work directory's parent.

Black box: `python -m harness run` as a user runs it, a HARNESS_WORKDIR under tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.guest.leaks import leftover_segments
from tests.conftest import REPO

DEADLINE = 60.0  # generous: the machine may be busy; nothing here measures speed

SLOW = """\
name: lifecycle
seed: 3
timeout: 60s
guest: {memory: 256MiB, fill: 1.0, workload: {dirty-rate: 8MiB/s, pattern: uniform}}
parameters: {max-bandwidth: 16MiB}
expect: {source: completed, destination: completed}
"""

POSTCOPY = """\
name: lifecycle
seed: 5
timeout: 60s
guest: {memory: 256MiB, fill: 1.0, workload: {dirty-rate: 16MiB/s}}
capabilities: {postcopy-ram: true}
parameters: {max-bandwidth: 64MiB, max-postcopy-bandwidth: 4MiB}
steps:
  - on: {status: {peer: source, is: active}}
    do: migrate-start-postcopy
  - on: {event: page-request, count: 1000000}  # never: it only puts the proxy in between
    fault: {kind: net.blackhole, duration: 1s}
expect: {source: completed, destination: completed}
"""

QUICK = """\
name: quick
seed: 4
timeout: 60s
guest: {memory: 16MiB, fill: 0.5}
expect: {source: completed, destination: completed, memory: identical}
"""


class Run:
    """`harness run FILE --json REPORT` in the background, with its output in files."""

    def __init__(self, tmp: Path, scenario: str, *extra: str) -> None:
        self.tmp = tmp
        self.work = tmp / "work"
        self.report = tmp / "report.json"
        path = tmp / "scenario.yaml"
        path.write_text(scenario)
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness", "run", str(path), "--json", str(self.report),
                 *extra], stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO,
                env={**os.environ, "HARNESS_WORKDIR": str(self.work)})
        self.seen: dict[int, psutil.Process] = {}

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def wait_mid_migration(self, status: str = "active") -> None:
        """Until the source is in `status` and both peers have their workload process."""
        events = self.report.with_name("report.lifecycle.events.jsonl")
        deadline = time.monotonic() + DEADLINE
        while True:
            assert self.proc.poll() is None, f"the run ended early:\n{self.output()}"
            assert time.monotonic() < deadline, f"never mid-migration:\n{self.output()}"
            text = events.read_text() if events.exists() else ""
            workloads = [p for p in self.descendants() if _is_workload(p)]
            if _source_status_seen(text, status) and len(workloads) == 2:
                self.descendants()
                return
            time.sleep(0.1)

    def peer_pids(self) -> list[int]:
        return [pid for pid, p in self.seen.items() if _cmdline_has(p, "-m harness source")
                or _cmdline_has(p, "-m harness destination")]

    def reap(self) -> None:
        """On any path: kill what is left of the tree, reap the runner."""
        for proc in [*self.seen.values(), *self.descendants()]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.proc.kill()
        self.proc.wait(timeout=DEADLINE)


def _cmdline_has(proc: psutil.Process, text: str) -> bool:
    try:
        return text in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _is_workload(proc: psutil.Process) -> bool:
    return _cmdline_has(proc, "harness.guest.workload")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie waiting for its reaper counts as gone)."""
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def _all_gone(procs: list[psutil.Process], timeout: float = DEADLINE) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(procs)


def _socket_dirs(owner: int) -> list[Path]:
    return sorted(Path("/tmp").glob(f"mh*-{owner}-*"))


@pytest.mark.parametrize("scenario,status", [(SLOW, "active"), (POSTCOPY, "postcopy-active")],
                         ids=["precopy", "postcopy-with-proxy"])
def test_a_runner_killed_mid_migration_leaves_nothing_running_and_the_next_run_sweeps(
        tmp_path, scenario, status):
    run = Run(tmp_path, scenario)
    try:
        run.wait_mid_migration(status)
        tree = list(run.seen.values())
        kinds = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "resource_tracker" in kinds  # both peers' trackers are part of what must go
        assert ("-m harness proxy" in kinds) is (scenario is POSTCOPY)
        peers = run.peer_pids()
        assert len(peers) == 2
        assert _socket_dirs(run.proc.pid)  # the control sockets' directories, named after it
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(timeout=DEADLINE)
        left = _all_gone(tree)
        assert not left, [" ".join(p.cmdline()[:4]) for p in left]
        # the next run (any scenario) sweeps what the dead one left in /tmp and /dev/shm
        (tmp_path / "next").mkdir()
        nxt = Run(tmp_path / "next", QUICK)
        try:
            assert nxt.proc.wait(timeout=4 * DEADLINE) == 0, nxt.output()
        finally:
            nxt.reap()
        assert _socket_dirs(run.proc.pid) == []
        assert [s for pid in peers for s in leftover_segments(pid)] == []
    finally:
        run.reap()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_sigterm_and_sighup_end_the_run_as_interrupted_and_reap_everything(tmp_path, sig):
    run = Run(tmp_path, SLOW)
    try:
        run.wait_mid_migration()
        tree = list(run.seen.values())
        run.proc.send_signal(sig)
        code = run.proc.wait(timeout=DEADLINE)
        out = run.output()
        assert code == 3, out
        assert f"harness run: interrupted by {signal.Signals(sig).name}" in out
        [sc] = json.loads(run.report.read_text())["scenarios"]
        assert (sc["verdict"], sc["reason"]) == ("error", "interrupted")
        assert sc["source"]["status"] == "active"  # what it said last
        workdir = Path(sc["workdir"])
        assert f"  workdir: {workdir}\n" in out
        assert workdir.parent == run.work and (workdir / "source.log").is_file()
        assert (workdir / "control.json").is_file()
        assert not _alive(tree), "the runner exited before reaping its processes"
        assert _socket_dirs(run.proc.pid) == []
        events = run.report.with_name("report.lifecycle.events.jsonl").read_text()
        assert f'"signal": "{signal.Signals(sig).name}"' in events
    finally:
        run.reap()


@pytest.mark.parametrize("extra", [(), ("--record",)])
def test_a_passing_run_keeps_a_work_directory_only_with_record(tmp_path, extra):
    run = Run(tmp_path, QUICK, *extra)
    try:
        code = run.proc.wait(timeout=4 * DEADLINE)
        out = run.output()
        assert code == 0, out
        [sc] = json.loads(run.report.read_text())["scenarios"]
        kept = sorted(run.work.iterdir())
        if extra:
            assert [Path(sc["workdir"])] == kept
            assert f"  workdir: {sc['workdir']}\n" in out
            assert (kept[0] / "stream.fwd.bin").is_file()
        else:
            assert (kept, sc["workdir"]) == ([], None)
            assert "workdir:" not in out
            assert Path(sc["events"]).is_file()  # beside the report
    finally:
        run.reap()


def test_a_passing_run_without_json_leaves_nothing_behind(tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text(QUICK)
    work = tmp_path / "work"
    out = subprocess.run([sys.executable, "-m", "harness", "run", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=4 * DEADLINE, check=False,
                         env={**os.environ, "HARNESS_WORKDIR": str(work)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(work.iterdir()) == []  # no event log either: nobody asked for one
    assert "workdir:" not in out.stdout
    assert "event log:" not in out.stdout


def test_abandon_kills_and_reaps_what_a_run_cut_short_in_its_close_started(tmp_path):
    """A signal inside the coordinator's own close: `abandon` still leaves nothing."""
    from harness.runner.coordinator import Coordinator
    from harness.scenario import load_scenarios

    path = tmp_path / "quick.yaml"
    path.write_text(QUICK)
    [scenario] = load_scenarios([path])
    coordinator = Coordinator(scenario, tmp_path)
    try:
        coordinator._start_peers()
        peers = [psutil.Process(p.pid) for p in coordinator._peers() if p.pid is not None]
        tree = peers + [c for p in peers for c in p.children(recursive=True)]
        assert len(peers) == 2
        coordinator.abandon()
        assert not _alive(tree)
        assert [p.alive() for p in coordinator._peers()] == [False, False]
        assert not any(p._sockdir.exists() for p in coordinator._peers())  # type: ignore
    finally:
        coordinator.abandon()


def _source_status_seen(events: str, status: str) -> bool:
    """Whether the run's event log has the source reporting `status` (whole lines only:
    the log may be read while a line is being written)."""
    for line in events.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        entry = json.loads(line)
        if entry["peer"] == "source" and entry["name"] == "MIGRATION" \
                and entry["data"].get("status") == status:
            return True
    return False
