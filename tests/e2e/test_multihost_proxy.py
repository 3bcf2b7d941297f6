"""The proxy on an agent's host, and the run's files fetched back, across network namespaces.

The world of tests/e2e/test_multihost.py (the runner on 198.18.0.1, CURVE agents on .2 and
.3): network faults and wire triggers now work across hosts because the proxy runs on an
agent's host (the destination's by default, or `proxy: {host: ...}`), started and reaped
by that agent, its events relayed; at the end the runner fetches each host's run files
(logs, recorded streams, the agent's event log) into WORKDIR/hosts/HOST, bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_multihost
from tests.e2e.test_multihost import HOSTS, REPO, World

world = test_multihost.world  # the same three namespaces and CURVE agents (a fixture)
pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

POSTCOPY_CUT = """\
guest: {memory: 32MiB, fill: 1.0, workload: {dirty-rate: 16MiB/s}}
capabilities: {postcopy-ram: true}
parameters: {max-bandwidth: 64MiB, max-postcopy-bandwidth: 16MiB}
steps:
  - on: {status: {peer: source, is: active}}
    do: migrate-start-postcopy
  - name: cut
    on: {event: page-request, count: 10}
    fault: {kind: net.reset, channel: return-path}
  - after: cut
    on: {status: {peer: destination, is: postcopy-paused}}
    do: migrate-recover
expect: {source: completed, destination: completed, memory: identical,
         guest-runs-on: destination}
"""

PRECOPY_DELAYED = """\
guest: {memory: 16MiB, fill: 0.5}
parameters: {max-bandwidth: 64MiB}
steps:
  - name: slow
    on: {event: section, count: 2}
    fault: {kind: net.delay, delay: 20ms, duration: 500ms}
expect: {source: completed, destination: completed, memory: identical}
"""


def _scenario(world: World, name: str, body: str, proxy: str = "") -> Path:
    path = world.tmp / f"{name}.yaml"
    path.write_text(f"""\
name: {name}
seed: 41
timeout: 60s
{HOSTS}source: {{host: a}}
destination: {{host: b}}
{proxy}{body}""")
    return path


def _run(world: World, scenario: Path, name: str, *args: str,
         env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """`harness run` in the runner's namespace with extra options and environment."""
    report = world.tmp / f"{name}.json"
    proc = world.lab.run_in(
        world.lab.hosts[0], [sys.executable, "-m", "harness", "run", str(scenario), "--json",
                             str(report), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HARNESS_AGENT_KEYS": str(world.keys),
             "HARNESS_WORKDIR": str(world.tmp / name), **(env or {})})
    output = proc.communicate(timeout=240)[0]
    scenarios = json.loads(report.read_text())["scenarios"] if report.exists() else [{}]
    return proc.returncode, scenarios[0], output


def _notes(sc: dict[str, Any], peer: str, name: str) -> list[dict[str, Any]]:
    return [t for t in sc["timeline"] if (t["peer"], t["name"]) == (peer, name)]


