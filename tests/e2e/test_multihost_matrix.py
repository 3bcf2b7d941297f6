"""The whole fault matrix and the real-QEMU scenarios across network namespaces, equal to
local runs cell by cell (issue 14).

Strategy: the world of tests/e2e/test_multihost.py (runner on 198.18.0.1, CURVE agents on
.2 and .3, one per module and xdist worker) plus an inventory of the two agent hosts.  One
item per file of scenarios/faults/ and scenarios/real/: the file runs across the hosts --
`harness run --hosts INVENTORY FILE` in the runner's namespace (peers on hosts a and b, the proxy on
the destination's host) -- while the session's one local run of it (`harness run FILE` in
the root namespace, shared with `pytest scenarios/` and the other tests that need it:
tests/shared_runs.py) is made or waited for, and the two JSON reports must agree on the verdict, each
peer's final status, the set of (invariant, ok), which steps fired, and the scenario's
fault steps being in both reports' `faults`; a mismatch names the field and both values.
The remote report must also show the peers ran on the hosts, and the proxy on host b
when the scenario has net.* faults or wire triggers (the test's own reading of the
model, not the runner's).  A cell the machine cannot run (no QEMU, no userfaultfd) skips
with the reason scenarios/conftest.py gives.  One more cell joins a `tc tbf` link fault
on host a with a proxy net.* fault in one run and checks that both fired.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.hosts.inventory import load_inventory
from harness.hosts.placement import PlacementError, across_hosts_skip, place
from harness.qemu import find_qemu, userfaultfd_available
from harness.scenario import load_scenario, model
from tests import shared_runs
from tests.e2e import test_multihost
from tests.e2e.test_multihost import HOSTS, REPO, World
from tests.qemu_env import NO_QEMU, NO_USERFAULTFD, STALE_0x6000

world = test_multihost.world  # the three namespaces and two CURVE agents, for this module

pytestmark = [pytest.mark.netns, pytest.mark.multihost_matrix]

MARGIN = 60.0  # s beyond a scenario's own timeout: start-up, digests, fetching, reaping
REAP = 10.0
CELLS = sorted([*(REPO / "scenarios" / "faults").glob("*.yaml"),
                *(REPO / "scenarios" / "real").glob("*.yaml")])
WIRE_TRIGGERS = (model.EventTrigger, model.CommandTrigger, model.FrameTrigger,
                 model.BytesTrigger)


@pytest.fixture(scope="module")
def inventory(world: World) -> Path:
    """The two agent hosts as an inventory (keys relative to the file)."""
    return test_multihost.inventory_file(world)


@dataclass
class Run:
    """One `harness run` started in the background; output to a file, reaped on close."""

    proc: subprocess.Popen[bytes]
    report: Path
    output: Path

    def finish(self, deadline: float) -> tuple[int, dict[str, Any], str]:
        """Its exit code, scenario report and output, waiting at most `deadline` s."""
        try:
            code = self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"harness run did not end within {deadline:g} s: "
                                 f"{self.proc.args}\n{self._text()}") from None
        scenarios = json.loads(self.report.read_text())["scenarios"] \
            if self.report.exists() else [{}]
        return code, scenarios[0], self._text()

    def _text(self) -> str:
        return self.output.read_text(errors="replace")[-20000:] if self.output.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(REAP)


def _start(world: World, name: str, argv: list[str], remote: bool) -> Run:
    report, output = world.tmp / f"{name}.json", world.tmp / f"{name}.out"
    argv = [sys.executable, "-m", "harness", "run", *argv, "--json", str(report)]
    env = {**os.environ, "HARNESS_WORKDIR": str(world.tmp / name)}
    with output.open("wb") as out:
        if remote:
            proc = world.lab.run_in(world.lab.hosts[0], argv, cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
        else:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
    return Run(proc, report, output)


@contextlib.contextmanager
def _remote(world: World, cell: str, file: Path, inventory: Path) -> Iterator[Run]:
    """The scenario run across the namespaces, in the background."""
    run = _start(world, f"{cell}-remote", ["--hosts", str(inventory), str(file)], remote=True)
    try:
        yield run
    finally:
        run.close()


def _skip_reason(sc: Any, inventory: Path) -> str | None:
    """What this machine lacks for the scenario, or why it cannot run across hosts
    (scenarios/conftest.py's reasons)."""
    if "qemu" in (sc.source.kind, sc.destination.kind) and find_qemu() is None:
        return NO_QEMU
    if sc.destination.kind == "qemu" and sc.postcopy and not userfaultfd_available():
        return NO_USERFAULTFD
    try:
        return across_hosts_skip(place(sc, load_inventory(inventory)))
    except PlacementError as err:
        lines = str(err).splitlines()
        if sc.guest.disks and all("guest.disks: disks with a peer on an agent's host" in line
                                  for line in lines):  # block migration stays on one host
            return f"not implemented across hosts: {lines[0]}"
        raise


def wants_proxy(sc: Any) -> bool:
    """net.* faults or wire triggers: the steps that put the proxy between the peers."""
    return any(isinstance(s.on, WIRE_TRIGGERS) or isinstance(s.fault, model.NetFault)
               for s in sc.steps)


def final_status(peer: dict[str, Any]) -> str | None:
    """A peer's final status; for one killed by a signal its exit code instead: the last
    status it sent races with the signal (postcopy-kill-destination-run, run alone three
    times locally, ended `postcopy-active`, `active`, `postcopy-active`)."""
    code = peer.get("exit-code")
    return f"exited {code}" if isinstance(code, int) and code < 0 else peer.get("status")


def cells(sc: Any, report: dict[str, Any]) -> dict[str, Any]:
    """What a local and a remote run of one scenario must agree on.  A peer's final status
    counts where the scenario expects one: where it does not, its description says it is
    a race (postcopy-truncate-packaged: a break seen while the source still finishes the
    switch fails it, one seen after pauses it -- both were seen, locally and across)."""
    out = {"verdict": report.get("verdict")}
    for role in ("source", "destination"):
        if getattr(sc.expect, role) is not None:
            out[f"{role}.status"] = final_status(report.get(role, {}))
    out["invariants"] = sorted((i["name"], i["ok"]) for i in report.get("invariants", []))
    out["steps-fired"] = [(s["step"], s["fired"]) for s in report.get("steps", [])]
    return out


def differences(sc: Any, local: dict[str, Any], remote: dict[str, Any]) -> list[str]:
    """Each field that differs, with both values."""
    mine, theirs = cells(sc, local), cells(sc, remote)
    return [f"{key}: local {mine[key]!r}, remote {theirs[key]!r}"
            for key in mine if mine[key] != theirs[key]]


def faults_missing(sc: Any, report: dict[str, Any]) -> list[str]:
    """The scenario's fault steps that must fire and are not in the report's `faults`."""
    reported = {f["step"] for f in report.get("faults", [])}
    return [f"{label} ({step.fault.kind})" for label, step in
            ((step.name or f"steps[{i}]", step) for i, step in enumerate(sc.steps))
            if step.fault is not None and step.must_fire and label not in reported]


def placement_problems(sc: Any, remote: dict[str, Any]) -> list[str]:
    """Where the remote run's peers (and proxy) ran, if not on the agent hosts."""
    problems = []
    placement = remote.get("placement", {})
    if (placement.get("source"), placement.get("destination")) != ("a", "b"):
        problems.append(f"placement {placement}, expected source a, destination b")
    started = {t["peer"]: t["data"].get("host") for t in remote.get("timeline", [])
               if t["name"] == "started"}
    for role, host in (("source", "a"), ("destination", "b")):
        if started.get(role) != host:
            problems.append(f"{role} started on {started.get(role)!r}, expected host {host}")
    if wants_proxy(sc) and (placement.get("proxy"), started.get("proxy")) != ("b", "b"):
        problems.append(f"the proxy ran on {placement.get('proxy')!r} (started event "
                        f"{started.get('proxy')!r}), expected the destination's host b")
    return problems


@pytest.mark.parametrize("file", CELLS, ids=[f"{p.parent.name}/{p.stem}" for p in CELLS])
def test_a_cell_across_hosts_equals_the_local_run(world, inventory, file, request):
    sc = load_scenario(file)
    why = _skip_reason(sc, inventory)
    if why:
        pytest.skip(why)
    cell = f"{file.parent.name}-{file.stem}"
    deadline = sc.timeout + MARGIN
    with _remote(world, cell, file, inventory) as remote_run:
        # meanwhile, the session's one local run of the file (tests/shared_runs.py): this
        # item's, or the one `pytest scenarios/` or another test already made
        done = shared_runs.local_run(file, deadline)
        code_l, local, out_l = done.code, done.scenario(), done.output
        code_r, remote, out_r = remote_run.finish(deadline)
    outputs = f"\n--- local (exit {code_l}) ---\n{out_l}\n--- remote (exit {code_r}) ---\n{out_r}"
    problems = differences(sc, local, remote)
    for side, report in (("local", local), ("remote", remote)):
        problems += [f"{side}: fault {f} not in the report's faults"
                     for f in faults_missing(sc, report)]
    problems += [f"remote: {p}" for p in placement_problems(sc, remote)]
    stale = [side for side, report in (("local", local), ("remote", remote))
             if STALE_0x6000 in report.get("reason", "")]
    if problems and stale and file.parent.name == "real":
        pytest.xfail(f"QEMU 7.2 TCG lost a TLB-resident page's writes ({STALE_0x6000}) on "
                     f"the {' and '.join(stale)} run: README, fault matrix, seen on either "
                     "side under load\n" + "\n".join(problems))
    assert not problems, "\n".join(problems) + outputs


def test_a_tbf_link_fault_and_a_proxy_fault_both_fire_in_one_run(world):
    """`tc tbf` on host a's side of the link while the proxy on host b delays the stream."""
    path = world.tmp / "link-and-net.yaml"
    path.write_text(f"""\
name: link-and-net
seed: 31
timeout: 60s
{HOSTS}source: {{host: a}}
destination: {{host: b}}
guest: {{memory: 32MiB, fill: 0.5}}
steps:
  - name: cap
    on: {{bytes: {{channel: main, after: 1MiB}}}}
    fault: {{kind: link.bandwidth, host: a, rate: 8MiB}}
  - name: slow
    on: {{event: section, count: 2}}
    fault: {{kind: net.delay, delay: 20ms, duration: 500ms}}
expect: {{source: completed, destination: completed, memory: identical}}
""")
    code, sc, output = world.run(path, "link-and-net")
    assert code == 0, output
    # net.delay is one record per flow it slows (main and return path)
    assert {(f["step"], f["kind"]) for f in sc["faults"]} == {
        ("cap", "link.bandwidth"), ("slow", "net.delay")}, sc["faults"]
    assert [(s["step"], s["fired"]) for s in sc["steps"]] == [("cap", True), ("slow", True)]
    [cap] = [f for f in sc["faults"] if f["step"] == "cap"]
    assert any(" tbf " in c for c in cap["detail"]["commands"]), cap  # the agent ran tc tbf
    assert sc["placement"]["proxy"] == "b", sc["placement"]
    # 16 MiB of pages, all but the first through an 8 MiB/s bucket: about a second (over
    # 1 s idle, 0.98 s with two busy loops beside the suite); bare veth: ~0.1 s
    assert sc["stats"]["total-time"] >= 600, sc["stats"]
