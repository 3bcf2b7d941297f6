"""Agents: peers placed on hosts through `harness agent`, driven by `harness run`.

Real processes and sockets throughout: each test starts its own agents (`harness agent
--bind tcp://127.0.0.1:0`, the bound port read from its first line), runs scenarios with
`hosts:` through the `harness run` command line or talks to an agent with the runner's own
`AgentConnection`, and kills agents and runners with real signals.  Every process a test
starts is reaped, and every peer an agent started is looked for with psutil afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.control import CommandError
from harness.runner.agent_peer import AgentPeer
from harness.runner.agents import CONNECT_TIMEOUT, AgentConnection
from harness.scenario.model import Host
from tests.conftest import REPO

GUEST = {"machine": "none", "seed": 1, "fill": 0.5,
         "blocks": [{"name": "ram", "size": 32 << 20}], "devices": ["timer", "globalstate"],
         "workload": None}


class AgentProcess:
    """`harness agent` in a session of its own; `close` reaps it and every peer it ran."""

    def __init__(self, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        argv = [*prefix, sys.executable, "-m", "harness", "agent", *args]
        if not any(a.startswith("--bind") for a in args):
            argv += ["--bind", "tcp://127.0.0.1:0"]
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        self.seen: set[int] = set()  # every peer pid seen (checked gone at close)
        self.url = self._read_address()

    def _read_address(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            try:
                text += os.read(fd, 65536).decode(errors="replace")
            except BlockingIOError:
                pass
            if "listening on " in text:
                return text.split("listening on ", 1)[1].split()[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.close()
        raise AssertionError(f"the agent did not start: {text}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peers(self) -> list[psutil.Process]:
        """The agent's children (its peers), remembered for the final check."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        self.seen.update(c.pid for c in children)
        return children

    def close(self) -> None:
        self.peers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        for pid in self.seen:  # a peer outliving a failed test: its whole session goes
            with_session_killed(pid)


def with_session_killed(pid: int) -> None:
    for proc in psutil.process_iter():
        try:
            if proc.pid == pid or os.getsid(proc.pid) == pid:
                proc.kill()
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue


def gone(pids: set[int] | list[int], timeout: float) -> bool:
    """Whether every pid has ended (zombies count as ended) within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def agent_pair(tmp: Path, orphan_grace: float) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    try:
        started += [AgentProcess("--orphan-grace", f"{orphan_grace:g}", "--workdir",
                                 str(tmp / name)) for name in ("agent-a", "agent-b")]
        yield started
    finally:
        for agent in started:
            agent.close()


@pytest.fixture
def agents(tmp_path) -> Iterator[list[AgentProcess]]:
    with agent_pair(tmp_path, orphan_grace=2) as started:
        yield started


def scenario(tmp: Path, name: str, agents: list[AgentProcess], body: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\nhosts:\n  a: {{agent: \"{agents[0].url}\"}}\n"
                    f"  b: {{agent: \"{agents[1].url}\"}}\nsource: {{host: a}}\n"
                    f"destination: {{host: b}}\n" + body)
    return path


def harness_run(*files: Path, tmp: Path) -> tuple[int, dict, str]:
    out = tmp / "report.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", *map(str, files), "--json",
                           str(out)], capture_output=True, text=True, timeout=180, cwd=REPO,
                          check=False, env={**os.environ, "HARNESS_WORKDIR": str(tmp / "work")})
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, report, proc.stdout + proc.stderr


PRECOPY = """\
seed: 3
timeout: 60s
guest: {memory: 32MiB, fill: 0.5, workload: {dirty-rate: 8MiB/s, pattern: hotset, hotset: 4MiB}}
parameters: {max-bandwidth: 64MiB}
expect: {source: completed, destination: completed, memory: identical, guest-runs-on: destination}
"""

POSTCOPY = """\
seed: 4
timeout: 60s
guest: {memory: 32MiB, fill: 0.5, workload: {dirty-rate: 64MiB/s, pattern: hotset, hotset: 8MiB}}
capabilities: {postcopy-ram: true}
parameters: {max-bandwidth: 16MiB, max-postcopy-bandwidth: 4MiB}
steps:
  - on: {pass: 2}
    do: migrate-start-postcopy
