"""The HTML report's plots: matplotlib figures rendered to PNG data URIs.

Strategy: matplotlib's object API on the Agg canvas (`Figure`, never pyplot: no global
state, no GUI backend, safe in any thread), one function per plot over a scenario dict of
the JSON report (`series.py` derives what is drawn).  Each returns a `Plot` (a name, a
title, the PNG as a `data:` URI) or None when the run has nothing to show for it (no
passes, no postcopy requests, no downtime).  Small figures at 80 dpi keep a scenario's
plots well under a second.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import series
from .series import STATUS_ORDER, Story

MiB = 1 << 20
DPI = 80
COLOURS = {"setup": "#9ecae1", "active": "#3182bd", "pre-switchover": "#6baed6",
           "device": "#08519c", "postcopy-active": "#8c6bb1", "postcopy-paused": "#fd8d3c",
           "postcopy-recover": "#fdae6b", "cancelling": "#bdbdbd", "cancelled": "#737373",
           "failed": "#de2d26", "completed": "#31a354", "exited": "#252525"}
FAULT = "#e6550d"
DOWNTIME = "#756bb1"


@dataclass
class Plot:
    name: str  # timeline | transfer | passes | latency | downtime
    title: str
    uri: str  # data:image/png;base64,...


def scenario_plots(sc: dict[str, Any]) -> list[Plot]:
    """Every plot the scenario has data for, in the report's order."""
    st = series.story(sc)
    makers: list[Callable[[dict[str, Any], Story], Plot | None]] = [
        timeline_plot, transfer_plot, passes_plot, latency_plot, downtime_plot]
    return [p for p in (make(sc, st) for make in makers) if p is not None]


