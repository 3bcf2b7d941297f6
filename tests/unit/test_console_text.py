"""Human output of the reports: plain words, one time base, one line per verdict."""

from __future__ import annotations

from harness.report.formats import headline, plain, summary_lines, timeline_lines, timeline_text
from harness.runner.result import FaultRecord, ScenarioResult, TimelineEntry


def _result(**kw: object) -> ScenarioResult:
    r = ScenarioResult("sc", "sc.yaml", 7, verdict="fail", reason="source-status: wrong\nx")
    for key, value in kw.items():
        setattr(r, key, value)
    return r


def test_plain_has_no_python_reprs() -> None:
    text = plain({"kind": "net.reset", "detail": {"offset": 5, "gone": None}, "empty": "",
                  "list": [1, 2.5], "none": None})
    assert text == "kind net.reset, detail offset 5, list 1, 2.5"
    assert plain(None) == "-"


def test_timeline_text_words() -> None:
    assert timeline_text("step", {"step": "steps[0]", "peer": "source", "result": {"x": 1},
                                  "reason": ""}) == "step steps[0], peer source"
    assert timeline_text("fault", {"kind": "kill", "detail": {"pid": 3}, "error": None}
                         ) == "fault kind kill, detail pid 3"
    assert timeline_text("exited", {}) == "exited"


def test_times_are_seconds_since_migrate() -> None:
    r = _result(timeline=[TimelineEntry(9.5, "runner", "migrate", {"uri": "tcp:h:1"}),
                          TimelineEntry(10.0, "source", "MIGRATION", {"status": "active"})],
                faults=[FaultRecord("steps[0]", "kill", "source", 10.25)])
    assert [line.split()[0] for line in timeline_lines(r)] == ["0.000s", "0.500s"]
    assert any("at 0.750 s after migrate" in line for line in summary_lines(r))


def test_headline_is_one_line_per_verdict() -> None:
    assert headline(_result(reason="")) == "sc (sc.yaml, seed 7): FAIL"
    skip = _result(verdict="skip", reason="needs hosts (agents): a at tcp://h:1")
    assert headline(skip) == "SKIP sc (sc.yaml): needs hosts (agents): a at tcp://h:1"
    assert summary_lines(skip) == [headline(skip)]
    lines = summary_lines(_result(reason="r"))
    assert "runstate" not in lines[1]  # a runstate never known is left out, not "None"
