"""Multi-host runs on one machine: three network namespaces on one link (the runner on
198.18.0.1, agents with CURVE keys on .2 and .3), the migration stream straight from host
to host, and real link faults applied by the agents (`ip link`, blackhole routes, `tc tbf`).

The shipped scenarios/multihost-postcopy.yaml runs here unchanged: its agents' addresses
are the lab's.  Skipped with the reason when network namespaces cannot be made (not root,
no iproute2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_agent import AgentProcess, gone
from tests.netns import Lab, netns_lab

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "scenarios" / "multihost-postcopy.yaml"
PORT = 7340  # the agents' default port, as the shipped scenario names them
#: the two agent hosts, as a scenario written by a test names them
HOSTS = f"hosts:\n  a: {{agent: tcp://198.18.0.2:{PORT}}}\n  b: {{agent: tcp://198.18.0.3:{PORT}}}\n"

pytestmark = [pytest.mark.netns, pytest.mark.timeout(400)]


@dataclass
class World:
    lab: Lab
    keys: Path
    agents: list[AgentProcess]
    tmp: Path

    def run(self, scenario: Path, name: str, *extra: str) -> tuple[int, dict[str, Any], str]:
        """`harness run` from the runner's namespace; its exit code, scenario report, output."""
        report = self.tmp / f"{name}.json"
        proc = self.lab.run_in(
            self.lab.hosts[0], [sys.executable, "-m", "harness", "run", str(scenario), "--json",
                                str(report), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "HARNESS_AGENT_KEYS": str(self.keys),
                 "HARNESS_WORKDIR": str(self.tmp / name)})
        output = proc.communicate(timeout=300)[0]
        scenarios = json.loads(report.read_text())["scenarios"] if report.exists() else [{}]
        return proc.returncode, scenarios[0], output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("multihost")
    keys = tmp / "keys"
    made = subprocess.run([sys.executable, "-m", "harness", "agent", "keygen", str(keys)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    with netns_lab(3) as lab:
        agents: list[AgentProcess] = []
        try:
            for host in lab.hosts[1:]:
                agents.append(AgentProcess(
                    "--bind", f"tcp://{host.address}:{PORT}", "--keys", str(keys),
                    prefix=("ip", "netns", "exec", host.ns)))
            yield World(lab, keys, agents, tmp)
        finally:
            for agent in agents:
                agent.close()
    assert gone({pid for agent in agents for pid in agent.seen}, timeout=10)


def _scenario(world: World, name: str, body: str) -> Path:
    path = world.tmp / f"{name}.yaml"
    path.write_text(f"""\
name: {name}
seed: 31
timeout: 90s
hosts:
  a: {{agent: tcp://198.18.0.2:{PORT}}}
  b: {{agent: tcp://198.18.0.3:{PORT}}}
source: {{host: a}}
destination: {{host: b}}
{body}""")
    return path


def _timeline(sc: dict[str, Any], peer: str, name: str) -> list[dict[str, Any]]:
    return [t for t in sc["timeline"] if (t["peer"], t["name"]) == (peer, name)]


def test_the_shipped_multihost_postcopy_scenario_runs_across_namespaces(world):
    code, sc, output = world.run(SHIPPED, "shipped")
    assert code == 0, output
    [migrate] = [t for t in sc["timeline"] if t["name"] == "migrate"]
    assert migrate["data"]["uri"].startswith("tcp:198.18.0.3:")  # straight to host b
    assert "postcopy-active" in sc["source"]["statuses"]
    assert sc["stats"]["ram"]["postcopy-requests"] > 0
    [fault] = sc["faults"]
    assert (fault["kind"], fault["target"]) == ("link.bandwidth", "host a")
    assert fault["detail"]["toward"] == "198.18.0.3"
    [undone] = _timeline(sc, "agent:a", "link-undone")
    assert "error" not in undone["data"]
    assert {name: h["address"] for name, h in sc["hosts"].items()} == {
        "a": "198.18.0.2", "b": "198.18.0.3"}


def test_a_link_down_during_precopy_stalls_it_and_it_completes_once_up(world):
    path = _scenario(world, "link-down", """\
guest: {memory: 64MiB, fill: 0.5}
parameters: {max-bandwidth: 32MiB}
steps:
  - on: {pass: 1}
    fault: {kind: link.down, host: a, duration: 1s}
expect: {source: completed, destination: completed, memory: identical,
         guest-runs-on: destination}
""")
    code, sc, output = world.run(path, "link-down")
    assert code == 0, output
    [fault] = sc["faults"]
    assert fault["kind"] == "link.down"
    [undone] = _timeline(sc, "agent:a", "link-undone")
    assert undone["t"] - fault["t"] >= 1.0


def test_a_bandwidth_cap_on_the_source_host_bounds_the_whole_migration(world):
    # 32 MiB of page data, most of it through an 8 MiB/s token bucket (the agent applies it
    # a few ms into pass 1, when some MiB have gone): about 3 s; over the bare veth, well
    # under half a second
    path = _scenario(world, "link-bandwidth", """\
guest: {memory: 64MiB, fill: 0.5}
steps:
  - on: {pass: 1}
    fault: {kind: link.bandwidth, host: a, rate: 8MiB}
expect: {source: completed, destination: completed, memory: identical}
""")
    code, sc, output = world.run(path, "link-bandwidth")
    assert code == 0, output
    assert sc["stats"]["total-time"] >= 2000, sc["stats"]
    assert [f["kind"] for f in sc["faults"]] == ["link.bandwidth"]


def test_killing_the_remote_destination_leaves_the_guest_on_the_source(world):
    path = _scenario(world, "kill-destination", """\
guest: {memory: 64MiB, fill: 0.5, workload: {dirty-rate: 32MiB/s, pattern: hotset, hotset: 8MiB}}
parameters: {max-bandwidth: 16MiB}
steps:
  - on: {pass: 2}
    fault: {kind: kill, target: destination}
expect: {source: failed, memory: source-intact, guest-runs-on: source}
""")
    code, sc, output = world.run(path, "kill-destination")
    assert code == 0, output
    [fault] = sc["faults"]
    assert (fault["kind"], fault["target"]) == ("kill", "destination")


def inventory_file(world: World) -> Path:
    """The two agents' hosts as an inventory file (harness/hosts), keys beside it."""
    path = world.tmp / "inventory.yaml"
    path.write_text(f"""\
hosts:
  a: {{agent: "tcp://198.18.0.2:{PORT}", keys: keys}}
  b: {{agent: "tcp://198.18.0.3:{PORT}", keys: keys}}
""")
    return path


def test_hosts_check_finds_both_agents_able_to_run_the_multihost_scenario(world):
    report = world.tmp / "check.json"
    proc = world.lab.run_in(
        world.lab.hosts[0], [sys.executable, "-m", "harness", "hosts", "check",
                             str(inventory_file(world)), "--json", str(report), "--scenarios",
                             str(SHIPPED)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    hosts = json.loads(report.read_text())["hosts"]
    assert set(hosts) == {"a", "b"}
    for host in hosts.values():
        assert host["reachable"] and host["facts"]["tbf"]["ok"], host
        assert host["facts"]["net-admin"]["ok"]


def test_a_scenario_without_hosts_runs_on_the_inventorys_hosts(world):
    code, sc, output = world.run(REPO / "scenarios" / "precopy.yaml", "inventory-precopy",
                                 "--hosts", str(inventory_file(world)))
    assert code == 0, output
    assert sc["placement"] == {"source": "a", "destination": "b",
                               "inventory": str(world.tmp / "inventory.yaml")}
    assert {name: h["roles"] for name, h in sc["hosts"].items()} == {
        "a": ["source"], "b": ["destination"]}
    started = {t["peer"]: t["data"].get("host") for t in sc["timeline"]
               if t["name"] == "started"}
    assert started == {"source": "a", "destination": "b"}
    [migrate] = [t for t in sc["timeline"] if t["name"] == "migrate"]
    assert migrate["data"]["uri"].startswith("tcp:198.18.0.3:")  # straight to host b


def test_pytest_runs_shipped_scenarios_across_the_inventorys_hosts(world):
    """`pytest scenarios/ --hosts INVENTORY`: each item runs on the pair of hosts it locks
    (the hosts' `workdir:` show where the peers ran)."""
    places = {name: world.tmp / f"plugin-{name}" for name in ("a", "b")}
    for place in places.values():
        place.mkdir(mode=0o700)
    inventory = world.tmp / "plugin-inventory.yaml"
    inventory.write_text("hosts:\n" + "".join(
        f'  {name}: {{agent: "tcp://198.18.0.{2 + i}:{PORT}", keys: keys, '
        f'workdir: {places[name]}}}\n' for i, name in enumerate(places)))
    proc = world.lab.run_in(
        world.lab.hosts[0], [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "scenarios/precopy.yaml", "scenarios/precopy-cancel.yaml",
                             "--hosts", str(inventory)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HARNESS_AGENT_KEYS": str(world.keys)})
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "2 passed" in output, output
    for name, role in (("a", "source"), ("b", "destination")):
        runs = sorted(p.name.rsplit("-", 1)[0] for p in (places[name] / "runs").iterdir())
        assert runs == ["precopy", "precopy-cancel"], (name, runs)
        assert all((run / f"{role}.log").is_file()
                   for run in (places[name] / "runs").iterdir()), name
