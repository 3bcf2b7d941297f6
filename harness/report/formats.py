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
    doc: dict[str, Any] = {"scenarios": [r.to_json() for r in results]}
    rounds = flakiness(results)
    if rounds:
        doc["repeat"] = rounds
    return json.dumps(doc, indent=1, default=str)


def flakiness(results: Sequence[ScenarioResult]) -> list[dict[str, Any]]:
    """Per scenario run more than once (`--repeat`): its verdicts, and whether they differ."""
    by_name: dict[tuple[str, str], list[ScenarioResult]] = {}
    for r in results:
        if r.repeat is not None:
            by_name.setdefault((r.file, r.name), []).append(r)
    out = []
    for (file, name), rounds in by_name.items():
        verdicts = [r.verdict for r in rounds]
        out.append({"name": name, "file": file, "seed": rounds[0].seed, "rounds": len(rounds),
                    "passed": verdicts.count("pass"), "verdicts": verdicts,
                    "flaky": len(set(verdicts)) > 1})
    return out


def junit_report(results: Sequence[ScenarioResult]) -> str:
    suite = ET.Element("testsuite", name="migration-harness", tests=str(len(results)),
                       failures=str(sum(r.verdict == "fail" for r in results)),
                       errors=str(sum(r.verdict == "error" for r in results)),
                       time=f"{sum(r.duration for r in results):.3f}")
    for r in results:
        name = r.name if r.repeat is None else f"{r.name}[round {r.repeat}]"
        case = ET.SubElement(suite, "testcase", classname="scenarios", name=name,
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
    for fault in r.faults:
        where = fault.detail.get("offset")
        lines.append(f"  fault {fault.kind} on {fault.target} at {fault.t:.3f} s "
                     f"(step {fault.step}" + (f", stream offset {where}" if where is not None
                                              else "") + ")")
    if r.events_log:
        lines.append(f"  event log: {r.events_log}")
    lines += [_host_line(name, host) for name, host in r.hosts.items()]
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


def _host_line(name: str, host: dict[str, Any]) -> str:
    """One host of a multi-host run: agent, machine, clock offset, how it ended."""
    facts = host.get("facts") or {}
    clock = host.get("clock") or {}
    text = f"  host {name}: agent {host.get('agent')} ({host.get('state', '?')})"
    if facts:
        text += (f", {facts.get('hostname')}, {facts.get('cpu-count')} CPUs, "
                 f"{_mib(facts.get('memory-available'))} free of "
                 f"{_mib(facts.get('memory-total'))}")
    if clock:
        text += (f", clock offset {clock['offset'] * 1e3:+.3f} ms "
                 f"(rtt {clock['rtt'] * 1e3:.3f} ms)")
    if host.get("dead"):
        text += f", dead: {host['dead']}"
    return text


#: what the console timeline shows: statuses, passes, runstates, steps, faults, exits
TIMELINE_EVENTS = {"MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "step", "fault", "armed",
             "exited", "thawed", "migrate", "FAULT", "WIRE", "SESSION", "agent-connected",
             "agent-missing", "agent-dead", "link-undone"}


def timeline_lines(r: ScenarioResult, limit: int = 60) -> list[str]:
    """The run's history, one line per status change, pass, step, fault or exit."""
    rows = [e for e in r.timeline if e.name in TIMELINE_EVENTS]
    lines = []
    for e in rows[:limit]:
        lines.append(f"  {e.t:8.3f}s  {e.peer:<11} {timeline_text(e.name, e.data)}")
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more (the JSON report and the event log "
                     f"have them all)")
    return lines


def timeline_text(name: str, data: dict[str, Any]) -> str:
    if name == "MIGRATION":
        return f"status {data.get('status')}"
    if name == "MIGRATION_PASS":
        return f"pass {data.get('pass')}"
    if name in ("step", "fault", "FAULT", "WIRE"):
        keep = {k: v for k, v in data.items() if k not in ("result",) and v not in (None, {})}
        return f"{name} " + ", ".join(f"{k}={v}" for k, v in keep.items())
    return f"{name} " + ", ".join(f"{k}={v}" for k, v in data.items()) if data else name


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
            if len(results) == 1:
                console.print("  timeline:", markup=False, highlight=False)
                for line in timeline_lines(r):
                    console.print(line, markup=False, highlight=False)
    for entry in flakiness(results):
        verdict = "FLAKY" if entry["flaky"] else "stable"
        console.print(f"{entry['name']}: {entry['passed']}/{entry['rounds']} rounds passed "
                      f"with seed {entry['seed']} - {verdict}", markup=False, highlight=False)
