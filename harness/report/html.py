"""The HTML report: one self-contained file for one run or several side by side.

Strategy: built from the JSON report's dicts (what `harness run --json` writes), so a run
just finished and reports read back by `harness report` render alike.  Plain HTML with
inline CSS and the plots as PNG `data:` URIs (plots.py): no script, no external URL, it
opens anywhere and can be mailed or kept as a CI artifact.  One run: per scenario its
verdict and reason, the scenario itself (description, steps, expect), invariants, both
peers' statistics, faults, plots and the event list.  Every run's provenance (harness
version and commit, host, kernel, QEMU version) heads the page.
Several runs: the comparison table (compare.py), then per scenario a column per run.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compare import by_scenario, comparison, scenario_key
from .formats import TIMELINE_EVENTS, timeline_text
from .plots import scenario_plots
from .series import migrate_time

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.25em;margin:0 0 .3em}h3{font-size:1.05em;margin:.8em 0 .3em}
section{border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}
table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #e3e3e3;padding:2px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
.verdict{display:inline-block;padding:1px 10px;border-radius:10px;color:#fff;font-weight:600}
.pass{background:#2b8a3e}.fail{background:#c92a2a}.error{background:#e67700}
.skip{background:#868e96}
.ok{color:#2b8a3e}.bad{color:#c92a2a;font-weight:600}.reason{color:#c92a2a}
.meta{color:#666}.cols{display:grid;gap:1em;align-items:start}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
figure.plot{margin:.6em 0}figure.plot img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-weight:600;font-size:.95em}details{margin-top:.6em}
code{font-size:.9em}.description{white-space:pre-wrap;margin:.3em 0}
"""


VERDICTS = ("pass", "fail", "error", "skip")


def html_report(runs: Sequence[tuple[str, dict[str, Any]]],
                title: str = "migration-harness report") -> str:
    """The whole page for `runs`: (label, JSON report dict) each."""
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    head = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>")
    intro = (f"<h1>{_e(title)}</h1><p class=meta>written {when}; "
             f"{len(runs)} run{'s' if len(runs) != 1 else ''}: "
             f"{', '.join(_e(label) for label, _ in runs)}</p>")
    parts = [head, intro, _provenance(runs)]
    if len(runs) == 1:
        parts.append(_summary(runs[0][1]["scenarios"]))
        parts += [_scenario_section(sc, f"sc{i}")
                  for i, sc in enumerate(runs[0][1]["scenarios"])]
    else:
        parts.append(_comparison_table(runs))
        parts += [_compared_section(key, scs, [label for label, _ in runs], f"sc{i}")
                  for i, (key, scs) in enumerate(by_scenario(runs))]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, runs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    Path(path).write_text(html_report(runs), encoding="utf-8")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _verdict(v: str) -> str:
    return f"<span class='verdict {_e(v)}'>{_e(v.upper())}</span>"


