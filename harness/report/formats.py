"""Render results: the JSON report of DESIGN.md, JUnit XML for CI, and a console summary.

Strategy: pure functions from `ScenarioResult`s to text; the console part uses rich and
writes to a given console, so tests can capture it.  Human output is plain words: one time
base (seconds since the runner's `migrate`, said in the headings), values without Python
reprs (no `None`, no `{'kind': ...}`), and a verdict with its reason on one line, which
`report_console()` never wraps when stdout is not a terminal (`grep FAIL` finds it whole).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import __version__
from harness.report.provenance import SCHEMA_VERSION, provenance
from harness.runner.result import ScenarioResult


def json_report(results: Sequence[ScenarioResult]) -> str:
    """DESIGN.md's report, with its `schema-version`, the harness version and provenance."""
    kinds = [peer.kind for r in results for peer in (r.source, r.destination)]
    doc: dict[str, Any] = {"schema-version": SCHEMA_VERSION, "harness-version": __version__,
                           "provenance": provenance(kinds),
                           "scenarios": [r.to_json() for r in results]}
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
                       skipped=str(sum(r.verdict == "skip" for r in results)),
                       time=f"{sum(r.duration for r in results):.3f}")
    for r in results:
        name = r.name if r.repeat is None else f"{r.name}[round {r.repeat}]"
        case = ET.SubElement(suite, "testcase", classname="scenarios", name=name,
                             file=r.file, time=f"{r.duration:.3f}")
        if r.verdict == "fail":
            ET.SubElement(case, "failure", message=r.reason).text = _detail(r)
        elif r.verdict == "error":
            ET.SubElement(case, "error", message=r.reason).text = _detail(r)
        elif r.verdict == "skip":
            ET.SubElement(case, "skipped", message=r.reason)
        ET.SubElement(case, "system-out").text = "\n".join(summary_lines(r))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def _detail(r: ScenarioResult) -> str:
    return "\n".join(f"{'ok' if i.ok else 'FAILED'} {i.name}: {i.detail}" for i in r.invariants)


def report_console(stderr: bool = False) -> Console:
    """The console of human output: a terminal's width in a terminal; otherwise no width at
    all (no wrapping, no truncated table cells), so every line can be grepped whole."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=10_000, soft_wrap=True)


def headline(r: ScenarioResult) -> str:
    """The scenario's verdict and its reason, on one line."""
    if r.verdict == "skip":
        return f"SKIP {r.name} ({r.file}): {r.reason}"
    return (f"{r.name} ({r.file}, seed {r.seed}): {r.verdict.upper()}"
            + (f" - {r.reason}" if r.reason else ""))


def migrate_time(r: ScenarioResult) -> float:
    """The console's time base: when the runner sent `migrate` (0 when it never did)."""
    return next((e.t for e in r.timeline if e.name == "migrate"), 0.0)


