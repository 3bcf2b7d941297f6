"""A benchmark figure and how figures are printed and written.

Strategy: every figure carries its own baseline, measured in the same invocation, and the
ratio between them, always `value / baseline`; the goal applies to that ratio, or to the
value itself when `goal_of` says "value" (the zero guest's GB/s: its baseline, a memory
scan, is context, not the target), at most (`lower_is_better`: latencies, memory) or at
least.  The rich table and `--json` are rendered from the same list; the JSON shape is
issue 7's contract, {"figures": [{"name", "value", "unit", "baseline", "ratio", "goal",
...}]}, plus "met", "goal_of", "baseline_name", "lower_is_better" and "note"; issue 15
adds "page_path" (which page path this process ran: harness.native.path()) and
"peer_page_path" (what the peer processes of the figure ran, each asked with `x-native`;
"" when the figure has no harness peer), both as `path_text` gives them, and at the top level "page_path" (this
process's `native.describe()` and whether HARNESS_NO_EXTENSIONS was set).  A figure
that could not be measured has value None and says why in its note.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import native


def _digits(x: float) -> float:
    """Six significant digits: a small figure (a few MB in GB) keeps its precision, so
    value / baseline still gives the ratio."""
    return float(f"{x:.6g}")


@dataclass
class Figure:
    name: str
    value: float | None  # None: not measured (the note says why)
    unit: str
    baseline: float | None  # measured in the same run; None when it could not be
    ratio: float | None  # value / baseline
    goal: float | None  # what the ratio (or the value, see goal_of) must reach; None: none
    note: str = ""
    lower_is_better: bool = False  # latencies, memory: the goal is a maximum
    baseline_name: str = ""  # what the baseline is
    goal_of: str = "ratio"  # "ratio" or "value"
    page_path: str = field(default_factory=lambda: path_text(native.path(),
                                                             native.describe()))
    peer_page_path: str = ""  # the peers' (native.path() in each, asked); "" if none

    @classmethod
    def of(cls, name: str, value: float | None, unit: str, baseline: float | None,
           goal: float | None = None, note: str = "", lower_is_better: bool = False,
           baseline_name: str = "", goal_of: str = "ratio",
           peer_page_path: str = "") -> Figure:
        if value is not None and not math.isfinite(value):
            value = None  # not measured: the caller's note says why
        ratio = value / baseline if baseline and value is not None else None
        return cls(name, None if value is None else _digits(value), unit,
                   None if baseline is None else _digits(baseline),
                   None if ratio is None else _digits(ratio), goal, note, lower_is_better,
                   baseline_name, goal_of, peer_page_path=peer_page_path)

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


def path_text(path: str, parts: dict[str, str]) -> str:
    """"c", or the path with why, e.g. "python [python (HARNESS_NO_EXTENSIONS=1)]"."""
    return path if path == "c" else f"{path} [{', '.join(sorted(set(parts.values())))}]"


def _path_text(f: Figure) -> str:
    """This process's page path, and the peers' after a slash when they differ."""
    if f.peer_page_path and f.peer_page_path != f.page_path:
        return f"{f.page_path}/peers {f.peer_page_path}"
    return f.page_path


def page_path_summary() -> dict[str, object]:
    """The JSON's top-level "page_path": what this process runs, and why."""
    return {"path": native.path(), "parts": native.describe(),
            native.DISABLE_ENV: native.disabled()}


def render(figures: list[Figure]) -> Table:
    summary = page_path_summary()
    table = Table(title="harness bench (ratio = value / baseline, both from this run; page "
                        f"path {summary['path']}: {summary['parts']})")
    for column in ("figure", "value", "baseline", "ratio", "goal", "", "path",
                   "baseline is / note"):
        table.add_column(column, no_wrap=column in ("figure", "value", "baseline"))
    for f in figures:
        verdict = {True: "[green]met[/]", False: "[red]MISSED[/]", None: ""}[f.met]
        about = "; ".join(p for p in (f.baseline_name, f.note) if p)
        table.add_row(f.name, _number(f.value, f.unit), _number(f.baseline, f.unit),
                      "-" if f.ratio is None else f"{f.ratio:.2f}", f.goal_text(), verdict,
                      _path_text(f), about)
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
    Path(path).write_text(json.dumps({"figures": [f.as_json() for f in figures],
                                      "page_path": page_path_summary()}, indent=1))
