"""Render results: the JSON report of DESIGN.md, JUnit XML for CI, and a console summary.

Strategy: pure functions from `ScenarioResult`s to text; the console part uses rich and
writes to a given console, so tests can capture it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.runner.result import ScenarioResult


def json_report(results: Sequence[ScenarioResult]) -> str:
    return json.dumps({"scenarios": [r.to_json() for r in results]}, indent=1)


def junit_report(results: Sequence[ScenarioResult]) -> str:
    suite = ET.Element("testsuite", name="migration-harness", tests=str(len(results)),
                       failures=str(sum(r.verdict == "fail" for r in results)),
                       errors=str(sum(r.verdict == "error" for r in results)),
                       time=f"{sum(r.duration for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="scenarios", name=r.name,
                             file=r.file, time=f"{r.duration:.3f}")
        if r.verdict == "fail":
            ET.SubElement(case, "failure", message=r.reason).text = _detail(r)
        elif r.verdict == "error":
            ET.SubElement(case, "error", message=r.reason).text = _detail(r)
        ET.SubElement(case, "system-out").text = "\n".join(summary_lines(r))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def _detail(r: ScenarioResult) -> str:
    return "\n".join(f"{'ok' if i.ok else 'FAILED'} {i.name}: {i.detail}" for i in r.invariants)


def _mib(n: Any) -> str:
    return f"{n / (1 << 20):.1f} MiB" if isinstance(n, (int, float)) else "-"


def summary_lines(r: ScenarioResult) -> list[str]:
    st = r.stats
    ram = st.get("ram", {})
    lines = [
        f"{r.name} ({r.file}, seed {r.seed}): {r.verdict.upper()}"
        + (f" - {r.reason}" if r.reason else ""),
        f"  source {r.source.kind}: {r.source.status}, runstate {r.source.runstate}"
        + (f", error: {r.source.error}" if r.source.error else ""),
        f"  destination {r.destination.kind}: {r.destination.status}, runstate "
        f"{r.destination.runstate}"
        + (f", error: {r.destination.error}" if r.destination.error else ""),
    ]
    if ram:
        lines.append(
            f"  total {st.get('total-time', '-')} ms, downtime {st.get('downtime', '-')} ms, "
            f"setup {st.get('setup-time', '-')} ms, transferred {_mib(ram.get('transferred'))}, "
            f"{ram.get('normal', 0)} normal + {ram.get('duplicate', 0)} zero pages, "
            f"{ram.get('dirty-sync-count', 0)} passes, {ram.get('mbps', 0):.0f} Mbps")
    postcopy = r.destination.stats.get("x-postcopy", {})
    if postcopy:
        lat = postcopy.get("latency-us", {})
        lines.append(
            f"  postcopy: {postcopy.get('requests', 0)} page requests"
            + (f", request sent -> page placed p50 {lat['p50']:.0f} us, p99 {lat['p99']:.0f} us"
               if lat else "")
            + f", guest blocked {r.destination.stats.get('postcopy-blocktime', 0)} ms")
    for inv in r.invariants:
        lines.append(f"  {'ok    ' if inv.ok else 'FAILED'} {inv.name}: {inv.detail}")
    return lines


def print_summary(results: Sequence[ScenarioResult], console: Console) -> None:
    table = Table(title="migration-harness", show_lines=False)
    for column in ("scenario", "verdict", "source", "destination", "total ms", "downtime ms",
                   "transferred", "passes"):
        table.add_column(column)
    for r in results:
        ram = r.stats.get("ram", {})
        style = {"pass": "green", "fail": "red", "error": "yellow"}[r.verdict]
        table.add_row(r.name, f"[{style}]{r.verdict}[/{style}]", r.source.status,
                      r.destination.status, str(r.stats.get("total-time", "-")),
                      str(r.stats.get("downtime", "-")), _mib(ram.get("transferred")),
                      str(ram.get("dirty-sync-count", "-")))
    console.print(table)
    for r in results:  # the details: of every scenario that did not pass, or of the only one
        if r.verdict != "pass" or len(results) == 1:
            for line in summary_lines(r):
                console.print(line, markup=False, highlight=False)
