"""`harness run`: load scenario files, run each, print and write the reports.

Strategy: validation first (any bad file -> exit 2 before anything starts), then a sweep
of what dead runs left (harness.lifeline), then one coordinator per scenario in order,
each in its own work directory (peer logs, streams, the event log when there is no
--json), kept -- and named on the console, `workdir: PATH` -- when the scenario did not
pass or --record asked for it, removed when it passed.  While a scenario runs, a rich
progress bar (in a terminal only) shows how much is sent, what remains, the pass and
the statuses; the summary table comes at the end, then the JSON, JUnit and HTML reports.
Each verdict line is printed once, as its scenario ends; the summary adds the details.
A scenario that places its peers on `hosts:` (agents) runs when its file is named; found
in a directory (`harness run DIR`), it is skipped with the reason (verdict `skip`) rather
than reaching out to the addresses in the file.

SIGINT, SIGTERM and SIGHUP all raise `Interrupted` (a KeyboardInterrupt) in the main
thread, once: the coordinator ends the scenario as `error`, reason `interrupted`, reaps its
processes and keeps its work directory; the reports are written with what ran so far and
`RunInterrupted` tells the CLI (exit 3).  Later signals are ignored while that cleanup
runs; a SIGKILL skips it, and the peers die with the runner anyway (harness.lifeline).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.errors import EnvironmentFailure
from harness.hosts.inventory import Inventory
from harness.hosts.placement import across_hosts_skip, place_each, record_placement
from harness.lifeline import sweep
from harness.report.formats import (
    headline,
    json_report,
    junit_report,
    print_summary,
    report_console,
)
from harness.scenario import load_scenarios
from harness.scenario.harness_peers import with_peers
from harness.scenario.model import Scenario

from .coordinator import INTERRUPTED, Coordinator
from .progress import MigrationProgress
from .result import ScenarioResult


def run_scenario(scenario: Scenario, seed: int | None = None,
                 console: Console | None = None, record: bool = False,
                 events_log: Path | None = None) -> ScenarioResult:
    base = os.environ.get("HARNESS_WORKDIR")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-", dir=base))
    console = console or Console(stderr=True)
    with MigrationProgress(scenario.name, console) as bar:
        coordinator = Coordinator(scenario, workdir, seed, bar.update, record, events_log)
        try:
            result = coordinator.run()
        except KeyboardInterrupt:  # it came after `run` handled its own: in its close
            coordinator.abandon()
            raise
    result.scenario = scenario_record(scenario)
    if result.verdict == "pass" and not record:  # nothing to look at: nothing left behind
        shutil.rmtree(workdir, ignore_errors=True)
        result.workdir = None
        if events_log is None:
            result.events_log = None
    return result


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (or SIGINT), raised where the main thread is, as Ctrl-C is."""


class RunInterrupted(EnvironmentFailure):
    """A signal ended `harness run`; the reports are written, `results` is what ran."""

    def __init__(self, signame: str, results: list[ScenarioResult]) -> None:
        super().__init__(f"interrupted by {signame}")
        self.signame = signame
        self.results = results


