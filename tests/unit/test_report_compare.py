"""`harness report A.json B.json [--html FILE]`, and the figures behind the HTML report.

Reports here are built the way the runner builds them (`ScenarioResult` -> `json_report`)
with made-up figures, so every expected value is known; the command runs as a user runs it
(`python -m harness report`), exit codes and messages included.  The sampler that feeds
the plots is checked on a made-up sequence of query-migrate answers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.compare import ReportError, comparison, load_report
from harness.report.formats import json_report
from harness.report.series import story
from harness.runner.result import (
    FaultRecord,
    InvariantResult,
    PeerOutcome,
    ScenarioResult,
    TimelineEntry,
)
from harness.runner.samples import Sampler
from tests.conftest import REPO

MiB = 1 << 20


def make_result(name: str, total_ms: int, downtime: int, postcopy: bool = False
                ) -> ScenarioResult:
    """A finished run as the runner leaves it: statuses, passes, a fault, samples."""
    r = ScenarioResult(name, f"scenarios/{name}.yaml", 7, verdict="pass")
    ram = {"transferred": 80 * MiB, "remaining": 0, "total": 64 * MiB,
           "dirty-sync-count": 3, "mbps": 512.0, "postcopy-requests": 40 if postcopy else 0}
    r.source = PeerOutcome(status="completed", runstate="postmigrate", statuses=[
        "setup", "active", "completed"], stats={"status": "completed", "total-time": total_ms,
                                               "downtime": downtime, "ram": ram})
    dst: dict = {"status": "completed", "total-time": total_ms}
    if postcopy:
        dst["postcopy-blocktime"] = 12
        dst["x-postcopy"] = {"requests": 40, "latency-us": {
            "count": 40, "p50": 250.0, "p99": 900.0, "max": 1000.0,
            "histogram": {"edges-us": [100.0, 316.2, 1000.0], "counts": [30, 10]}}}
    r.destination = PeerOutcome(status="completed", runstate="running", stats=dst,
                                statuses=["setup", "active", "completed"])
    r.invariants = [InvariantResult("memory-identical", True, "all 16384 pages equal")]
    events = [(1.0, "runner", "migrate", {"uri": "tcp:127.0.0.1:1"}),
              (1.01, "source", "MIGRATION", {"status": "setup"}),
              (1.02, "source", "MIGRATION_PASS", {"pass": 1}),
              (1.02, "source", "MIGRATION", {"status": "active"}),
              (1.02, "destination", "MIGRATION", {"status": "active"}),
              (1.5, "source", "MIGRATION_PASS", {"pass": 2}),
              (1.6, "runner", "fault", {"step": "freeze", "kind": "stop", "target": "source",
                                        "duration": 0.3}),
              (2.0, "source", "MIGRATION_PASS", {"pass": 3}),
              (2.0, "source", "STOP", {}),
              (2.05, "source", "MIGRATION", {"status": "completed"}),
              (2.1, "destination", "RESUME", {}),
              (2.1, "destination", "MIGRATION", {"status": "completed"})]
    r.timeline = [TimelineEntry(t, peer, ev, data) for t, peer, ev, data in events]
    r.faults = [FaultRecord("freeze", "stop", "source", 0.6, {"duration": 0.3})]
    sampler = Sampler()
    for t, status, pass_, sent, left in [(1.02, "active", 1, 0, 64), (1.3, "active", 1, 40, 24),
                                         (1.5, "active", 2, 64, 8), (2.0, "active", 3, 76, 2),
                                         (2.05, "completed", 3, 80, 0)]:
        sampler.add(t, {"status": status, "ram": {"transferred": sent * MiB,
                                                  "remaining": left * MiB,
                                                  "total": 64 * MiB}}, pass_)
    r.samples, r.passes = sampler.samples, sampler.passes()
    return r


def write(path: Path, *results: ScenarioResult) -> Path:
    path.write_text(json_report(results))
    return path


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False,
                          env={**os.environ, "COLUMNS": "200"})


def test_two_reports_side_by_side_on_the_console(tmp_path):
    a = write(tmp_path / "old.json", make_result("precopy", 2000, 40),
              make_result("postcopy", 3000, 2, postcopy=True))
    b = write(tmp_path / "new.json", make_result("precopy", 3000, 10))
    proc = harness("report", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "old.json" in out and "new.json" in out
    precopy = out[out.index("precopy"):out.index("postcopy")]
    assert re.search(r"total time \(ms\)\s*│\s*2,000\s*│\s*3,000\s*│\s*1\.50x", precopy)
    assert re.search(r"downtime \(ms\)\s*│\s*40\s*│\s*10\s*│\s*0\.25x", precopy)
    postcopy = out[out.index("postcopy"):]
    assert "(absent)" in postcopy  # the second run has no postcopy scenario
    assert re.search(r"request latency p99 \(us\)\s*│\s*900\.0", postcopy)


def test_comparison_rows_per_scenario():
    runs = [("a", json.loads(json_report([make_result("precopy", 2000, 40)]))),
            ("b", json.loads(json_report([make_result("precopy", 1000, 40)])))]
    [(key, rows)] = comparison(runs)
    assert key == "precopy"
    table = dict(rows)
    assert table["verdict"] == ["pass", "pass", ""]
    assert table["total time (ms)"] == ["2,000", "1,000", "0.50x"]
    assert table["transferred (MiB)"] == ["80.0", "80.0", "1.00x"]


def test_report_html_has_both_runs_plots(tmp_path):
    a = write(tmp_path / "a.json", make_result("postcopy", 3000, 2, postcopy=True))
    b = write(tmp_path / "b.json", make_result("postcopy", 2500, 3, postcopy=True))
    page = tmp_path / "out.html"
    proc = harness("report", str(a), str(b), "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    plots = re.findall(r"<figure class=plot data-plot=(\w+)>", text)
    # per run: timeline, transferred/remaining, passes, latency histogram, downtime
    assert plots == ["timeline", "transfer", "passes", "latency", "downtime"] * 2
    assert text.count("src='data:image/png;base64,") == 10
    assert not re.search(r"https?://", text)
    assert "Runs compared" in text and "a.json" in text and "b.json" in text


@pytest.mark.parametrize("content, why", [
    (None, "no such file"),
    ("{not json", "not JSON (line 1, column 2"),
    ('{"results": []}', 'no "scenarios" list'),
    ('{"scenarios": [{"name": "x"}]}', "scenarios[0] has no 'verdict'"),
])
def test_a_bad_report_exits_2_naming_the_file(tmp_path, content, why):
    good = write(tmp_path / "good.json", make_result("precopy", 2000, 40))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    proc = harness("report", str(good), str(bad))
    assert proc.returncode == 2
    assert f"harness report: {bad}: " in proc.stderr and why in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_load_report_accepts_what_run_writes(tmp_path):
    path = write(tmp_path / "r.json", make_result("precopy", 2000, 40))
    doc = load_report(path)
    assert doc["scenarios"][0]["samples"][0]["status"] == "active"
    with pytest.raises(ReportError, match="no such file"):
        load_report(tmp_path / "missing.json")


def test_sampler_passes_from_pass_start_samples():
    r = make_result("precopy", 2000, 40)
    p1, p2, p3 = r.passes
    assert (p1["pass"], p1["transferred"], p1["dirtied"]) == (1, 64 * MiB, 8 * MiB)
    assert p1["duration"] == pytest.approx(0.48)
    assert p1["bandwidth"] == pytest.approx(64 * MiB / 0.48, rel=1e-3)
    assert (p2["pass"], p2["transferred"], p2["dirtied"]) == (2, 12 * MiB, 2 * MiB)
    assert (p3["pass"], p3["transferred"], p3["dirtied"]) == (3, 4 * MiB, None)


def test_sampler_stops_after_a_final_status_and_stays_bounded():
    s = Sampler(period=0.1, limit=10)
    assert s.due(0.0)
    for i in range(25):
        s.add(i * 0.1, {"status": "active", "ram": {"total": 1, "remaining": 1}}, 1 + i // 5)
    assert len(s.samples) <= 10 and s.samples[-1]["t"] == pytest.approx(2.4)
    assert s.period > 0.1  # thinned out: samples come less often
    assert [p["pass"] for p in s.passes()] == [1, 2, 3, 4, 5]  # every pass is kept
    s.failed(3.0)
    assert not s.due(3.5) and s.due(4.5)
    s.add(4.5, {"status": "completed"}, 5)
    assert not s.due(100.0)


def test_story_of_a_run_statuses_faults_downtime():
    sc = json.loads(json_report([make_result("precopy", 2000, 40)]))["scenarios"][0]
    st = story(sc)
    assert [s.label for s in st.statuses["source"]] == ["setup", "active", "completed"]
    assert [n for _, n in st.passes] == [1, 2, 3]
    [fault] = st.faults
    assert fault.label == "stop source"
    assert (fault.start, fault.end) == (pytest.approx(0.6), pytest.approx(0.9))
    assert st.downtime is not None and st.downtime.start == pytest.approx(1.0)
    assert st.downtime.end == pytest.approx(1.1) and "40 ms" in st.downtime.label