def test_a_return_path_reset_on_a_wire_trigger_by_the_proxy_on_the_destinations_host(world):
    path = _scenario(world, "proxy-on-b", POSTCOPY_CUT)
    code, sc, output = _run(world, path, "proxy-on-b", "--record")
    assert code == 0, output
    [started] = _notes(sc, "proxy", "started")
    assert started["data"]["host"] == "b"  # the default: the destination's host
    assert isinstance(started["data"]["pid"], int)
    assert started["data"]["listen"].startswith("tcp:198.18.0.3:")  # listening on b
    [migrate] = _notes(sc, "runner", "migrate")
    assert migrate["data"]["uri"] == started["data"]["listen"]  # the source went to it
    # the fault fired at its wire trigger: the WIRE event of step "cut", then its FAULT
    [fault] = [f for f in sc["faults"] if f["step"] == "cut"]
    assert (fault["kind"], fault["target"]) == ("net.reset", "proxy return-path")
    [wire] = [t for t in _notes(sc, "proxy", "WIRE") if t["data"]["id"] == fault["detail"]["id"]]
    assert wire["data"]["trigger"] == {"event": "page-request", "count": 10}
    assert (wire["data"]["frame"], wire["data"]["count"]) == ("REQ_PAGES", 10)
    assert fault["detail"]["offset"] == wire["data"]["offset"]  # at that very byte
    assert {s["step"]: s["fired"] for s in sc["steps"]}["cut"]
    [recover] = [t for t in _notes(sc, "runner", "step")
                 if t["data"].get("command") == "migrate-recover"]
    assert "error" not in recover["data"]
    assert recover["data"]["source-uri"].startswith("tcp:198.18.0.3:")  # the proxy again
    assert {i["name"]: i["ok"] for i in sc["invariants"]}["memory-identical"]
    # the proxy's events are on the runner's clock (`at`, epoch seconds) as the peers'
    # are: stamped on b, moved by b's clock offset, within the relay's delay of arrival
    [source_started] = _notes(sc, "source", "started")
    run_epoch = source_started["at"] - source_started["t"]  # the runner's t=0, as epoch
    assert 0 <= wire["t"] - (wire["at"] - run_epoch) < 1.0, (wire, source_started)
    # the proxy ran and was reaped by b's agent: its log came back from b, none from a
    names = {h: {f["name"] for f in sc["hosts"][h]["files"]} for h in ("a", "b")}
    assert {"proxy.log", "destination.log", "agent-events.jsonl"} <= names["b"]
    assert "proxy.log" not in names["a"] and "source.log" in names["a"]
    assert sc["hosts"]["b"]["leftovers"] == []
    # b's agent logged every event it relayed for the run, the proxy's WIRE among them
    [events] = [f["path"] for f in sc["hosts"]["b"]["files"] if f["name"] == "agent-events.jsonl"]
    relayed = [json.loads(line) for line in Path(events).read_text().splitlines()]
    assert {"peer": "proxy", "event": "WIRE"}.items() <= next(
        e["data"] for e in relayed if e["data"].get("event") == "WIRE").items()
    assert {"event": "PEER_EXITED", "peer": "proxy"} in [  # reaped by b's agent
        {"event": e["event"], "peer": e["data"].get("peer")} for e in relayed]


def test_the_proxy_on_the_sources_host_and_a_recording_that_analyze_decodes(world):
    path = _scenario(world, "proxy-on-a", PRECOPY_DELAYED, proxy="proxy: {host: a}\n")
    code, sc, output = _run(world, path, "proxy-on-a", "--record")
    assert code == 0, output
    [started] = _notes(sc, "proxy", "started")
    assert started["data"]["host"] == "a"
    assert started["data"]["listen"].startswith("tcp:198.18.0.2:")
    assert {f["kind"] for f in sc["faults"]} == {"net.delay"}  # once per flow it delayed
    # the destination (on b) recorded what it received: fetched back, and in the work
    # directory as a local run leaves it (a precopy without a return path has no rp file)
    work = Path(sc["workdir"])
    [entry] = [f for f in sc["hosts"]["b"]["files"] if f["name"] == "stream.fwd.bin"]
    assert Path(entry["path"]) == work / "hosts" / "b" / "stream.fwd.bin"
    assert (work / "stream.fwd.bin").stat().st_size == entry["size"] > 8 << 20
    assert (work / "stream.fwd.bin").stat().st_ino == Path(entry["path"]).stat().st_ino
    decoded = subprocess.run(
        [sys.executable, "-m", "harness", "analyze", str(work / "stream.fwd.bin"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert decoded.returncode == 0, decoded.stderr
    [block] = json.loads(decoded.stdout)["ram"]["blocks"]
    assert block["used_length"] == 16 << 20
    # each remote peer's log points at its local copy, which exists
    for role, host in (("source", "a"), ("destination", "b")):
        log = Path(sc[role]["log"])
        assert log == work / "hosts" / host / f"{role}.log" and log.is_file()


def test_a_tiny_fetch_limit_names_what_was_left_out(world):
    path = _scenario(world, "fetch-limit", PRECOPY_DELAYED)
    code, sc, output = _run(world, path, "fetch-limit", "--record",
                            env={"HARNESS_FETCH_LIMIT": "2KiB"})
    assert code == 0, output
    for host in ("a", "b"):
        files, left = sc["hosts"][host]["files"], sc["hosts"][host]["files-left-out"]
        assert sum(f["size"] for f in files) <= 2048
        assert all(Path(f["path"]).is_file() for f in files)
        assert all("over the limit of 2048 bytes" in f["reason"] and f["size"] > 0
                   for f in left), left
        for f in left:  # left out: no local file of that name
            assert not (Path(sc["workdir"]) / "hosts" / host / f["name"]).exists()
    # b's recording (16 MiB of guest) is left out, its small logs came back
    [stream] = [f for f in sc["hosts"]["b"]["files-left-out"] if f["name"] == "stream.fwd.bin"]
    assert stream["size"] > 2048
    assert "destination.log" in {f["name"] for f in sc["hosts"]["b"]["files"]}
    assert not (Path(sc["workdir"]) / "stream.fwd.bin").exists()  # nothing to link
