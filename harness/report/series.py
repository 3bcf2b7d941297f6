"""What the plots draw, derived from one scenario of a JSON report (a dict, as written).

Strategy: pure functions over the report's scenario dict, so that `harness run --html` and
`harness report OLD.json NEW.json --html` draw from the same data, and a report written by
an older harness (no `samples`) still renders what it has.  Every time here is in seconds
since `migrate` was issued (the runner's `migrate` timeline entry), the zero of every plot.
Fault windows come from the runner's `fault` entries (process and link faults) and the
proxy's `FAULT` entries (network faults): they start there and end after their `duration`,
at the matching `thawed` entry, or -- a fault without an end, like a bandwidth cap -- at the
end of the run; a fault without a duration (kill, reset, corrupt...) is an instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: statuses a run may show, in the order the legend lists them
STATUS_ORDER = ("setup", "active", "pre-switchover", "device", "postcopy-active",
                "postcopy-paused", "postcopy-recover", "cancelling", "cancelled", "failed",
                "completed", "exited")


@dataclass
class Span:
    start: float
    end: float
    label: str


@dataclass
class FaultWindow:
    start: float
    end: float | None  # None: an instant
    label: str  # kind and where, e.g. "net.blackhole main forward"


@dataclass
class Story:
    """A scenario's history on the plots' time axis."""

    end: float  # where the time axis ends
    statuses: dict[str, list[Span]]  # per peer, its statuses as spans
    passes: list[tuple[float, int]]  # (t, pass number) of every MIGRATION_PASS
    faults: list[FaultWindow]
    downtime: Span | None  # the source stopped -> the destination runs


def migrate_time(sc: dict[str, Any]) -> float:
    """When `migrate` was issued, on the timeline's clock (0 when it never was)."""
    for entry in sc.get("timeline", []):
        if entry.get("name") == "migrate":
            return float(entry.get("t", 0.0))
    return 0.0


def story(sc: dict[str, Any]) -> Story:
    t0 = migrate_time(sc)
    timeline = [e for e in sc.get("timeline", []) if isinstance(e, dict)]
    last = max([float(e.get("t", 0.0)) for e in timeline if e.get("name") != "verdict"]
               + [float(s.get("t", 0.0)) for s in sc.get("samples", [])] + [t0])
    end = max(last - t0 + 0.3, 0.5)
    statuses = {peer: _status_spans(timeline, peer, t0, end)
                for peer in ("source", "destination")}
    passes = [(float(e["t"]) - t0, int(e.get("data", {}).get("pass", 0))) for e in timeline
              if e.get("name") == "MIGRATION_PASS" and e.get("peer") == "source"]
    return Story(end, statuses, passes, fault_windows(timeline, t0, end),
                 downtime_span(timeline, t0, sc))


def _status_spans(timeline: list[dict[str, Any]], peer: str, t0: float, end: float
                  ) -> list[Span]:
    changes = []
    for e in timeline:
        if e.get("peer") != peer:
            continue
        if e.get("name") == "MIGRATION":
            changes.append((float(e["t"]) - t0, str(e.get("data", {}).get("status"))))
        elif e.get("name") == "exited":
            changes.append((float(e["t"]) - t0, "exited"))
    return [Span(max(t, 0.0), max(nxt[0], t, 0.0), status)
            for (t, status), nxt in zip(changes, [*changes[1:], (end, "")])]


def fault_windows(timeline: list[dict[str, Any]], t0: float, end: float) -> list[FaultWindow]:
    thawed = {str(e.get("data", {}).get("step")): float(e["t"]) - t0 for e in timeline
              if e.get("name") == "thawed"}
    out = []
    for e in timeline:
        name, data = e.get("name"), e.get("data", {})
        if name == "fault" and e.get("peer") == "runner":
            if data.get("skipped"):
                continue
            label = f"{data.get('kind')} {data.get('target', '')}".strip()
            duration = data.get("duration")
            step = str(data.get("step"))
        elif name == "FAULT" and e.get("peer") == "proxy":
            label = " ".join(str(x) for x in (data.get("kind"), data.get("channel"),
                                               data.get("direction")) if x)
            duration = (data.get("detail") or {}).get("duration")
            step = ""
        else:
            continue
        start = float(e["t"]) - t0
        stop: float | None
        if isinstance(duration, (int, float)):
            stop = start + float(duration)
        elif step in thawed:
            stop = thawed[step]
        elif str(data.get("kind")) in _LASTING:
            stop = end
        else:
            stop = None
        out.append(FaultWindow(start, stop, label))
    return out


#: fault kinds that last until undone (or the end of the run) when they have no duration
_LASTING = {"stop", "net.blackhole", "net.delay", "net.jitter", "net.bandwidth",
            "link.down", "link.blackhole", "link.bandwidth", "link.delay"}


def downtime_span(timeline: list[dict[str, Any]], t0: float, sc: dict[str, Any]
                  ) -> Span | None:
    """From the source's last STOP before the destination's first RESUME to that RESUME,
    labelled with the downtime the source reports."""
    resume = next((float(e["t"]) - t0 for e in timeline
                   if e.get("peer") == "destination" and e.get("name") == "RESUME"), None)
    stops = [float(e["t"]) - t0 for e in timeline
             if e.get("peer") == "source" and e.get("name") == "STOP"
             and (resume is None or float(e["t"]) - t0 <= resume)]
    if not stops:
        return None
    reported = (sc.get("stats") or {}).get("downtime")
    text = f"downtime {reported} ms" if reported is not None else "downtime"
    if resume is not None:
        observed = (resume - stops[-1]) * 1000
        return Span(stops[-1], resume, f"{text} (source STOP -> destination RESUME "
                                       f"{observed:.0f} ms)")
    if isinstance(reported, (int, float)):
        return Span(stops[-1], stops[-1] + reported / 1000, text)
    return None


def series(sc: dict[str, Any], key: str) -> tuple[list[float], list[float]]:
    """(t, value) of one field of the samples that have RAM figures (not those of setup)."""
    t0 = migrate_time(sc)
    rows = [s for s in sc.get("samples", []) if isinstance(s, dict) and s.get("total")]
    return [float(s["t"]) - t0 for s in rows], [float(s.get(key) or 0) for s in rows]


def latency(sc: dict[str, Any]) -> dict[str, Any]:
    """The destination's postcopy request -> placed latencies (count, p50, p99, max,
    histogram), {} when there were none."""
    stats = sc.get("destination-stats") or {}
    return dict((stats.get("x-postcopy") or {}).get("latency-us") or {})