expect: {source: completed, destination: completed, memory: identical, guest-runs-on: destination}
"""


#: a host whose clock is off: every Python clock read of the agent and of the peers it
#: starts (they inherit the environment) is shifted, as on a host with a wrong time
SKEWED_CLOCK = """\
import os, time
_skew = float(os.environ.get("MH_TEST_CLOCK_SKEW", "0"))
if _skew:
    _real_time = time.time
    time.time = lambda: _real_time() + _skew
"""
SKEW = -30.0
CLOCK_MARGIN = 1e-3  # s: the report's rounding to µs, float error at epoch magnitudes


@pytest.fixture
def skewed_agents(tmp_path) -> Iterator[list[AgentProcess]]:
    """Agent a on this host's clock; agent b (the destination's) 30 s behind it."""
    site = tmp_path / "skewed-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SKEWED_CLOCK)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
           "MH_TEST_CLOCK_SKEW": str(SKEW)}
    started: list[AgentProcess] = []
    try:
        started += [AgentProcess("--workdir", str(tmp_path / "agent-a")),
                    AgentProcess("--workdir", str(tmp_path / "agent-b"), env=env)]
        yield started
    finally:
        for agent in started:
            agent.close()


def test_precopy_and_postcopy_between_two_agents(skewed_agents, tmp_path):
    agents = skewed_agents
    files = [scenario(tmp_path, "across-precopy", agents, PRECOPY),
             scenario(tmp_path, "across-postcopy", agents, POSTCOPY)]
    code, report, output = harness_run(*files, tmp=tmp_path)
    assert code == 0, output
    for sc in report["scenarios"]:
        assert sc["verdict"] == "pass", sc["reason"]
        checks = {i["name"]: i for i in sc["invariants"]}
        assert checks["memory-identical"]["ok"] and "pages equal" in \
            checks["memory-identical"]["detail"]
        assert checks["no-leftover-processes"]["ok"]
        started = {t["peer"]: t["data"] for t in sc["timeline"] if t["name"] == "started"}
        assert started["source"]["host"] == "a" and started["destination"]["host"] == "b"
        # the peers were the agents' children, not the runner's, and are gone
        for role, agent in (("source", agents[0]), ("destination", agents[1])):
            assert started[role]["pid"] != agent.pid
            assert not _alive(started[role]["pid"])
        for name, agent in zip("ab", agents):
            host = sc["hosts"][name]
            assert host["agent"] == agent.url and host["state"] == "closed"
            assert host["facts"]["agent-pid"] == agent.pid
            assert host["facts"]["cpu-count"] >= 1 and host["facts"]["memory-total"] > 0
            assert host["facts"]["hostname"] and host["facts"]["kernel"]
            assert host["clock"]["rtt"] > 0
            # NTP's bound: the agent read its clock within the round trip, so the offset is
            # the true one within rtt/2 (+ the report's µs rounding); decisive only while
            # that stays far below the skew
            assert host["clock"]["rtt"] / 2 + CLOCK_MARGIN < abs(SKEW) / 4, host["clock"]
            assert host["leftovers"] == []
        # one clock on host a, 30 s behind on host b
        for name, true_offset in (("a", 0.0), ("b", SKEW)):
            clock = sc["hosts"][name]["clock"]
            assert abs(clock["offset"] - true_offset) <= clock["rtt"] / 2 + CLOCK_MARGIN, clock
        # the timeline is in the runner's time: the destination resumed the guest after the
        # source stopped it (unconverted, its RESUME would be 30 s early: a split brain)
        assert checks["one-runner"]["ok"], checks["one-runner"]["detail"]
        stop = next(t["at"] for t in sc["timeline"]
                    if (t["peer"], t["name"]) == ("source", "STOP"))
        resume = next(t["at"] for t in sc["timeline"]
                      if (t["peer"], t["name"]) == ("destination", "RESUME"))
        assert 0 < resume - stop < abs(SKEW) / 2  # a twice-converted RESUME is 30 s late
        assert sc["stats"]["ram"]["normal"] > 0
    postcopy = report["scenarios"][1]
    assert "postcopy-active" in postcopy["destination"]["statuses"]
    assert postcopy["destination-stats"]["x-postcopy"]["requests"] > 0


KILL_DESTINATION = """\
seed: 5
timeout: 60s
guest: {memory: 32MiB, fill: 0.5, workload: {dirty-rate: 32MiB/s, pattern: hotset, hotset: 4MiB}}
parameters: {max-bandwidth: 8MiB}
steps:
  - on: {pass: 2}
    fault: {kind: kill, target: destination}
