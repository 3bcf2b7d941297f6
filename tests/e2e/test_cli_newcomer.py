"""A newcomer's first hour with the command line (issue 12, section 4).

`harness --version`, peers started by hand (bad --incoming -> one line and exit 2; --qmp
alone is enough and the peer says where it listens), `harness run` piped into grep (a
verdict and its reason on one line, printed once, no Python reprs), `harness run DIR`
skipping a scenario that needs agents, the JSON report's schema-version and provenance,
the HTML report's scenario and provenance, and help text with real metavars.
Every process is started through `_spawn` and reaped in a finally, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import __version__

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
HARNESS = [sys.executable, "-m", "harness"]
DEADLINE = 120.0  # a subprocess that takes longer hangs: the test fails, it does not wait

FAILING = """\
name: wrong-expect
description: |
  1. A 4 MiB idle guest migrates over TCP; its bandwidth is raised after pass 1.
  Expected (wrongly, on purpose): the source fails.
guest: {memory: 4MiB}
steps:
  - on: {pass: 1}
    do: {migrate-set-parameters: {max-bandwidth: 1GiB}}
expect:
  source: failed
  memory: identical
"""


def _run(args: list[str], env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=DEADLINE, stdin=subprocess.DEVNULL, env=env, check=False)


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "╭" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _shm_of(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"mh-guest-{pid}-")]


@pytest.fixture
def short_dir() -> Iterator[str]:
    """Unix socket paths are limited to 107 bytes: pytest's tmp_path may be longer."""
    path = tempfile.mkdtemp(prefix="mhn", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_version_without_a_command() -> None:
    proc = _run(["--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"migration-harness {__version__}"


def test_no_command_prints_the_help() -> None:
    proc = _run([])
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "run" in proc.stdout


def test_help_shows_real_metavars() -> None:
    for command in (["run"], ["destination"], ["source"], []):
        proc = _run([*command, "--help"], env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0, proc.stderr
        for bad in ("<bool>", "<int>", "<str>", "list[", "Path]"):
            assert bad not in proc.stdout, f"harness {' '.join(command)} --help: {bad}"


def test_busy_incoming_port_is_one_line_exit_2(short_dir: str) -> None:
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.Popen(
            [*HARNESS, "destination", "--control", f"ipc://{short_dir}/d.ctl",
             "--incoming", f"tcp:127.0.0.1:{port}"], cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=DEADLINE)
        finally:
            _reap(proc)
    finally:
        busy.close()
    assert proc.returncode == 2, stderr
    line = _one_line(stderr)
    assert line.startswith(f"harness destination: --incoming tcp:127.0.0.1:{port}: "), line
    assert "in use" in line.lower()
    assert _shm_of(proc.pid) == []  # its guest memory went with it


@pytest.mark.parametrize("uri, words", [("tcp:nohost", "expected tcp:HOST:PORT"),
                                        ("tcp:nohost.invalid:4444", "nohost.invalid")])
def test_bad_incoming_host_is_one_line_exit_2(short_dir: str, uri: str, words: str) -> None:
    proc = _run(["destination", "--control", f"ipc://{short_dir}/d.ctl", "--incoming", uri])
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith(f"harness destination: --incoming {uri}: ") and words in line


@pytest.mark.parametrize("args, words", [
    (["run", "--seed", "x", "a.yaml"], "run: Invalid value for '--seed'"),
    (["nosuch"], "harness: No such command 'nosuch'"),
    (["source", "--bogus"], "source: No such option: --bogus")])
def test_usage_errors_are_one_line_exit_2(args: list[str], words: str) -> None:
    proc = _run(args)
    assert proc.returncode == 2, proc.stderr
    assert words in _one_line(proc.stderr)


@pytest.mark.parametrize("guest, words", [("[]", "expected a JSON object"),
                                           ('{"blocks": [{"name": "ram"}]}', "'size' is missing"),
                                           ('{"workload": {"bogus": 1}}', "bogus")])
def test_bad_guest_json_is_one_line_exit_2(short_dir: str, guest: str, words: str) -> None:
    proc = _run(["source", "--control", f"ipc://{short_dir}/s.ctl", "--guest-json", guest])
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("harness source: --guest-json: ") and words in line


def test_bad_guest_option_names_no_guest_json(short_dir: str) -> None:
    proc = _run(["source", "--control", f"ipc://{short_dir}/s.ctl", "--pattern", "bogus",
                 "--dirty-rate", "1MiB/s"])
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "pattern" in line and "bogus" in line and "--guest-json" not in line


@pytest.mark.parametrize("role", ["source", "destination"])
def test_a_peer_needs_control_or_qmp(role: str) -> None:
    proc = _run([role])
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert "--control" in line and "--qmp" in line


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _lines_until(proc: subprocess.Popen[str], count: int) -> list[str]:
    """The peer's first `count` stdout lines (it prints them once it serves)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + DEADLINE
    os.set_blocking(proc.stdout.fileno(), False)
    while len(lines) < count:
        if time.monotonic() > deadline or proc.poll() is not None:
            pytest.fail(f"the peer printed {lines} and then nothing (exit {proc.poll()})")
        line = proc.stdout.readline()
        if line:
            lines.append(line.rstrip("\n"))
        else:
            time.sleep(0.05)
    return lines


def test_qmp_alone_runs_a_peer_that_says_where_it_listens(short_dir: str) -> None:
    from qemu.qmp import QMPClient

    qmp_path = f"{short_dir}/d.qmp"
    proc = subprocess.Popen(
        [*HARNESS, "destination", "--qmp", f"unix:{qmp_path}", "--incoming", "tcp:127.0.0.1:0"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        lines = _lines_until(proc, 2)
        assert lines[0] == f"harness destination: QMP listening on unix:{qmp_path}"
        match = re.fullmatch(r"harness destination: incoming listening on tcp:127\.0\.0\.1:(\d+)",
                             lines[1])
        assert match and int(match[1]) > 0, lines

        async def talk() -> tuple[object, object]:
            client = QMPClient("newcomer")
            await asyncio.wait_for(client.connect(qmp_path), 30)
            try:
                status = await asyncio.wait_for(client.execute("query-status"), 30)
                migrate = await asyncio.wait_for(client.execute("query-migrate"), 30)
                await asyncio.wait_for(client.execute("quit"), 30)
            finally:
                try:
                    await client.disconnect()
                except EOFError:  # the peer hung up after quit first, as QEMU may
                    pass
            return status, migrate

        status, migrate = asyncio.run(talk())
        assert isinstance(status, dict) and status["status"] == "inmigrate"
        assert isinstance(migrate, dict)
        assert migrate["socket-address"][0]["port"] == match[1]
        assert proc.wait(timeout=30) == 0
    finally:
        _reap(proc)


@pytest.fixture(scope="module")
def failed_run() -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    """One `harness run` of a scenario that fails, stdout a pipe, with --json and --html."""
    tmp = Path(tempfile.mkdtemp(prefix="mhn-run-"))
    try:
        (tmp / "wrong-expect.yaml").write_text(FAILING)
        proc = _run(["run", str(tmp / "wrong-expect.yaml"), "--json", str(tmp / "r.json"),
                     "--html", str(tmp / "r.html")],
                    env={**os.environ, "COLUMNS": "80", "HARNESS_WORKDIR": str(tmp / "work")})
        yield proc, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_piped_verdict_is_one_greppable_line_printed_once(
        failed_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = failed_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    verdicts = [line for line in proc.stdout.splitlines() if ": FAIL" in line]
    assert len(verdicts) == 1, proc.stdout
    assert verdicts[0].startswith("wrong-expect (") and verdicts[0].endswith(
        "FAIL - source-status: source ended completed, expected failed"), verdicts[0]
    assert "timeline (seconds since migrate):" in proc.stdout
    assert any(re.match(r"\s+0\.000s\s+runner\s+migrate uri tcp:", line)
               for line in proc.stdout.splitlines()), proc.stdout
    for repr_ in ("None", "{'", "reason="):
        assert repr_ not in proc.stdout, repr_
    assert max(len(line) for line in proc.stdout.splitlines()) > 80  # not wrapped at 80


def test_json_report_has_schema_version_and_provenance(
        failed_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, tmp = failed_run
    doc = json.loads((tmp / "r.json").read_text())
    assert doc["schema-version"] == 1
    assert doc["harness-version"] == __version__
    prov = doc["provenance"]
    assert prov["hostname"] == socket.gethostname()
    assert prov["kernel"] == os.uname().release
    assert prov["qemu-version"] is None  # no QEMU peer ran
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]), prov
    sc = doc["scenarios"][0]["scenario"]
    assert sc["description"].startswith("1. A 4 MiB idle guest")
    assert sc["steps"] == [{"on": {"pass": 1},
                            "do": {"migrate-set-parameters": {"max-bandwidth": 1 << 30}}}]
    assert sc["expect"] == {"source": "failed", "memory": "identical"}


def test_html_report_shows_the_scenario_and_provenance(
        failed_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, tmp = failed_run
    page = (tmp / "r.html").read_text()
    assert "1. A 4 MiB idle guest migrates over TCP; its bandwidth is raised after pass 1." \
        in page
    assert "<h3>Steps</h3>" in page and "<td>pass: 1</td><td>migrate-set-parameters" in page
    assert "<td>source</td><td>failed</td>" in page
    assert "Provenance" in page and f"harness {__version__}" in page
    assert f"host {socket.gethostname()}" in page and f"kernel {os.uname().release}" in page


def test_run_dir_skips_a_scenario_that_needs_agents(tmp_path: Path) -> None:
    shutil.copy(REPO / "scenarios" / "multihost-postcopy.yaml", tmp_path)
    report = tmp_path / "r.json"
    proc = _run(["run", str(tmp_path), "--json", str(report)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIP ")]
    assert len(skips) == 1, proc.stdout
    assert skips[0].startswith("SKIP multihost-postcopy (")
    assert "needs hosts (agents): a at tcp://198.18.0.2:7340" in skips[0]
    doc = json.loads(report.read_text())
    assert [sc["verdict"] for sc in doc["scenarios"]] == ["skip"]
    assert doc["scenarios"][0]["source"]["status"] == "none"  # nothing was started


def test_piped_comparison_is_not_cut_at_80_columns(
        failed_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, tmp = failed_run
    label = "a-rather-long-report-name-of-the-nightly-run"
    for n in (1, 2):
        shutil.copy(tmp / "r.json", tmp / f"{label}-{n}.json")
    proc = _run(["report", str(tmp / f"{label}-1.json"), str(tmp / f"{label}-2.json")],
                env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert f"{label}-1.json" in proc.stdout and f"{label}-2.json" in proc.stdout, proc.stdout
