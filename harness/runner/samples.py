"""The source's progress over time: samples of its `query-migrate`, and figures per pass.

Strategy: the coordinator asks the source `query-migrate` in one place (`source_info`);
every answer is handed to a `Sampler`, which keeps a small row of it (time, status, pass,
transferred, remaining, total, mbps, dirty-pages-rate, dirty-sync-count, postcopy
requests).  The coordinator asks a few times a second (`due`), and once more after the
source's MIGRATION and MIGRATION_PASS events, so each pass has a sample at its start: a
pass's figures are the difference between the sample at its start and the one at the next
pass's start (or the last sample).  QEMU's precopy passes end with an empty dirty bitmap,
so what is `remaining` at the start of pass N+1 is what the guest dirtied during pass N
(not when pass N+1 is no longer precopy: a switch to postcopy or the completion does not
wait for an empty bitmap).  Passes announced together get one sample: the first of them
then stands for both.  The number of samples is bounded: past `limit` every other one is
dropped and the period doubles (the pass table is built as the samples come, so it keeps
every pass).
"""

from __future__ import annotations

from typing import Any

from harness.migration.status import FINAL

SAMPLE_PERIOD = 0.2  # seconds between two samples while a migration runs
SAMPLE_LIMIT = 3000  # samples kept at most (then thinned, and taken half as often)


class Sampler:
    """Rows of the source's query-migrate, and the per-pass table built from them."""

    def __init__(self, period: float = SAMPLE_PERIOD, limit: int = SAMPLE_LIMIT) -> None:
        self.period = period
        self.limit = limit
        self.samples: list[dict[str, Any]] = []
        self._passes: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the sample that started the current pass
        self._not_before = 0.0  # after a query that failed: when to ask again

    def due(self, t: float) -> bool:
        """Time for a sample: the period is over and the source's last status was not final."""
        if t < self._not_before:
            return False
        if not self.samples:
            return True
        last = self.samples[-1]
        return last["status"] not in FINAL and t - last["t"] >= self.period

    def next_due(self, t: float) -> float:
        """When (seconds since the run started) a sample is next due, as of `t`."""
        if t < self._not_before:
            return self._not_before
        if not self.samples:
            return t
        last = self.samples[-1]
        return float("inf") if last["status"] in FINAL else last["t"] + self.period

    def add(self, t: float, info: dict[str, Any], pass_: int) -> dict[str, Any]:
        """Record one query-migrate answer taken at `t` (seconds since the run started)
        during pass `pass_` (the last MIGRATION_PASS the source announced)."""
        ram = info.get("ram") or {}
        sample = {"t": round(t, 4), "status": str(info.get("status", "none")), "pass": pass_}
        for key in ("transferred", "remaining", "total", "mbps", "dirty-pages-rate",
                    "dirty-sync-count", "postcopy-requests"):
            value = ram.get(key)
            sample[key] = value if isinstance(value, (int, float)) else 0
        self._follow_passes(sample)
        self.samples.append(sample)
        if len(self.samples) > self.limit:  # thin out, keeping the newest
            kept = self.samples[::2]
            if kept[-1] is not sample:
                kept.append(sample)
            self.samples = kept
            self.period *= 2
        return sample

    def failed(self, t: float) -> None:
        """The source did not answer at `t`: leave it alone for a second."""
        self._not_before = t + 1.0

    def _follow_passes(self, sample: dict[str, Any]) -> None:
        start = self._open
        if start is not None and sample["pass"] > start["pass"]:
            dirtied = sample["remaining"] if sample["status"] == "active" else None
            self._passes.append(_pass_row(start, sample, dirtied))
            start = None
        if start is None and sample["pass"] > 0:
            # a pass first seen with the end of the migration is no pass of its own
            self._open = None if sample["status"] in FINAL else sample

    def passes(self) -> list[dict[str, Any]]:
        """One row per pass: when it started, how long it took, what it sent and at what
        rate, what the guest dirtied meanwhile (bytes, bytes/s; None for the last pass)."""
        rows = list(self._passes)
        start, last = self._open, (self.samples[-1] if self.samples else None)
        if start is not None and last is not None and last is not start:
            rows.append(_pass_row(start, last, None))
        elif start is not None:
            rows.append(_pass_row(start, start, None))
        return rows


def _pass_row(start: dict[str, Any], end: dict[str, Any], dirtied: int | None
              ) -> dict[str, Any]:
    duration = max(0.0, end["t"] - start["t"])
    sent = max(0, int(end["transferred"]) - int(start["transferred"]))
    return {
        "pass": start["pass"], "t": start["t"], "duration": round(duration, 4),
        "status": start["status"], "transferred": sent,
        "bandwidth": round(sent / duration, 1) if duration > 0 else None,
        "dirtied": dirtied,
        "dirty-rate": round(dirtied / duration, 1) if dirtied is not None and duration > 0
        else None,
        "dirty-pages-rate": end["dirty-pages-rate"],
    }
