"""A benchmark figure and how figures are printed and written.

Strategy: every figure carries its own baseline, measured in the same invocation, and the
ratio between them, always `value / baseline`; the goal applies to that ratio, or to the
value itself when `goal_of` says "value" (the zero guest's GB/s: its baseline, a memory
scan, is context, not the target), at most (`lower_is_better`: latencies, memory) or at
least.  The rich table and `--json` are rendered from the same list; the JSON shape is
issue 7's contract, {"figures": [{"name", "value", "unit", "baseline", "ratio", "goal",
...}]}, plus "met", "goal_of", "baseline_name", "lower_is_better" and "note".
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _digits(x: float) -> float:
    """Six significant digits: a small figure (a few MB in GB) keeps its precision, so
    value / baseline still gives the ratio."""
    return float(f"{x:.6g}")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None  # measured in the same run; None when it could not be
    ratio: float | None  # value / baseline
    goal: float | None  # what the ratio (or the value, see goal_of) must reach; None: none
    note: str = ""
    lower_is_better: bool = False  # latencies, memory: the goal is a maximum
    baseline_name: str = ""  # what the baseline is
    goal_of: str = "ratio"  # "ratio" or "value"

    @classmethod
    def of(cls, name: str, value: float, unit: str, baseline: float | None,
           goal: float | None = None, note: str = "", lower_is_better: bool = False,
           baseline_name: str = "", goal_of: str = "ratio") -> Figure:
        ratio = value / baseline if baseline else None
        return cls(name, _digits(value), unit, None if baseline is None else _digits(baseline),
                   None if ratio is None else _digits(ratio), goal, note, lower_is_better,
                   baseline_name, goal_of)

    @property
    def met(self) -> bool | None:
        judged = self.value if self.goal_of == "value" else self.ratio
        if self.goal is None or judged is None:
            return None
        return judged <= self.goal if self.lower_is_better else judged >= self.goal

    def goal_text(self) -> str:
        if self.goal is None:
            return "-"
        sign = "<=" if self.lower_is_better else ">="
        return f"{sign} {self.goal:g} {self.unit}" if self.goal_of == "value" else \
            f"{sign} {self.goal:g}x"

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "met": self.met}


def _number(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.3f} {unit}"


def render(figures: list[Figure]) -> Table:
    table = Table(title="harness bench (ratio = value / baseline, both from this run)")
    for column in ("figure", "value", "baseline", "ratio", "goal", "", "baseline is / note"):
        table.add_column(column, no_wrap=column in ("figure", "value", "baseline"))
    for f in figures:
        verdict = {True: "[green]met[/]", False: "[red]MISSED[/]", None: ""}[f.met]
        about = "; ".join(p for p in (f.baseline_name, f.note) if p)
        table.add_row(f.name, _number(f.value, f.unit), _number(f.baseline, f.unit),
                      "-" if f.ratio is None else f"{f.ratio:.2f}", f.goal_text(), verdict,
                      about)
    return table


def table(figures: list[Figure]) -> str:
    """The table as text (wide enough that no figure name is cut)."""
    console = Console(width=_width(), record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(figures))
    console.file.close()
    return console.export_text()


def print_table(figures: list[Figure]) -> None:
    Console(width=_width()).print(render(figures))


def _width() -> int:
    try:
        return max(160, os.get_terminal_size().columns)
    except OSError:
        return 200


def write_json(figures: list[Figure], path: str | Path) -> None:
    Path(path).write_text(json.dumps({"figures": [f.as_json() for f in figures]}, indent=1))
