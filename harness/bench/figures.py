"""A benchmark figure and how figures are printed and written.

Strategy: every figure carries its own baseline, measured in the same invocation, and the
ratio between them; the table and `--json` are rendered from the same list (the JSON shape
is issue 7's contract: {"figures": [{"name", "value", "unit", "baseline", "ratio", "goal"}]}).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None  # measured in the same run; None when it could not be
    ratio: float | None
    goal: float | None  # the ratio to reach, None when there is no goal
    note: str = ""
    lower_is_better: bool = False  # latencies: the ratio must stay at or below the goal

    @classmethod
    def of(cls, name: str, value: float, unit: str, baseline: float | None,
           goal: float | None = None, note: str = "", lower_is_better: bool = False
           ) -> Figure:
        ratio = value / baseline if baseline else None
        return cls(name, round(value, 4), unit, None if baseline is None else round(baseline, 4),
                   None if ratio is None else round(ratio, 4), goal, note, lower_is_better)

    @property
    def met(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio <= self.goal if self.lower_is_better else self.ratio >= self.goal


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "baseline", "ratio", "goal", "", "")]
    for f in figures:
        rows.append((f.name, f"{f.value:.3f} {f.unit}",
                     "-" if f.baseline is None else f"{f.baseline:.3f} {f.unit}",
                     "-" if f.ratio is None else f"{f.ratio:.2f}",
                     "-" if f.goal is None else f"{'<=' if f.lower_is_better else '>='} {f.goal:g}",
                     {True: "met", False: "MISSED", None: ""}[f.met], f.note or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def write_json(figures: list[Figure], path: str | Path) -> None:
    doc = {"figures": [{k: v for k, v in asdict(f).items() if k != "lower_is_better"}
                       for f in figures]}
    Path(path).write_text(json.dumps(doc, indent=1))