def _provenance(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Where each run came from (reports written before provenance existed: nothing)."""
    rows = []
    for label, doc in runs:
        prov = doc.get("provenance")
        if not isinstance(prov, dict):
            continue
        cells = [f"harness {prov.get('harness-version') or doc.get('harness-version') or '?'}",
                 f"commit {prov['commit']}" if prov.get("commit") else "commit unknown",
                 f"host {prov.get('hostname')}", f"kernel {prov.get('kernel')}"]
        if prov.get("qemu-version"):
            cells.append(str(prov["qemu-version"]))
        rows.append(f"<tr><td>{_e(label)}</td><td>{_e(', '.join(cells))}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Provenance</h3><table class=provenance><tr><th>run</th><th>harness, host, "
            f"QEMU</th></tr>{''.join(rows)}</table>")


def _scenario_spec(sc: dict[str, Any]) -> str:
    """The scenario as written: its description, steps and expect."""
    spec = sc.get("scenario")
    if not isinstance(spec, dict):
        return ""
    parts = ["<details open class=scenario><summary>Scenario</summary>"]
    if spec.get("description"):
        parts.append(f"<p class=description>{_e(str(spec['description']).strip())}</p>")
    steps = spec.get("steps") or []
    if steps:
        main = ("name", "on", "do", "fault")
        rows = "".join(
            f"<tr><td>{_e(step.get('name', ''))}</td><td>{_e(_words(step.get('on')))}</td>"
            f"<td>{_e(_words(step.get('do') or step.get('fault')))}</td>"
            f"<td>{_e(_words({k: v for k, v in step.items() if k not in main}))}</td></tr>"
            for step in steps if isinstance(step, dict))
        parts.append("<h3>Steps</h3><table><tr><th>name</th><th>on</th><th>do / fault</th>"
                     f"<th>also</th></tr>{rows}</table>")
    expect = spec.get("expect") or {}
    if expect:
        rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_words(v))}</td></tr>"
                       for k, v in expect.items())
        parts.append(f"<h3>Expect</h3><table>{rows}</table>")
    parts.append("</details>")
    return "".join(parts)


def _words(value: Any) -> str:
    """A step's trigger or action as `key: value` words, as it was written."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_words(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_words(v) for v in value)
    return "" if value is None else str(value)


def _summary(scenarios: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><a href='#sc{i}'>{_e(scenario_key(sc))}</a></td><td>{_verdict(sc['verdict'])}"
        f"</td><td>{_e((sc.get('source') or {}).get('status'))}</td>"
        f"<td>{_e((sc.get('destination') or {}).get('status'))}</td>"
        f"<td class=num>{_e((sc.get('stats') or {}).get('total-time', '-'))}</td>"
        f"<td class=num>{_e((sc.get('stats') or {}).get('downtime', '-'))}</td></tr>"
        for i, sc in enumerate(scenarios))
    return ("<table><tr><th>scenario</th><th>verdict</th><th>source</th><th>destination</th>"
            f"<th>total ms</th><th>downtime ms</th></tr>{rows}</table>")


def _comparison_table(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label, _ in runs)
    if len(runs) == 2:
        head += "<th>2nd / 1st</th>"
    body = []
    for i, (key, rows) in enumerate(comparison(runs)):
        for j, (metric, cells) in enumerate(rows):
            name = f"<td rowspan={len(rows)}><a href='#sc{i}'>{_e(key)}</a></td>" if j == 0 \
                else ""
            tds = "".join(f"<td>{_verdict(c)}</td>" if metric == "verdict" and c in VERDICTS
                          else f"<td class=num>{_e(c)}</td>" for c in cells)
            body.append(f"<tr>{name}<td>{_e(metric)}</td>{tds}</tr>")
    return (f"<h2>Runs compared</h2><table><tr><th>scenario</th><th>figure</th>{head}</tr>"
            + "".join(body) + "</table>")


def _scenario_section(sc: dict[str, Any], anchor: str) -> str:
    return (f"<section id={anchor}><h2>{_e(scenario_key(sc))} {_verdict(sc['verdict'])}</h2>"
            f"{_scenario_body(sc)}</section>")


def _compared_section(key: str, scs: list[dict[str, Any] | None], labels: list[str],
                      anchor: str) -> str:
    columns = []
    for label, sc in zip(labels, scs):
        inner = (f"<h3>{_e(label)} {_verdict(sc['verdict'])}</h3>{_scenario_body(sc)}"
                 if sc is not None else f"<h3>{_e(label)}</h3><p class=meta>not in this run</p>")
        columns.append(f"<div>{inner}</div>")
    style = f"grid-template-columns:repeat({len(scs)},minmax(0,1fr))"
    return (f"<section id={anchor}><h2>{_e(key)}</h2><div class=cols style='{style}'>"
            + "".join(columns) + "</div></section>")


def _scenario_body(sc: dict[str, Any]) -> str:
    parts = []
    if sc.get("reason"):
        parts.append(f"<p class=reason>{_e(sc['reason'])}</p>")
    parts.append(f"<p class=meta>{_e(sc.get('file'))}, seed {_e(sc.get('seed'))}, "
                 f"run time {_e(sc.get('duration'))} s"
                 + (f", work directory <code>{_e(sc['workdir'])}</code>"
                    if sc.get("workdir") else "") + "</p>")
    parts.append(_scenario_spec(sc))
    parts.append(f"<div class=row><div>{_invariants(sc)}</div><div>{_stats(sc)}</div>"
                 f"<div>{_faults(sc)}{_passes(sc)}</div></div>")
    for plot in scenario_plots(sc):
        parts.append(f"<figure class=plot data-plot={plot.name}><figcaption>{_e(plot.title)}"
                     f"</figcaption><img alt='{_e(plot.title)}' src='{plot.uri}'></figure>")
    parts.append(_events(sc))
    return "".join(parts)


def _invariants(sc: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td class={'ok' if i.get('ok') else 'bad'}>"
                   f"{'ok' if i.get('ok') else 'FAILED'}</td><td>{_e(i.get('name'))}</td>"
                   f"<td>{_e(i.get('detail'))}</td></tr>" for i in sc.get("invariants", []))
    return "<h3>Invariants</h3>" + (f"<table>{rows}</table>" if rows else
                                    "<p class=meta>none checked</p>")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested statistics as dotted keys (lists and histograms left out)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key == "histogram":
            continue
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out[prefix + key] = value
    return out


def _cell(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
        if value >= 1 << 20 and (key.endswith("bytes") or key.split(".")[-1] in
                                 ("transferred", "remaining", "total")):
            text += f" ({value / (1 << 20):,.1f} MiB)"
        return text
    return str(value)


def _stats(sc: dict[str, Any]) -> str:
    peers = []
    for role, key in (("source", "stats"), ("destination", "destination-stats")):
        outcome = {k: v for k, v in (sc.get(role) or {}).items()
                   if k in ("kind", "runstate", "exit-code", "error", "frozen")}
        peers.append({**_flat(outcome), **_flat(sc.get(key) or {})})
    keys = list(dict.fromkeys([*peers[0], *peers[1]]))
    rows = "".join(f"<tr><td>{_e(k)}</td>" + "".join(
        f"<td class=num>{_e(_cell(k, p[k])) if k in p else ''}</td>" for p in peers) + "</tr>"
        for k in keys)
    return ("<h3>Statistics</h3><table><tr><th>query-migrate</th><th>source</th>"
            f"<th>destination</th></tr>{rows}</table>")


def _faults(sc: dict[str, Any]) -> str:
    faults = sc.get("faults") or []
    if not faults:
        return ""
    t0 = migrate_time(sc)
    rows = "".join(
        f"<tr><td class=num>{float(f.get('t', 0)) - t0:.3f}</td><td>{_e(f.get('kind'))}</td>"
        f"<td>{_e(f.get('target'))}</td><td>{_e(f.get('step'))}</td>"
        f"<td>{_e(_fault_detail(f.get('detail') or {}))}</td></tr>" for f in faults)
    return ("<h3>Faults</h3><table><tr><th>s after migrate</th><th>kind</th><th>on</th>"
            f"<th>step</th><th>detail</th></tr>{rows}</table>")


def _fault_detail(detail: dict[str, Any]) -> str:
    flat = _flat(detail)
    return ", ".join(f"{k}={v}" for k, v in flat.items() if v is not None and k not in
                     ("id", "kind"))


def _passes(sc: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td class=num>{_e(p.get('pass'))}</td><td class=num>{p.get('duration', 0):.3f}"
        f"</td><td class=num>{(p.get('transferred') or 0) / (1 << 20):,.1f}</td>"
        f"<td class=num>{_rate(p.get('bandwidth'))}</td><td class=num>"
        f"{_rate(p.get('dirty-rate'))}</td></tr>" for p in sc.get("passes") or [])
    if not rows:
        return ""
    return ("<h3>Passes</h3><table><tr><th>pass</th><th>s</th><th>MiB sent</th>"
            f"<th>MiB/s</th><th>dirtied MiB/s</th></tr>{rows}</table>")


def _rate(value: Any) -> str:
    return f"{value / (1 << 20):,.1f}" if isinstance(value, (int, float)) else "-"


def _events(sc: dict[str, Any]) -> str:
    t0 = migrate_time(sc)
    rows = [e for e in sc.get("timeline") or [] if e.get("name") in TIMELINE_EVENTS]
    body = "".join(
        f"<tr><td class=num>{float(e.get('t', 0)) - t0:.3f}</td><td>{_e(e.get('peer'))}</td>"
        f"<td>{_e(timeline_text(str(e.get('name')), e.get('data') or {}))}</td></tr>"
        for e in rows)
    return (f"<details><summary>Events ({len(rows)}; seconds since migrate)</summary>"
            f"<table>{body}</table></details>")