expect: {source: failed, memory: source-intact, guest-runs-on: source}
"""


FREEZE_SOURCE = """\
seed: 7
timeout: 60s
guest: {memory: 32MiB, fill: 0.5, workload: {dirty-rate: 8MiB/s, pattern: hotset, hotset: 4MiB}}
parameters: {max-bandwidth: 16MiB}
steps:
  - on: {pass: 1}
    fault: {kind: stop, target: source, duration: 1s}
expect: {source: completed, destination: completed, memory: identical}
"""


def test_process_faults_on_remote_peers_go_through_their_agents(agents, tmp_path):
    code, report, output = harness_run(
        scenario(tmp_path, "remote-kill", agents, KILL_DESTINATION),
        scenario(tmp_path, "remote-freeze", agents, FREEZE_SOURCE), tmp=tmp_path)
    assert code == 0, output
    sc, frozen = report["scenarios"]
    assert frozen["verdict"] == "pass", frozen["reason"]
    [stop] = frozen["faults"]
    assert (stop["kind"], stop["detail"]["host"], stop["detail"]["duration"]) == ("stop", "a",
                                                                                1.0)
    [thawed] = [t for t in frozen["timeline"] if t["name"] == "thawed"]
    assert sorted(thawed["data"]["pids"]) == sorted(stop["detail"]["pids"])
    assert sc["verdict"] == "pass", sc["reason"]
    [fault] = sc["faults"]
    assert (fault["kind"], fault["target"], fault["detail"]["host"]) == ("kill", "destination",
                                                                          "b")
    started = {t["peer"]: t["data"]["pid"] for t in sc["timeline"] if t["name"] == "started"}
    assert started["destination"] in fault["detail"]["pids"]
    assert sc["destination"]["exit-code"] == -signal.SIGKILL
    assert sc["source"]["status"] == "failed"


SLOW_TIMEOUT = 90.0
SLOW = f"""\
seed: 6
timeout: {SLOW_TIMEOUT:g}s
guest: {{memory: 64MiB, fill: 1.0}}
parameters: {{max-bandwidth: 4MiB}}
expect: {{source: completed, destination: completed, memory: identical}}
"""


def _start_run(path: Path, tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    report = tmp / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--json",
                             str(report)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "HARNESS_WORKDIR": str(tmp / "work")})
    return proc, report.with_name(f"report.{path.stem}.events.jsonl")


def _await_event(log: Path, name: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and any(json.loads(line)["name"] == name
                                for line in log.read_text().splitlines() if line.strip()):
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    raise AssertionError(f"no {name} in {log} within {timeout} s")


def _reap(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate(timeout=30)[0]


def test_an_agent_killed_mid_run_is_a_reported_error_not_a_hang(agents, tmp_path):
    path = scenario(tmp_path, "agent-dies", agents, SLOW)
    proc, log = _start_run(path, tmp_path)
    try:
        _await_event(log, "migrate", proc, timeout=60)
        peers = {p.pid for a in agents for p in a.peers()}
        assert len(peers) == 2
        time.sleep(0.5)  # the stream is flowing (64 MiB at 4 MiB/s: 16 s to go)
        agents[1].proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=SLOW_TIMEOUT + 30)
        took = time.monotonic() - killed_at
    finally:
        output = _reap(proc)
    report = json.loads((tmp_path / "report.json").read_text())
    [sc] = report["scenarios"]
    assert took < SLOW_TIMEOUT / 2, \
        f"the run took {took:.1f} s after the agent died (deadline {SLOW_TIMEOUT:g} s)"
    assert sc["verdict"] == "error", output
    assert sc["reason"].startswith(f"agent b ({agents[1].url}) died mid-run at "), sc["reason"]
    assert sc["hosts"]["b"]["state"] == "dead"
    assert "is lost: its agent b" in sc["destination"]["error"]
    names = [(t["peer"], t["name"]) for t in sc["timeline"]]
    assert ("agent:b", "agent-dead") in names
    # the destination died with its agent (PR_SET_PDEATHSIG), the source was stopped by
    # its own agent at the end of the run: nothing is left on either host
    assert gone(peers, timeout=10), [p for p in peers if _alive(p)]
    assert sc["hosts"]["a"]["leftovers"] == []


#: how long the frozen agent stays stopped: well past the runner's MISSING_AFTER (1.5 s),
#: well short of its DEAD_AFTER_SILENCE (15 s) and of the agent's own orphan grace below,
#: so that neither a slow runner nor the thawed agent's first look at its clock decides
FREEZE = 4.0


def test_a_frozen_agent_is_missing_then_back_not_dead(tmp_path):
    with agent_pair(tmp_path, orphan_grace=4 * FREEZE) as agents:
        path = scenario(tmp_path, "agent-frozen", agents, PRECOPY.replace("64MiB}", "16MiB}"))
        proc, log = _start_run(path, tmp_path)
        try:
            _await_event(log, "migrate", proc, timeout=60)
            os.kill(agents[1].pid, signal.SIGSTOP)  # the agent, not its peers: they go on
            time.sleep(FREEZE)
            os.kill(agents[1].pid, signal.SIGCONT)
            proc.wait(timeout=60)
        finally:
            os.kill(agents[1].pid, signal.SIGCONT)
            output = _reap(proc)
    [sc] = json.loads((tmp_path / "report.json").read_text())["scenarios"]
    assert sc["verdict"] == "pass", output
    changes = [t["name"] for t in sc["timeline"] if t["peer"] == "agent:b"]
    assert changes[:3] == ["agent-connected", "agent-missing", "agent-connected"], changes
    assert "agent-dead" not in changes
    assert sc["hosts"]["b"]["state"] == "closed"


ORPHAN_GRACE = 6.0  # long enough that a runner slowed before its death cannot shorten it much


def test_an_agent_stops_the_peers_of_a_runner_that_died(tmp_path):
    with agent_pair(tmp_path, orphan_grace=ORPHAN_GRACE) as agents:
        path = scenario(tmp_path, "runner-dies", agents, SLOW)
        proc, log = _start_run(path, tmp_path)
        try:
            _await_event(log, "migrate", proc, timeout=60)
            peers = {p.pid for a in agents for p in a.peers()}
            assert len(peers) == 2
            proc.send_signal(signal.SIGKILL)  # the runner alone: its agents outlive it
            proc.wait(timeout=10)
            died = time.monotonic()
            # the agents stop the peers after ORPHAN_GRACE s of silence, counted from the
            # runner's last heartbeat (due every 0.5 s; later on a busy machine)
            assert gone(peers, timeout=ORPHAN_GRACE + 15), [p for p in peers if _alive(p)]
            took = time.monotonic() - died
        finally:
            _reap(proc)
        assert ORPHAN_GRACE / 2 < took, took  # waited out the grace, did not stop at once
        assert all(a.proc.poll() is None for a in agents)  # the agents themselves go on


@pytest.fixture
def one_agent(tmp_path) -> Iterator[AgentProcess]:
    agent = AgentProcess("--orphan-grace", "5", "--workdir", str(tmp_path / "agent"))
    try:
        yield agent
    finally:
        agent.close()


def test_a_runner_that_reconnects_with_its_run_id_gets_its_peers_back(one_agent):
    host = Host(agent=one_agent.url)
    first = AgentConnection("h", host, "resync-run")
    second = other = None
    try:
        first.connect()
        peer = AgentPeer("destination", first, GUEST, incoming=True)
        peer.start()
        assert peer.runstate() == "inmigrate"
        first.client.close()  # the runner is gone without a word (as if killed)

        second = AgentConnection("h", host, "resync-run")
        reply = second.connect()
        assert reply["resynced"] is True
        [info] = reply["peers"]
        assert (info["peer"], info["state"], info["pid"]) == ("destination", "running",
                                                               peer.pid)
        again = AgentPeer.adopt(second, info)
        assert again.alive() and again.runstate() == "inmigrate"
        again.execute("migrate-set-capabilities",
                      {"capabilities": [{"capability": "events", "state": True}]})
        again.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        events = _events_until(again, "MIGRATION", timeout=10)
        assert events and events[-1].data == {"status": "setup"}

        other = AgentConnection("h", host, "another-run")
        fresh = other.connect()
        assert fresh["resynced"] is False and fresh["peers"] == []
    finally:
        for conn in (second, other):
            if conn is not None:
                conn.end_run()
        first.client.close()
    assert second.leftovers == []
    assert gone([peer.pid], timeout=10)


def _events_until(peer: AgentPeer, name: str, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    seen: list = []
    while time.monotonic() < deadline:
        seen += peer.poll_events()
        if any(e.name == name for e in seen):
            return [e for e in seen if e.name == name]
        time.sleep(0.02)
    return []


@pytest.mark.parametrize("uri", ["exec:cat /dev/null", "file:/tmp/mh-agent-file-test"])
def test_exec_and_file_uris_are_refused_unless_the_agent_allows_them(one_agent, uri):
    conn = AgentConnection("h", Host(agent=one_agent.url), f"exec-{uri[:4]}")
    try:
        conn.connect()
        peer = AgentPeer("destination", conn, GUEST, incoming=True)
        peer.start()
        with pytest.raises(CommandError) as refused:
            peer.execute("migrate-incoming", {"uri": uri})
        assert "--allow-exec" in refused.value.desc and uri in refused.value.desc
        assert peer.execute("query-migrate") == {} or \
            peer.execute("query-migrate").get("status") in (None, "none")
    finally:
        conn.end_run()


def test_an_agent_started_with_allow_exec_passes_exec_uris_on():
    agent = AgentProcess("--allow-exec")
    conn = AgentConnection("h", Host(agent=agent.url), "exec-allowed")
    try:
        conn.connect()
        peer = AgentPeer("destination", conn, GUEST, incoming=True)
        peer.start()
        peer.execute("migrate-incoming", {"uri": "exec:cat /dev/null"})  # accepted
    finally:
        conn.end_run()
        agent.close()


def test_steps_a_multi_host_run_cannot_carry_out_are_refused_before_anything_starts(tmp_path):
    hosts = "hosts:\n  a: {agent: 'tcp://127.0.0.1:9'}\n  b: {agent: 'tcp://127.0.0.1:9'}\n"
    cases = {
        "proxy-stranded": (hosts + "proxy: {host: a}\nsteps:\n"  # net.* across: fine now
                           "  - on: {pass: 1}\n    fault: {kind: net.reset}\n",
                           "proxy: host a with peers beside the runner"),
        "link-local": (hosts + "steps:\n  - on: {pass: 1}\n    fault: {kind: link.down, "
                       "host: a}\n", "a local run has no link to cut"),
        "mixed": (hosts + "source: {host: a}\n", "place both peers on hosts"),
        "unix-across": (hosts + "source: {host: a}\ndestination: {host: b}\n"
                        "transport: unix\n", "transport: unix with peers on hosts"),
    }
    files = []
    for name, (body, _) in cases.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(f"name: {name}\n{body}")
    started = time.monotonic()
    code, report, output = harness_run(*files, tmp=tmp_path)
    assert code == 3, output  # every one is an `error`: none could be carried out
    # no agent was ever contacted (port 9 is shut: each contact would wait CONNECT_TIMEOUT)
    assert time.monotonic() - started < len(cases) * CONNECT_TIMEOUT / 2
    for sc in report["scenarios"]:
        assert sc["verdict"] == "error"
        assert cases[sc["name"]][1] in sc["reason"], sc["reason"]
        assert [t["name"] for t in sc["timeline"]] == ["scenario", "verdict"], sc["timeline"]
        assert all(h["clock"] is None for h in sc["hosts"].values()), sc["hosts"]


ACROSS_NAMESPACES = """\
name: across-namespaces
seed: 8
timeout: 60s
hosts:
  a: {{agent: "{a}", keys: "{keys}"}}
  b: {{agent: "{b}", keys: "{keys}"}}
