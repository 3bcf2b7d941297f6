"""`pytest scenarios/`: every scenario file here is a test item, run as a user runs it.

Strategy: a small pytest plugin.  Each `*.yaml` under this directory (one scenario per
file) is loaded with the harness's own loader when pytest collects it (a bad file is a
collection error naming the file, line and field) and becomes one item that runs
`python -m harness run FILE --json REPORT` in a subprocess -- its own processes, its own
work directory -- so `pytest -n auto scenarios/` spreads the matrix over the CPUs.  An
item passes when the harness exits 0 (every `expect` met); otherwise it fails with the
harness's own summary (the reason, the checks, the timeline).  A scenario that needs a
real QEMU, or a QEMU postcopy destination (userfaultfd), is skipped with that reason when
the machine lacks it.  A scenario with `hosts:` runs only when HARNESS_AGENTS=1 says its
agents are up (README, "Across hosts"): its addresses are real hosts', never probed
unasked.  `pytest scenarios/ --hosts INVENTORY` (or HARNESS_HOSTS) runs every other
scenario across the inventory's hosts (`harness run --hosts INVENTORY --place
source=A,destination=B`), each item holding a pair of hosts (h1+h2, h3+h4, ...) with an
exclusive lock while it runs, so `-n N` runs one item per pair at a time; a scenario that
cannot run across hosts (a unix: transport, ...) is skipped with the reason.

Each scenario of scenarios/faults/ is also an item `NAME[qemu]` (marker `qemu_matrix`):
the same file run with `harness run --peers qemu`, a real QEMU on both sides running the
harness's own x86 guest -- the fault matrix against real QEMU.  A cell that cannot apply
to QEMU is skipped with the reason.  `pytest scenarios/ --peers qemu` (or HARNESS_PEERS)
runs every scenario that way only; `-m "not qemu_matrix"` leaves the QEMU column out.
The README's fault-matrix table says, in its last column, what real QEMU 7.2 does in each
cell: "as expected" cells must pass; a cell that **differs** is a strict xfail that must
fail the way the table says (a different failure, or a pass, fails the suite) -- not
strict when it differs only "sometimes" -- and one that hangs runs with `--timeout
HANG_TIMEOUT` to be named at that deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest scenarios/` alone: tests/ is not importable yet
    sys.path.insert(0, str(REPO))
from tests import shared_runs

MARGIN = 120.0  # beyond the scenario's own timeout: start-up, digests, reaping
HANG_TIMEOUT = "12s"  # the deadline of a QEMU cell the README says hangs
PAIR_WAIT = float(os.environ.get("HARNESS_HOSTS_WAIT", "900"))  # s for a free pair of hosts
INVENTORY = pytest.StashKey[Any]()
README_ROW = re.compile(r"^\| \[([\w-]+)\]\(scenarios/faults/[\w-]+\.yaml\) \|.*\| ([^|]+) \|$")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--peers", default=os.environ.get("HARNESS_PEERS"),
                     metavar="qemu|source=qemu|destination=qemu",
                     help="run every scenario with real QEMU peers (harness run --peers)")
    parser.addoption("--hosts", default=os.environ.get("HARNESS_HOSTS"), metavar="INVENTORY",
                     help="run every scenario across the hosts of this inventory (harness "
                          "run --hosts --place), one item per pair of hosts at a time")


def pytest_configure(config: pytest.Config) -> None:
    shared_runs.begin(config)  # one local run per scenario file and session
    config.addinivalue_line("markers", "qemu_matrix: a fault-matrix scenario run with real "
                            "QEMU peers (harness run --peers qemu)")
    config.stash[INVENTORY] = None
    path = config.getoption("--hosts", None)
    if path:
        from harness.hosts.inventory import InventoryError, load_inventory

        try:
            config.stash[INVENTORY] = load_inventory(path)
        except InventoryError as err:
            raise pytest.UsageError(f"--hosts: {err}") from None


def pytest_sessionfinish(session: pytest.Session) -> None:
    shared_runs.cleanup(session.config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scenario items first, the QEMU column first of all: they are the suite's longest
    (5-20 s each), and xdist hands items out in order -- started last, they would leave
    one worker running alone at the end."""
    def rank(item: pytest.Item) -> int:
        if not isinstance(item, ScenarioItem):
            return 2
        return 0 if item.peers else 1
    items.sort(key=rank)


