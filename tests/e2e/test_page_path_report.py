"""The report says which page path ran: the runner's in provenance, each harness peer's
in its facts (asked with `x-native`), and HARNESS_NO_EXTENSIONS=1 reaches the peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import native
from tests.conftest import REPO

SCENARIO = """\
name: page-path
description: A 16 MiB guest migrates in precopy; the report says which page path ran.
seed: 5
timeout: 60s
guest: {memory: 16MiB, fill: 0.5}
expect: {source: completed, destination: completed, memory: identical}
"""


def _run(tmp_path, env: dict[str, str]) -> dict:
    scenario, report = tmp_path / "page-path.yaml", tmp_path / "report.json"
    scenario.write_text(SCENARIO)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(scenario), "--json", str(report)],
        capture_output=True, text=True, timeout=180, cwd=REPO, check=False,
        env={**os.environ, "HARNESS_WORKDIR": str(tmp_path / "work"), **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(report.read_text())


def _paths(doc: dict) -> tuple[dict, dict, dict]:
    (result,) = doc["scenarios"]
    return (doc["provenance"]["page-path"], result["source"]["facts"]["page-path"],
            result["destination"]["facts"]["page-path"])


@pytest.mark.parametrize("disabled", [False, True], ids=["default", "no-extensions"])
def test_the_report_names_the_page_path_of_the_runner_and_each_peer(tmp_path, disabled):
    env = {native.DISABLE_ENV: "1"} if disabled else {native.DISABLE_ENV: ""}
    runner, source, destination = _paths(_run(tmp_path, env))
    assert set(runner) == {"recv", "send"}
    for peer in (source, destination):
        assert set(peer["parts"]) == {"recv", "send"}
        if disabled:
            assert peer["path"] == "python"
            assert all(native.DISABLE_ENV in why for why in peer["parts"].values())
    if not disabled and native.module("_recv") and native.module("_send"):
        assert source["path"] == destination["path"] == "c"
