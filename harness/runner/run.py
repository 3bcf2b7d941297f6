"""`harness run`: load scenario files, run each, print and write the reports.

Strategy: validation first (any bad file -> exit 2 before anything starts), then one
coordinator per scenario in order, each in its own work directory (peer logs, streams),
kept when the scenario did not pass and removed when it did.  While a scenario runs, a
rich progress bar (in a terminal only) shows how much is sent, what remains, the pass and
the statuses; the summary table comes at the end, then the JSON, JUnit and HTML reports.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from harness.report.formats import json_report, junit_report, print_summary, summary_lines
from harness.scenario import load_scenarios
from harness.scenario.model import Scenario

from .coordinator import Coordinator
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
        result = Coordinator(scenario, workdir, seed, bar.update, record, events_log).run()
    if result.verdict == "pass" and not record and events_log is not None:
        shutil.rmtree(workdir, ignore_errors=True)
        result.workdir = None
    elif result.verdict == "pass" and not record:  # keep the event log, drop the rest
        for item in workdir.iterdir():
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            elif item.name != "events.jsonl":
                item.unlink()
    return result


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
              repeat: int = 1, html_path: str | Path | None = None) -> list[ScenarioResult]:
    """Run every scenario of the given files; raises ScenarioError for a bad file."""
    scenarios = load_scenarios(paths)
    out = console or Console()
    results = []
    for scenario in scenarios:
        for round_ in range(1, repeat + 1):
            label = round_ if repeat > 1 else None
            result = run_scenario(scenario, seed, Console(stderr=True, quiet=not out.is_terminal),
                                  record, events_path(json_path, scenario, label))
            result.repeat = label
            results.append(result)
            for line in summary_lines(result)[:1]:
                out.print(line, markup=False, highlight=False)
    print_summary(results, out)
    if json_path:
        Path(json_path).write_text(json_report(results))
    if junit_path:
        Path(junit_path).write_text(junit_report(results))
    if html_path:
        write_html_report(html_path, results, json_path, Console(stderr=True))
    return results


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
