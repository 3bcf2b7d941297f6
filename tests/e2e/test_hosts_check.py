"""`harness hosts check INVENTORY` and the host's `workdir:` against a real agent on loopback.

Real processes: an agent (`harness agent --bind tcp://127.0.0.1:0`, AgentProcess) and the
`harness hosts check` command line; the agent gathers its facts with `agent-preflight`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import __version__
from harness.control import ControlError
from harness.runner.agents import AgentConnection
from harness.scenario.model import Host
from tests.conftest import REPO
from tests.e2e.test_agent import AgentProcess

PRECOPY = REPO / "scenarios" / "precopy.yaml"
QEMU_SOURCE = REPO / "scenarios" / "precopy-qemu-source.yaml"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    started = AgentProcess("--workdir", str(tmp_path_factory.mktemp("agent")))
    try:
        yield started
    finally:
        started.close()


def _check(tmp_path: Path, hosts: str, *scenarios: Path, timeout: str = "5"
           ) -> tuple[int, str, dict]:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"hosts:\n{hosts}")
    report = tmp_path / "check.json"
    args = [arg for path in scenarios for arg in ("--scenarios", str(path))]
    done = subprocess.run([sys.executable, "-m", "harness", "hosts", "check", str(inventory),
                           "--json", str(report), "--timeout", timeout, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    data = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, done.stdout + done.stderr, data


def test_a_host_that_can_run_the_scenarios_passes_with_its_table(agent, tmp_path):
    code, output, data = _check(tmp_path, f"  here: {{agent: '{agent.url}'}}\n", PRECOPY)
    assert code == 0, output
    assert "harness hosts check" in output and agent.url in output
    host = data["hosts"]["here"]
    assert host["reachable"] and host["version"] == __version__
    assert host["facts"]["cores"] == len(os.sched_getaffinity(0))
    assert host["facts"]["memory-available"] > 0
    assert abs(host["clock"]["offset"]) < 0.05  # the same machine's clock
    assert set(host["facts"]) >= {"kvm", "userfaultfd", "qemu", "tbf", "netem", "net-admin"}
    assert all(not need["blocks"] for need in host["lacks"].values())


def test_a_missing_qemu_binary_names_the_scenarios_it_blocks(agent, tmp_path):
    hosts = f"  here: {{agent: '{agent.url}', qemu: /nonexistent/qemu-system-x86_64}}\n"
    code, output, data = _check(tmp_path, hosts, PRECOPY, QEMU_SOURCE)
    assert code == 1, output
    lacks = data["hosts"]["here"]["lacks"]["qemu"]
    assert lacks["blocks"] == ["precopy-qemu-source"]
    assert "/nonexistent/qemu-system-x86_64" in lacks["detail"]
    assert "host here lacks qemu" in output and "blocks precopy-qemu-source" in output


def test_no_agent_is_exit_3_naming_the_host(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, output, data = _check(tmp_path, f"  gone: {{agent: 'tcp://127.0.0.1:{port}'}}\n",
                                PRECOPY, timeout="1")
    assert code == 3, output
    assert data["hosts"]["gone"]["reachable"] is False
    assert "host gone: unreachable: agent gone at tcp://127.0.0.1:" in output
    assert "did not answer within 1 s" in output


def test_a_bad_keys_directory_is_exit_3_naming_it(agent, tmp_path):
    code, output, data = _check(tmp_path, f"  here: {{agent: '{agent.url}', keys: nokeys}}\n",
                                PRECOPY)
    assert code == 3, output
    assert f"{tmp_path}/nokeys" in data["hosts"]["here"]["error"]
    assert "unreachable" in output


def test_the_hosts_workdir_holds_the_runs_directory_only_when_it_is_safe(agent, tmp_path):
    good = tmp_path / "work"
    good.mkdir(mode=0o700)
    conn = AgentConnection("here", Host(agent=agent.url, workdir=good), "wd-run-1")
    try:
        reply = conn.connect()
        assert Path(reply["run-dir"]) == good / "runs" / "wd-run-1"
        conn.end_run()
    finally:
        conn.client.close()
    shared = tmp_path / "open-to-all"
    shared.mkdir()
    shared.chmod(0o777)
    conn = AgentConnection("here", Host(agent=agent.url, workdir=shared), "wd-run-2")
    try:
        with pytest.raises(ControlError, match=f"workdir {shared} is group- or "
                                               "world-writable"):
            conn.connect()
    finally:
        conn.client.close()
    assert not (shared / "runs").exists()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_place_without_hosts_and_an_unknown_host_are_refused_before_anything_runs(tmp_path):
    done = _run("--place", "source=a,destination=b", str(PRECOPY))
    assert done.returncode == 2
    assert done.stderr.strip() == ("harness run: --place source=a,destination=b: needs "
                                   "--hosts INVENTORY (the hosts it names are the "
                                   "inventory's)")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  h1: {agent: 'tcp://127.0.0.1:9'}\n")
    done = _run("--hosts", str(inventory), "--place", "source=h1,destination=zz", str(PRECOPY))
    assert done.returncode == 2, done.stderr
    assert f"{inventory}: --place destination=zz: 'zz' is not a host of this inventory " \
           "(hosts: h1)" in done.stderr
    assert "Traceback" not in done.stderr