#: QEMU 7.2's silent losses and hangs: their verdict is `fail` by design, each for its
#: named reason, which tests/e2e/test_qemu_bugs.py asserts (findings/, with the harness
#: column) and tests/e2e/test_multifd_proxy_qemu.py (multifd faults through the proxy)
QEMU_72 = REPO / "scenarios" / "qemu-7.2"
FINDINGS = QEMU_72 / "findings"


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and not file_path.is_relative_to(QEMU_72):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        from harness.scenario import ScenarioError, load_scenario
        from harness.scenario.qemu_peers import parse_peers

        try:
            scenario = load_scenario(self.path)
        except ScenarioError as err:
            raise self.CollectError(str(err)) from None
        peers = self.config.getoption("--peers", None)
        if peers:
            try:
                parse_peers(peers)
            except ValueError as err:
                raise self.CollectError(str(err)) from None
            yield self._qemu_item(scenario, peers)
            return
        yield ScenarioItem.from_parent(self, name=scenario.name, scenario=scenario)
        if self.path.parent.name == "faults":
            yield self._qemu_item(scenario, "qemu")

    def _qemu_item(self, scenario: Any, peers: str) -> pytest.Item:
        from harness.scenario.qemu_peers import parse_peers, with_qemu_peers

        adapted = with_qemu_peers(scenario, parse_peers(peers))
        differs = qemu_outcomes().get(scenario.name, "as expected") \
            if peers == "qemu" and self.path.parent.name == "faults" else "as expected"
        if differs.startswith("**not applicable**"):  # skipped with the model's reason
            assert adapted.why_not, f"{scenario.name}: the README says not applicable"
            differs = "as expected"
        item = ScenarioItem.from_parent(self, name=f"{scenario.name}[{peers}]",
                                        scenario=adapted.scenario or scenario, peers=peers,
                                        not_applicable=adapted.why_not)
        item.add_marker(pytest.mark.qemu_matrix)
        item.add_marker(pytest.mark.qemu)
        if differs != "as expected":
            item.differs = differs
            # "sometimes": QEMU does not always differ (a crash that a race decides)
            item.add_marker(pytest.mark.xfail(strict="sometimes" not in differs,
                                              raises=ScenarioFailed,
                                              reason=f"README: real QEMU 7.2 {differs}"))
        return item


def qemu_outcomes() -> dict[str, str]:
    """The README fault matrix's last column: what real QEMU 7.2 does, per cell."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        match = README_ROW.match(line)
        if match:
            rows[match[1]] = match[2].strip()
    return rows


def differs_as_written(differs: str, report: dict[str, Any]) -> str | None:
    """Why a QEMU cell's failure is not the one the README describes (None: it is)."""
    [result] = report["scenarios"]
    reason = result.get("reason", "")
    if "0x6000" in differs and not ("memory-identical" in reason and "0x6000" in reason):
        return f"expected memory-identical to fail on 0x6000, got: {reason}"
    if "hangs" in differs and "did not finish within" not in reason:
        return f"expected a hang named at the deadline, got: {result.get('verdict')} {reason}"
    if "`cancelling`" in differs and "source cancelling" not in reason:
        return f"expected the source stuck in cancelling, got: {reason}"
    if "source ends `failed`" in differs and "source ended failed" not in reason:
        return f"expected the source to end failed, got: {reason}"
    if "SIGSEGV" in differs and result["destination"].get("exit-code") != -11:
        return f"expected the destination to die of SIGSEGV, got: {result['destination']}"
    return None


