"""A verdict is never vacuous: a step that must fire and did not fails the scenario, naming
the step and its trigger; `optional: true` lets it stay unfired, and the report still says
so.  Real peers, real proxy: `harness run FILE --json OUT` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCENARIO = """\
name: {name}
seed: 3
timeout: 60s
guest: {{memory: 16MiB, fill: 0.5}}
capabilities: {{return-path: true}}
steps:
  - name: never
    on: {{pass: 40}}
    fault: {{kind: net.drop, channel: return-path, message: PONG}}
{optional}
  - name: cut-late
    on: {{status: {{peer: source, is: postcopy-active}}}}
    do: migrate-cancel
    optional: true
expect: {{source: completed, destination: completed, memory: identical}}
"""


def run(tmp_path: Path, optional: bool) -> tuple[int, dict, str]:
    name = "unfired-optional" if optional else "unfired"
    path = tmp_path / f"{name}.yaml"
    path.write_text(SCENARIO.format(name=name, optional="    optional: true" if optional
                                    else ""))
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--json",
                           str(out)], capture_output=True, text=True, timeout=240, cwd=REPO,
                          check=False, env={**os.environ, "HARNESS_WORKDIR": str(tmp_path)})
    [sc] = json.loads(out.read_text())["scenarios"]
    return proc.returncode, sc, proc.stdout + proc.stderr


def test_a_step_that_never_fired_fails_the_scenario_naming_it_and_its_trigger(tmp_path):
    code, sc, output = run(tmp_path, optional=False)
    assert code == 1, output
    assert sc["verdict"] == "fail"
    assert "steps-fired" in sc["reason"] and "never" in sc["reason"]
    assert "on pass: 40" in sc["reason"]
    assert "cut-late" not in sc["reason"]  # optional: it may stay unfired
    assert sc["faults"] == []
    steps = {s["step"]: s for s in sc["steps"]}
    assert steps["never"]["fired"] is False and steps["never"]["why-not"]
    # every other check passed: the step alone made the verdict
    assert [i["name"] for i in sc["invariants"] if not i["ok"]] == ["steps-fired"]


def test_an_optional_step_may_stay_unfired_and_is_listed_as_such(tmp_path):
    code, sc, output = run(tmp_path, optional=True)
    assert code == 0, output
    assert sc["verdict"] == "pass"
    steps = {s["step"]: s for s in sc["steps"]}
    assert steps["never"] == {**steps["never"], "fired": False, "must-fire": False}
    assert steps["cut-late"]["fired"] is False
    assert "its trigger never held" in steps["cut-late"]["why-not"]


def test_a_net_fault_whose_trigger_held_but_never_acted_is_not_fired(tmp_path):
    """As the old precopy-drop-pong did: armed after the only PONG went by (here: once the
    source completed, so surely after it)."""
    path = tmp_path / "late-drop.yaml"
    path.write_text(SCENARIO.format(name="late-drop", optional="").replace(
        "pass: 40", "status: {peer: source, is: completed}"))
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--json",
                           str(out)], capture_output=True, text=True, timeout=240, cwd=REPO,
                          check=False, env={**os.environ, "HARNESS_WORKDIR": str(tmp_path)})
    [sc] = json.loads(out.read_text())["scenarios"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = {s["step"]: s for s in sc["steps"]}
    assert steps["never"]["fired"] is False
    assert "never acted" in steps["never"]["why-not"]