@contextmanager
def _interruptible() -> Iterator[dict[str, str]]:
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` once; then they are ignored (the
    cleanup runs to its end).  The signal's name lands in the yielded dict."""
    caught: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught  # signals reach the main thread only: nothing to install
        return

    def on_signal(signum: int, frame: object) -> None:
        if caught:
            return
        caught["signal"] = signal.Signals(signum).name
        raise Interrupted(caught["signal"])

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in sigs}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def events_path(json_path: str | Path | None, scenario: Scenario, round_: int | None
                ) -> Path | None:
    """Beside the JSON report: REPORT.NAME[.rN].events.jsonl (None: in the work dir)."""
    if json_path is None:
        return None
    report = Path(json_path)
    suffix = f".r{round_}" if round_ is not None else ""
    return report.with_name(f"{report.stem}.{scenario.name}{suffix}.events.jsonl")


def run_files(paths: Sequence[str | Path], *, json_path: str | Path | None = None,
              junit_path: str | Path | None = None, seed: int | None = None,
              console: Console | None = None, record: bool = False,
              repeat: int = 1, html_path: str | Path | None = None,
              peers: Mapping[str, str] | frozenset[str] = frozenset(),
              timeout: float | None = None, inventory: Inventory | None = None,
              placement: dict[str, str] | None = None) -> list[ScenarioResult]:
    """Run every scenario of the given files; raises ScenarioError for a bad file and
    RunInterrupted (after writing the reports) when a signal ended the run.  `peers`
    (`--peers`): role -> qemu|harness, the kind of peer each side runs instead (a set of
    roles: those run a real QEMU) (harness/scenario/harness_peers.py, qemu_peers.py);
    `timeout` (`--timeout`): every scenario's deadline instead of its own; `inventory`
    and `placement` (`--hosts`, `--place`): every scenario placed on those hosts before
    any runs (harness/hosts/placement.py; a conflict is a ScenarioError)."""
    scenarios = load_scenarios(paths)
    if timeout is not None:  # --timeout: every scenario's deadline
        scenarios = [sc.model_copy(update={"timeout": timeout}) for sc in scenarios]
    kinds = dict(peers) if isinstance(peers, Mapping) else {role: "qemu" for role in peers}
    adapted = {id(sc): with_peers(sc, kinds) for sc in scenarios} if kinds else {}
    placed = {id(sc): on_hosts for sc, on_hosts in zip(scenarios, place_each(
        [adapted[id(sc)].scenario or sc if peers else sc for sc in scenarios], inventory,
        placement))} if inventory is not None else {}
    named = {Path(p).resolve() for p in paths if not Path(p).is_dir()}
    out = console or report_console()
    err = Console(stderr=True)
    swept = sweep()
    if swept:
        err.print(f"harness run: removed {len(swept)} leftover(s) of runs that died: "
                  + ", ".join(swept), markup=False, highlight=False, soft_wrap=True)
    results: list[ScenarioResult] = []
    current: Scenario | None = None  # running, its result not yet in `results`
    with _interruptible() as caught:
        try:
            for scenario in scenarios:
                skip = _skip_reason(scenario, named)
                notes: list[str] = []
                on_hosts = placed.get(id(scenario))
                if peers and skip is None:
                    change = adapted[id(scenario)]
                    skip = change.why_not
                    scenario, notes = change.scenario or scenario, change.notes
                if on_hosts is not None and skip is None:  # --hosts
                    scenario, skip = on_hosts, across_hosts_skip(on_hosts)
                if skip is not None:
                    results.append(ScenarioResult(scenario.name, str(scenario.source_file),
                                                  scenario.seed if seed is None else seed,
                                                  verdict="skip", reason=skip,
                                                  scenario=scenario_record(scenario)))
                    _print_result(results[-1], out)
                    continue
                for round_ in range(1, repeat + 1):
                    label = round_ if repeat > 1 else None
                    current = scenario
                    result = run_scenario(scenario, seed,
                                          Console(stderr=True, quiet=not out.is_terminal),
                                          record, events_path(json_path, scenario, label))
                    result.repeat = label
                    result.adapted = notes
                    record_placement(result, scenario, inventory)
                    results.append(result)
                    current = None
                    _print_result(result, out)
                    if caught:  # the coordinator ended the scenario for it
                        raise Interrupted(caught["signal"])
            _write_reports(results, out, json_path, junit_path, html_path)
        except KeyboardInterrupt:
            if current is not None:  # stopped before its coordinator could say so
                results.append(ScenarioResult(current.name, str(current.source_file or ""),
                                              current.seed if seed is None else seed,
                                              verdict="error", reason=INTERRUPTED,
                                              scenario=scenario_record(current)))
                _print_result(results[-1], out)
            _write_reports(results, out, json_path, junit_path, html_path)
            raise RunInterrupted(caught.get("signal", "SIGINT"), results) from None
    return results


def scenario_record(scenario: Scenario) -> dict[str, Any]:
    """What the reports show of the scenario: its description, steps and expect."""
    return {"description": scenario.description,
            "steps": [step.model_dump(mode="json", by_alias=True, exclude_none=True,
                                      exclude_defaults=True) for step in scenario.steps],
            "expect": scenario.expect.model_dump(mode="json", by_alias=True,
                                                 exclude_none=True)}


def _skip_reason(scenario: Scenario, named: set[Path]) -> str | None:
    """Why a scenario found in a directory is not run: it needs agents on its hosts."""
    if not scenario.hosts or scenario.source_file is None:
        return None
    if scenario.source_file.resolve() in named:
        return None
    hosts = ", ".join(f"{name} at {host.agent}" for name, host in scenario.hosts.items())
    return f"needs hosts (agents): {hosts}; name the file to run it"


def _print_result(result: ScenarioResult, out: Console) -> None:
    """The scenario's verdict line, and where its work directory is when it is kept."""
    out.print(headline(result), markup=False, highlight=False, soft_wrap=True)
    if result.workdir is not None:
        out.print(f"  workdir: {result.workdir}", markup=False, highlight=False,
                  soft_wrap=True)  # one line, whatever the width: a path to copy


def _write_reports(results: list[ScenarioResult], out: Console, json_path: str | Path | None,
                   junit_path: str | Path | None, html_path: str | Path | None) -> None:
    print_summary(results, out, headlines_printed=True)
    if json_path:
        Path(json_path).write_text(json_report(results))
    if junit_path:
        Path(junit_path).write_text(junit_report(results))
    if html_path:
        write_html_report(html_path, results, json_path, report_console(stderr=True))


def write_html_report(path: str | Path, results: Sequence[ScenarioResult],
                      json_path: str | Path | None, err_console: Console) -> None:
    """The HTML report, drawn from the JSON report's dicts; a failure is said, not raised:
    the scenarios' verdicts (and the other reports) stand."""
    from harness.report.html import write_html  # matplotlib: only when asked for

    title = Path(json_path).name if json_path else "harness run"
    try:
        write_html(path, [(title, json.loads(json_report(results)))])
    except OSError as err:
        err_console.print(f"harness run: --html {path}: {err.strerror or err}",
                          markup=False, style="red")
    except Exception as err:  # noqa: BLE001 - a bug of ours: said, not a traceback
        err_console.print(f"harness run: --html {path}: could not draw the report: "
                          f"{type(err).__name__}: {err}", markup=False, style="red")