class ScenarioItem(pytest.Item):
    differs = "as expected"  # what the README says real QEMU does in this cell

    def __init__(self, *, scenario: Any, peers: str | None = None,
                 not_applicable: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.peers = peers
        self.not_applicable = not_applicable
        on_hosts = self.config.stash.get(INVENTORY, None) is not None
        self.add_marker(pytest.mark.timeout(scenario.timeout + MARGIN
                                            + (PAIR_WAIT if on_hosts else 0)))
        if "qemu" in (scenario.source.kind, scenario.destination.kind):
            self.add_marker(pytest.mark.qemu)

    def runtest(self) -> None:
        if self.not_applicable:
            pytest.skip(self.not_applicable)
        self._skip_without_what_it_needs()
        work = Path(tempfile.mkdtemp(prefix=f"scenario-{self.scenario.name}-"))
        report = work / "report.json"
        try:
            self._run(work, report)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, work: Path, report: Path) -> None:
        if not self.peers and self.config.stash.get(INVENTORY, None) is None:
            # the plain local run: once per session, shared with the other items that
            # need it (tests/shared_runs.py)
            run = shared_runs.local_run(self.path, self.scenario.timeout + MARGIN)
            if run.code != 0:
                raise ScenarioFailed(run.code, run.output, run.report)
            return
        peers = ["--peers", self.peers] if self.peers else []
        if "hangs" in self.differs:
            peers += ["--timeout", HANG_TIMEOUT]
        with self._host_pair() as placed:
            proc = subprocess.run(
                [sys.executable, "-m", "harness", "run", str(self.path), "--json", str(report),
                 *peers, *placed],
                capture_output=True, text=True, cwd=REPO, check=False,
                timeout=self.scenario.timeout + MARGIN,
                env={**os.environ, "HARNESS_WORKDIR": str(work / "runs")})
        if proc.returncode != 0 and self.differs != "as expected":
            wrong = differs_as_written(self.differs, json.loads(report.read_text()))
            if wrong:  # not the README's difference: a real failure, not the xfail
                raise AssertionError(f"{wrong}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            raise ScenarioFailed(proc.returncode, proc.stdout + proc.stderr, report)
        missing = faults_not_reported(self.scenario, json.loads(report.read_text()))
        if missing:
            raise ScenarioFailed(0, "passed, but these faults are not in the report's "
                                 f"faults: {', '.join(missing)}\n" + proc.stdout, report)

    @contextlib.contextmanager
    def _host_pair(self) -> Iterator[list[str]]:
        """--hosts: a free pair of the inventory's hosts (an exclusive lock shared by the
        xdist workers, harness/hosts/pairs.py), held while the scenario runs."""
        inventory = self.config.stash.get(INVENTORY, None)
        if inventory is None or self.scenario.hosts:
            yield []  # a scenario with its own hosts runs on them (HARNESS_AGENTS)
            return
        from harness.hosts.pairs import host_pair

        with host_pair(inventory, PAIR_WAIT) as (source, destination):
            yield ["--hosts", str(inventory.file), "--place",
                   f"source={source},destination={destination}"]

    def _skip_without_what_it_needs(self) -> None:
        from harness.qemu import find_qemu, userfaultfd_available

        sc = self.scenario
        if sc.hosts and os.environ.get("HARNESS_AGENTS") != "1":
            agents = ", ".join(f"{name} {host.agent}" for name, host in sc.hosts.items())
            pytest.skip(f"runs on the agents of its hosts ({agents}): start them and set "
                        "HARNESS_AGENTS=1 (README: Across hosts); tests/e2e/test_multihost.py "
                        "runs it in network namespaces")
        inventory = self.config.stash.get(INVENTORY, None)
        if inventory is not None and not sc.hosts:  # what the hosts lack: harness hosts check
            from harness.hosts.placement import across_hosts_skip, place

            why = across_hosts_skip(place(sc, inventory))
            if why:
                pytest.skip(why)
            return
        if "qemu" in (sc.source.kind, sc.destination.kind) and find_qemu() is None:
            pytest.skip("qemu-system-x86_64 not installed (CI installs Debian's "
                        "qemu-system-x86)")
        if sc.destination.kind == "qemu" and sc.postcopy and not userfaultfd_available():
            pytest.skip("userfaultfd is not available to this process (a QEMU postcopy "
                        "destination needs it: root, or vm.unprivileged_userfaultfd=1)")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.scenario.name}"


def faults_not_reported(scenario: Any, report: dict[str, Any]) -> list[str]:
    """The scenario's fault steps that must fire and have no record in the report's
    `faults` (a verdict that never saw its fault is vacuous)."""
    [result] = report["scenarios"]
    reported = {f["step"] for f in result.get("faults", [])}
    return [f"{label} ({step.fault.kind})" for label, step in
            ((step.name or f"steps[{i}]", step) for i, step in enumerate(scenario.steps))
            if step.fault is not None and step.must_fire and label not in reported]


class ScenarioFailed(Exception):
    def __init__(self, code: int, output: str, report: Path) -> None:
        verdict = ""
        if report.exists():
            [sc, *_] = json.loads(report.read_text())["scenarios"] or [{}]
            verdict = f"{sc.get('verdict', '?')}: {sc.get('reason', '')}\n"
        super().__init__(f"harness run exited {code}\n{verdict}{output}")