def plain(value: Any) -> str:
    """A value in words for human output: no `None`, no dict or list reprs."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items() if v not in (None, {}, ""))
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _mib(n: Any) -> str:
    return f"{n / (1 << 20):.1f} MiB" if isinstance(n, (int, float)) else "-"


def summary_lines(r: ScenarioResult) -> list[str]:
    st = r.stats
    ram = st.get("ram", {})
    if r.verdict == "skip":
        return [headline(r)]
    lines = [headline(r)]
    for role, peer in (("source", r.source), ("destination", r.destination)):
        lines.append(f"  {role} {peer.kind}: {peer.status}"
                     + (f", runstate {peer.runstate}" if peer.runstate else "")
                     + (f", error: {peer.error}" if peer.error else ""))
    if ram:
        lines.append(
            f"  total {st.get('total-time', '-')} ms, downtime {st.get('downtime', '-')} ms, "
            f"setup {st.get('setup-time', '-')} ms, transferred {_mib(ram.get('transferred'))}, "
            f"{ram.get('normal', 0)} normal + {ram.get('duplicate', 0)} zero pages, "
            f"{ram.get('dirty-sync-count', 0)} passes, {ram.get('mbps', 0):.0f} Mbps")
    base = migrate_time(r)
    for fault in r.faults:
        where = fault.detail.get("offset")
        lines.append(f"  fault {fault.kind} on {fault.target} at {fault.t - base:.3f} s "
                     f"after migrate "
                     f"(step {fault.step}" + (f", stream offset {where}" if where is not None
                                              else "") + ")")
    if r.events_log:
        lines.append(f"  event log: {r.events_log}")
    lines += [_host_line(name, host) for name, host in r.hosts.items()]
    postcopy = r.destination.stats.get("x-postcopy", {})
    if postcopy:
        lat = postcopy.get("latency-us", {})
        # QEMU's figure (with the postcopy-blocktime capability), else the harness's own
        blocked = r.destination.stats.get("postcopy-blocktime", postcopy.get("blocked-ms", 0))
        lines.append(
            f"  postcopy: {postcopy.get('requests', 0)} page requests"
            + (f", request sent -> page placed p50 {lat['p50']:.0f} us, p99 {lat['p99']:.0f} us"
               if lat else "")
            + f", guest blocked {blocked} ms")
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
    """The run's history, one line per status change, pass, step, fault or exit, in seconds
    since `migrate` (what came before it is negative)."""
    rows = [e for e in r.timeline if e.name in TIMELINE_EVENTS]
    base = migrate_time(r)
    lines = []
    for e in rows[:limit]:
        lines.append(f"  {e.t - base:8.3f}s  {e.peer:<11} {timeline_text(e.name, e.data)}")
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more (the JSON report and the event log "
                     f"have them all)")
    return lines


def timeline_text(name: str, data: dict[str, Any]) -> str:
    if name == "MIGRATION":
        return f"status {data.get('status')}"
    if name == "MIGRATION_PASS":
        return f"pass {data.get('pass')}"
    skip = ("result",) if name in ("step", "fault", "FAULT", "WIRE") else ()
    words = ", ".join(plain(v) if k == name else plain({k: v}) for k, v in data.items()
                      if k not in skip and v not in (None, {}, ""))
    return f"{name} {words}" if words else name


def print_summary(results: Sequence[ScenarioResult], console: Console,
                  headlines_printed: bool = False) -> None:
    """The table, then the details of every scenario that did not pass (or of the only
    one); `headlines_printed`: each verdict line was printed as its scenario ended, so the
    details leave it out (a verdict is printed once)."""
    table = Table(title="migration-harness", show_lines=False)
    for column in ("scenario", "verdict", "source", "destination", "total ms", "downtime ms",
                   "transferred", "passes"):
        table.add_column(column)
    for r in results:
        ram = r.stats.get("ram", {})
        style = {"pass": "green", "fail": "red", "error": "yellow"}.get(r.verdict, "dim")
        table.add_row(r.name, f"[{style}]{r.verdict}[/{style}]", r.source.status,
                      r.destination.status, str(r.stats.get("total-time", "-")),
                      str(r.stats.get("downtime", "-")), _mib(ram.get("transferred")),
                      str(ram.get("dirty-sync-count", "-")))
    console.print(table)
    for r in results:  # the details: of every scenario that did not pass, or of the only one
        if r.verdict != "skip" and (r.verdict != "pass" or len(results) == 1):
            lines = summary_lines(r)
            if headlines_printed:
                lines[0] = f"{r.name}:"
            for line in lines:
                console.print(line, markup=False, highlight=False)
            if len(results) == 1 and r.timeline:
                console.print("  timeline (seconds since migrate):", markup=False,
                              highlight=False)
                for line in timeline_lines(r):
                    console.print(line, markup=False, highlight=False)
    for entry in flakiness(results):
        verdict = "FLAKY" if entry["flaky"] else "stable"
        console.print(f"{entry['name']}: {entry['passed']}/{entry['rounds']} rounds passed "
                      f"with seed {entry['seed']} - {verdict}", markup=False, highlight=False)
