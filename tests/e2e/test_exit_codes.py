"""`harness run`'s exit status tells a broken environment (3: verdict `error`) from a
failed migration (1) and bad input (2).  Real runs, as CI runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.cli import run_exit_code
from tests.conftest import REPO

CANNOT_START = """\
name: no-qemu-here
timeout: 30s
guest: {memory: 16MiB}
source: {kind: qemu, binary: /nonexistent/qemu-system-x86_64}
expect: {source: completed}
"""

FAILS = """\
name: wrong-expectation
timeout: 60s
guest: {memory: 16MiB}
expect: {source: cancelled}
"""


def harness_run(tmp_path: Path, *files: Path) -> tuple[int, list[dict], str]:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", *map(str, files), "--json",
                           str(out)], capture_output=True, text=True, timeout=240, cwd=REPO,
                          check=False, env={**os.environ, "HARNESS_WORKDIR": str(tmp_path)})
    return proc.returncode, json.loads(out.read_text())["scenarios"], proc.stdout + proc.stderr


def test_an_error_verdict_exits_3_and_a_failure_wins_over_it(tmp_path):
    error, fail = tmp_path / "error.yaml", tmp_path / "fail.yaml"
    error.write_text(CANNOT_START)
    fail.write_text(FAILS)
    code, [sc], output = harness_run(tmp_path, error)
    assert sc["verdict"] == "error", sc["reason"]
    assert "/nonexistent/qemu-system-x86_64" in sc["reason"]
    assert code == 3, output
    code, scs, output = harness_run(tmp_path, error, fail)
    assert [s["verdict"] for s in scs] == ["error", "fail"]
    assert code == 1, output


def test_the_exit_status_table():
    assert run_exit_code([]) == 0
    assert run_exit_code(["pass", "pass"]) == 0
    assert run_exit_code(["pass", "error"]) == 3
    assert run_exit_code(["error", "fail", "pass"]) == 1


def test_help_documents_every_exit_status():
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
                          env={**os.environ, "COLUMNS": "200"})
    for code in ("0:", "1:", "2:", "3:"):
        assert code in proc.stdout, proc.stdout


def test_timeout_overrides_every_scenarios_deadline(tmp_path):
    """`--timeout` replaces the file's 60 s: a run that cannot settle that fast is an
    `error` naming the new deadline; a bad value is refused (2)."""
    slow = tmp_path / "slow.yaml"
    slow.write_text(FAILS.replace("expect: {source: cancelled}",
                                  "parameters: {max-bandwidth: 1MiB}\nexpect: {source: completed}"))
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(slow), "--timeout", "1.5s",
                           "--json", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, check=False, env={**os.environ, "HARNESS_WORKDIR": str(tmp_path)})
    [sc] = json.loads(out.read_text())["scenarios"]
    assert proc.returncode == 3 and sc["verdict"] == "error", proc.stdout + proc.stderr
    assert "did not finish within 1.5 s" in sc["reason"]
    bad = subprocess.run([sys.executable, "-m", "harness", "run", str(slow), "--timeout", "-1s"],
                         capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert bad.returncode == 2 and "--timeout" in bad.stderr