def _render(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(height: float) -> Figure:
    return Figure(figsize=(10, height), layout="constrained")


def _shade(ax: Axes, st: Story, labels: bool) -> None:
    """Fault windows (shaded or a line, labelled) and the downtime span on an axis."""
    top = ax.get_ylim()[1]
    for fault in st.faults:
        if fault.end is not None and fault.end > fault.start:
            ax.axvspan(fault.start, fault.end, color=FAULT, alpha=0.18, lw=0)
        else:
            ax.axvline(fault.start, color=FAULT, lw=1.5, ls="--")
        if labels:
            ax.text(fault.start, top, " " + fault.label, color=FAULT, fontsize=8,
                    va="bottom", ha="left", clip_on=False)
    if st.downtime is not None:
        ax.axvspan(st.downtime.start, max(st.downtime.end, st.downtime.start + st.end / 400),
                   facecolor="none", edgecolor=DOWNTIME, hatch="///", lw=0.8)


def timeline_plot(sc: dict[str, Any], st: Story) -> Plot:
    """Each peer's statuses as bands, the passes as ticks, faults and downtime marked."""
    fig = _figure(2.6)
    ax = fig.add_subplot()
    rows = [("destination", 0.0), ("source", 1.0)]
    seen: list[str] = []
    for peer, y in rows:
        for span in st.statuses[peer]:
            width = max(span.end - span.start, st.end / 500)
            colour = COLOURS.get(span.label, "#cccccc")
            ax.broken_barh([(span.start, width)], (y + 0.1, 0.6), facecolors=colour)
            if span.label not in seen:
                seen.append(span.label)
            if width > st.end / 9:
                ax.text(span.start + width / 2, y + 0.4, span.label, ha="center",
                        va="center", fontsize=8, color="white")
    for t, number in st.passes:
        ax.plot([t, t], [1.72, 1.9], color="black", lw=1)
        ax.text(t, 1.93, str(number), ha="center", va="bottom", fontsize=7)
    ax.set_ylim(-0.1, 2.25)
    ax.set_xlim(0, st.end)
    _shade(ax, st, labels=True)
    if st.downtime is not None:
        right = st.downtime.end > st.end * 0.55  # the label goes where there is room
        ax.text(st.downtime.start if right else st.downtime.end, -0.08,
                st.downtime.label + " " if right else " " + st.downtime.label,
                color=DOWNTIME, fontsize=8, va="bottom", ha="right" if right else "left")
    ax.set_yticks([0.4, 1.4], ["destination", "source"])
    ax.set_xlabel("seconds since migrate (ticks: passes)")
    handles = [ax.bar(0, 0, color=COLOURS.get(s, "#cccccc"), label=s) for s in
               sorted(seen, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else 99)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
              frameon=False)
    return Plot("timeline", "Timeline: statuses, passes, faults, downtime", _render(fig))


def transfer_plot(sc: dict[str, Any], st: Story) -> Plot | None:
    """Transferred and remaining bytes over time, with the passes and faults."""
    t, transferred = series.series(sc, "transferred")
    if len(t) < 2:
        return None
    _, remaining = series.series(sc, "remaining")
    _, total = series.series(sc, "total")
    fig = _figure(3.0)
    ax = fig.add_subplot()
    ax.plot(t, [v / MiB for v in transferred], label="transferred", color="#3182bd")
    ax.plot(t, [v / MiB for v in remaining], label="remaining", color="#e6550d")
    if max(total) > 0:
        ax.axhline(max(total) / MiB, color="#999999", ls=":", lw=1, label="guest RAM")
    for when, _number in st.passes:
        ax.axvline(when, color="#cccccc", lw=0.8, zorder=0)
    ax.set_xlim(0, st.end)
    ax.set_ylim(bottom=0)
    _shade(ax, st, labels=False)
    ax.set_xlabel("seconds since migrate (grey lines: passes)")
    ax.set_ylabel("MiB")
    ax.legend(loc="best", fontsize=8)
    return Plot("transfer", "Transferred and remaining", _render(fig))


def passes_plot(sc: dict[str, Any], st: Story) -> Plot | None:
    """Bandwidth and dirty rate of each pass (MiB/s)."""
    rows = [p for p in sc.get("passes", []) if isinstance(p, dict)]
    if not rows:
        return None
    fig = _figure(2.8)
    ax = fig.add_subplot()
    x = list(range(len(rows)))
    bandwidth = [(p.get("bandwidth") or 0) / MiB for p in rows]
    dirty = [(p.get("dirty-rate") or 0) / MiB for p in rows]
    ax.bar([i - 0.2 for i in x], bandwidth, 0.4, label="bandwidth", color="#3182bd")
    ax.bar([i + 0.2 for i in x], dirty, 0.4, label="dirty rate", color="#e6550d")
    ax.set_xticks(x, [f"{p.get('pass')}\n{p.get('duration', 0):.2f} s" for p in rows],
                  fontsize=8)
    ax.set_xlabel("pass (and how long it took)")
    ax.set_ylabel("MiB/s")
    ax.legend(fontsize=8)
    return Plot("passes", "Bandwidth and dirty rate per pass", _render(fig))


def latency_plot(sc: dict[str, Any], st: Story) -> Plot | None:
    """Histogram of postcopy page request -> page placed latencies (log scale)."""
    lat = series.latency(sc)
    hist = lat.get("histogram") or {}
    edges, counts = hist.get("edges-us") or [], hist.get("counts") or []
    if not counts or len(edges) != len(counts) + 1:
        return None
    fig = _figure(2.8)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color="#8c6bb1")
    ax.set_xscale("log")
    for key, style in (("p50", "-"), ("p99", "--")):
        if isinstance(lat.get(key), (int, float)):
            ax.axvline(lat[key], color="black", ls=style, lw=1,
                       label=f"{key} {lat[key]:.0f} us")
    ax.set_xlabel("page request sent -> page placed (us)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)
    return Plot("latency", f"Postcopy request latency ({lat.get('count', 0)} requests)",
                _render(fig))


def downtime_plot(sc: dict[str, Any], st: Story) -> Plot | None:
    """The downtime the source reports beside what the timeline saw (STOP -> RESUME), and
    how long the destination guest was blocked on missing pages in postcopy."""
    stats = sc.get("stats") or {}
    bars: list[tuple[str, float]] = []
    if isinstance(stats.get("downtime"), (int, float)):
        bars.append(("reported by the source", float(stats["downtime"])))
    if st.downtime is not None:
        bars.append(("source STOP -> destination RESUME",
                     (st.downtime.end - st.downtime.start) * 1000))
    dst = sc.get("destination-stats") or {}  # QEMU's figure (with the capability), else ours
    blocked = dst.get("postcopy-blocktime", (dst.get("x-postcopy") or {}).get("blocked-ms"))
    if isinstance(blocked, (int, float)):
        bars.append(("postcopy: guest blocked on pages", float(blocked)))
    if not bars:
        return None
    fig = _figure(0.5 + 0.45 * len(bars))
    ax = fig.add_subplot()
    labels, values = zip(*bars)
    ax.barh(list(labels), list(values), color=DOWNTIME)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.0f} ms", va="center", fontsize=8)
    ax.set_xlabel("ms")
    ax.set_xlim(0, max(max(values) * 1.25, 1.0))
    ax.tick_params(axis="y", labelsize=8)
    return Plot("downtime", "Downtime", _render(fig))