source: {{host: a}}
destination: {{host: b}}
guest: {{memory: 32MiB, fill: 0.5, workload: {{dirty-rate: 8MiB/s, pattern: hotset, hotset: 4MiB}}}}
parameters: {{max-bandwidth: 16MiB}}
steps:
  - on: {{pass: 1}}
    fault: {{kind: link.blackhole, host: b, duration: 1s}}
expect: {{source: completed, destination: completed, memory: identical}}
"""


def test_across_network_namespaces_with_keys_and_a_link_fault(tmp_path):
    """Three hosts on one link: the runner on 198.18.0.1, agents (CURVE, not loopback) on
    .2 and .3; the stream goes from .2 straight to .3, and host b's agent blackholes its
    route to a for 1 s, then heals it: the migration completes, memory identical."""
    from tests.netns import netns_lab

    keys = tmp_path / "keys"
    assert subprocess.run([sys.executable, "-m", "harness", "agent", "keygen", str(keys)],
                          cwd=REPO, capture_output=True, timeout=60, check=False).returncode == 0
    with netns_lab(3) as lab:
        runner, host_a, host_b = lab.hosts
        agents = []
        try:
            for host in (host_a, host_b):
                agents.append(AgentProcess(
                    "--bind", f"tcp://{host.address}:0", "--keys", str(keys),
                    prefix=("ip", "netns", "exec", host.ns)))
            path = tmp_path / "across-namespaces.yaml"
            path.write_text(ACROSS_NAMESPACES.format(a=agents[0].url, b=agents[1].url,
                                                     keys=keys))
            report = tmp_path / "report.json"
            done = lab.run_in(runner, [sys.executable, "-m", "harness", "run", str(path),
                                       "--json", str(report)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "HARNESS_WORKDIR": str(tmp_path / "work")})
            output = done.communicate(timeout=120)[0]
        finally:
            for agent in agents:
                agent.close()
    assert done.returncode == 0, output
    [sc] = json.loads(report.read_text())["scenarios"]
    assert sc["verdict"] == "pass", sc["reason"]
    migrate = next(t for t in sc["timeline"] if t["name"] == "migrate")
    assert migrate["data"]["uri"].startswith(f"tcp:{host_b.address}:")
    [fault] = sc["faults"]
    assert (fault["kind"], fault["target"]) == ("link.blackhole", "host b")
    assert fault["detail"]["toward"] == host_a.address
    undone = [t for t in sc["timeline"] if (t["peer"], t["name"]) == ("agent:b", "link-undone")]
    assert undone and "error" not in undone[0]["data"]
    assert {sc["hosts"][h]["address"] for h in "ab"} == {host_a.address, host_b.address}
