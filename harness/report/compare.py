"""`harness report A.json B.json ...`: runs side by side.

Strategy: load each JSON report written by `harness run --json` (checking that it is one,
and naming the file and the place when it is not), key its scenarios by name (and round,
for `--repeat`), and build one row per figure per scenario with a column per run -- the
same rows feed the rich table on the console and the HTML comparison.  With exactly two
runs a last column gives the second's figure over the first's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.errors import ScenarioFailure

MiB = 1 << 20


class ReportError(ScenarioFailure):
    """A file that is not a harness JSON report (the message names it and why)."""


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check one `harness run --json` report."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ReportError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{p}: cannot read it: {getattr(err, 'strerror', None) or err}"
                          ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{p}: not a harness JSON report: not JSON (line {err.lineno}, "
                          f"column {err.colno}: {err.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scenarios"), list):
        raise ReportError(f'{p}: not a harness JSON report: no "scenarios" list at the top '
                          f"(write one with `harness run ... --json FILE`)")
    for i, sc in enumerate(doc["scenarios"]):
        missing = [k for k in ("name", "verdict") if not isinstance(sc, dict) or k not in sc]
        if missing:
            raise ReportError(f"{p}: not a harness JSON report: scenarios[{i}] has no "
                              f"{' and no '.join(repr(k) for k in missing)}")
    return doc


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Each run's column title: its file name, or its whole path when names repeat."""
    names = [Path(p).name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def scenario_key(sc: dict[str, Any]) -> str:
    return str(sc["name"]) + (f" [round {sc['repeat']}]" if sc.get("repeat") else "")


def by_scenario(runs: Sequence[tuple[str, dict[str, Any]]]
                ) -> list[tuple[str, list[dict[str, Any] | None]]]:
    """Scenario keys in order of first appearance, each with its dict in every run (None
    where a run does not have it)."""
    keys: list[str] = []
    index: list[dict[str, dict[str, Any]]] = []
    for _, doc in runs:
        mine = {scenario_key(sc): sc for sc in doc["scenarios"]}
        keys += [k for k in mine if k not in keys]
        index.append(mine)
    return [(k, [mine.get(k) for mine in index]) for k in keys]


def _ram(sc: dict[str, Any], key: str) -> Any:
    return ((sc.get("stats") or {}).get("ram") or {}).get(key)


def _latency(sc: dict[str, Any], key: str) -> Any:
    stats = sc.get("destination-stats") or {}
    return ((stats.get("x-postcopy") or {}).get("latency-us") or {}).get(key)


#: (row title, how to read it from a scenario, whether a ratio of two runs means something)
METRICS: list[tuple[str, Callable[[dict[str, Any]], Any], bool]] = [
    ("verdict", lambda sc: sc.get("verdict"), False),
    ("source / destination", lambda sc: f"{(sc.get('source') or {}).get('status')} / "
                                        f"{(sc.get('destination') or {}).get('status')}",
     False),
    ("total time (ms)", lambda sc: (sc.get("stats") or {}).get("total-time"), True),
    ("downtime (ms)", lambda sc: (sc.get("stats") or {}).get("downtime"), True),
    ("transferred (MiB)", lambda sc: _ram(sc, "transferred") / MiB
     if isinstance(_ram(sc, "transferred"), (int, float)) else None, True),
    ("passes", lambda sc: _ram(sc, "dirty-sync-count"), True),
    ("throughput (Mbps)", lambda sc: _ram(sc, "mbps"), True),
    ("postcopy requests", lambda sc: _ram(sc, "postcopy-requests"), True),
    ("request latency p50 (us)", lambda sc: _latency(sc, "p50"), True),
    ("request latency p99 (us)", lambda sc: _latency(sc, "p99"), True),
    ("run time (s)", lambda sc: sc.get("duration"), True),
]


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def comparison(runs: Sequence[tuple[str, dict[str, Any]]]
               ) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """Per scenario key: (metric, [value per run] + [ratio] when there are two runs)."""
    out = []
    for key, scs in by_scenario(runs):
        rows = []
        for title, read, ratio in METRICS:
            values = [read(sc) if sc is not None else None for sc in scs]
            cells = [_text(v) if sc is not None else "(absent)" for v, sc in zip(values, scs)]
            if len(runs) == 2:
                a, b = values
                cells.append(f"{b / a:.2f}x" if ratio and isinstance(a, (int, float))
                             and isinstance(b, (int, float)) and a else "")
            rows.append((title, cells))
        out.append((key, rows))
    return out


_VERDICT_STYLE = {"pass": "green", "fail": "red", "error": "yellow"}


def print_comparison(runs: Sequence[tuple[str, dict[str, Any]]], console: Console) -> None:
    table = Table(title="migration-harness: runs compared")
    table.add_column("scenario", overflow="fold")
    table.add_column("figure", no_wrap=True)
    for label, _ in runs:
        table.add_column(label, justify="right")
    if len(runs) == 2:
        table.add_column("2nd / 1st", justify="right")
    for key, rows in comparison(runs):
        for i, (title, cells) in enumerate(rows):
            styled = [Text(c, style=_VERDICT_STYLE.get(c, "")) if title == "verdict" else
                      Text(c) for c in cells]
            table.add_row(Text(key if i == 0 else ""), Text(title), *styled,
                          end_section=i == len(rows) - 1)
    console.print(table)
