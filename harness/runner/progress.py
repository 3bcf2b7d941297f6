"""The console's progress bar while a scenario runs (rich), fed by the coordinator.

Strategy: the coordinator calls `progress(what, info)` from its loop (a status, a pass, a
sample of the source's query-migrate, where a console can attach); this turns those into
one rich progress line: the bar is the share of guest RAM in sync at the destination
(total - remaining, over total: it fills in the first pass and dips with every pass that
finds pages dirtied again), beside transferred / total, remaining, the pass and both
peers' statuses.  Before the first sample the bar pulses.  On a console that is not a
terminal (or quiet) nothing is drawn at all; the bar disappears when the run ends, the
summary follows.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column

MiB = 1 << 20


class MigrationProgress:
    """A context manager; `update` is the coordinator's `progress` callback."""

    def __init__(self, name: str, console: Console) -> None:
        self.name = name
        self.console = console
        self.state: dict[str, Any] = {"source": "none", "destination": "none", "pass": 0}
        self.sample: dict[str, Any] = {}
        self._progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
            TimeElapsedColumn(), TextColumn("{task.fields[detail]}", table_column=Column(
                no_wrap=True, overflow="ellipsis", max_width=max(20, console.width - 52))),
            console=console, transient=True, disable=console.quiet or not console.is_terminal)
        self._task: TaskID | None = None

    def __enter__(self) -> Self:
        self._progress.start()
        self._task = self._progress.add_task(self.name, total=None, detail=self.detail())
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, what: str, info: dict[str, Any]) -> None:
        if what == "status":
            self.state[info["peer"]] = info["status"]
        elif what == "pass":
            self.state["pass"] = info["pass"]
        elif what == "sample":
            self.sample = info
        elif what == "control":  # where a console can attach while the run goes on
            self._progress.console.print(f"{self.name}: harness monitor --attach "
                                         f"{info['path']}", highlight=False, soft_wrap=True,
                                         markup=False)
        if self._task is None:
            return
        total = int(self.sample.get("total") or 0)
        in_sync = max(0, total - int(self.sample.get("remaining") or 0))
        self._progress.update(self._task, total=total or None, completed=in_sync,
                              detail=self.detail())

    def detail(self) -> str:
        """What matters first, for a narrow terminal: the pass, what is sent, what is left."""
        s, st = self.sample, self.state
        text = f"pass {st['pass']}"
        if s.get("total"):
            text += (f", {s.get('transferred', 0) / MiB:.1f}/{s['total'] / MiB:.0f} MiB sent, "
                     f"{s.get('remaining', 0) / MiB:.1f} MiB left")
        return text + f", source {st['source']}, destination {st['destination']}"
