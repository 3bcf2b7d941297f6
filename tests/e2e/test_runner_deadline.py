"""A run that cannot finish ends at its deadline with a report of where each peer was stuck;
a run that can no longer change ends as soon as it settles; `--repeat` reports flakiness;
the event log is written beside the report."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_scenarios import run

STUCK = """\
name: stuck
seed: 5
timeout: 15s
guest: {memory: 128MiB, fill: 1.0}  # 128 MiB at 4 MiB/s: never done in 15 s
parameters: {max-bandwidth: 4MiB}
steps:
  - name: freeze
    on: {pass: 1}
    fault: {kind: stop, target: destination}
  - name: never
    on: {status: {peer: source, is: postcopy-active}}
    do: migrate-cancel
expect: {source: completed}
"""


def test_a_missed_deadline_names_statuses_waiting_steps_and_holds_stacks(tmp_path):
    scenario = tmp_path / "stuck.yaml"
    scenario.write_text(STUCK)
    code, report, output = run(scenario, tmp=tmp_path)
    assert code == 3, output  # `error`: the run could not be carried out
    [sc] = report["scenarios"]
    assert sc["verdict"] == "error"
    assert sc["reason"].startswith("timeout: the scenario did not finish within 15 s (source "
                                   "active, pass 1, destination frozen)")
    assert "steps not fired: 'never' (on status:" in sc["reason"]
    # the source answered SIGUSR1 with its Python stacks; the frozen one is seen from /proc
    assert "most recent call first" in sc["source"]["stacks"]
    assert "migration" in sc["source"]["stacks"]
    assert sc["destination"]["stacks"].startswith("thread ")
    assert sc["destination"]["frozen"] is True
    assert [f["kind"] for f in sc["faults"]] == ["stop"]
    no_left = next(i for i in sc["invariants"] if i["name"] == "no-leftover-processes") \
        if sc["invariants"] else None
    assert no_left is None or no_left["ok"]


SETTLES_TIMEOUT = 90.0
SETTLES = f"""\
name: settles
seed: 6
timeout: {SETTLES_TIMEOUT:g}s
guest: {{memory: 32MiB, fill: 0.5, workload: {{dirty-rate: 32MiB/s, pattern: hotset, hotset: 4MiB}}}}
parameters: {{max-bandwidth: 8MiB}}
steps:
  - on: {{pass: 2}}
    fault: {{kind: kill, target: destination}}
  - on: {{status: {{peer: destination, is: postcopy-paused}}}}
    do: migrate-cancel
    optional: true  # it can never fire: the run must not wait for it
expect: {{source: failed, guest-runs-on: source, memory: source-intact}}
"""


def test_a_run_that_cannot_change_any_more_ends_without_waiting_for_its_deadline(tmp_path):
    scenario = tmp_path / "settles.yaml"
    scenario.write_text(SETTLES)
    code, report, output = run(scenario, tmp=tmp_path, extra=("--repeat", "2"))
    assert code == 0, output
    rounds = report["scenarios"]
    assert [r["repeat"] for r in rounds] == [1, 2]
    for sc in rounds:
        # the step on postcopy-paused can never fire: the run ended, not at its deadline
        assert sc["duration"] < SETTLES_TIMEOUT / 2
        events = [json.loads(line) for line in Path(sc["events"]).read_text().splitlines()]
        assert events[0]["name"] == "scenario" and events[0]["data"]["seed"] == 6
        assert events[-1]["name"] == "verdict" and events[-1]["data"]["verdict"] == "pass"
        assert sc["events"].endswith(f".settles.r{sc['repeat']}.events.jsonl")
    [summary] = report["repeat"]
    assert summary == {"name": "settles", "file": str(scenario), "seed": 6, "rounds": 2,
                       "passed": 2, "verdicts": ["pass", "pass"], "flaky": False}
    assert "settles: 2/2 rounds passed with seed 6 - stable" in output
