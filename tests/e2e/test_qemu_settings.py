"""Migration settings against a real QEMU 7.2: pause-before-switchover with QEMU as the
source and the harness as destination (the runner's `do: migrate-continue` sent to QEMU),
x-ignore-shared streams in both directions (QEMU decodes ours, we decode QEMU's), and
validate-uuid: QEMU checks the UUID our source sends (zeros without --uuid, as QEMU's own).

Each case is a scenario file written here and run as a user runs it (`harness run FILE
--json OUT`), so every process -- QEMU included -- is started and reaped by the runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.qemu_env import QEMU_MARKS

pytestmark = [*QEMU_MARKS, pytest.mark.timeout(300)]

GUEST = """\
guest:
  machine: none
  memory: 16MiB
  fill: 0.5
  devices: [timer, globalstate]
transport: tcp
"""
EXPECT = """\
expect:
  source: completed
  destination: completed
  memory: identical
  guest-runs-on: destination
"""


def run(tmp: Path, body: str, expect: str = EXPECT) -> dict:
    scenario = tmp / "s.yaml"
    scenario.write_text(f"name: s\nseed: 3\ntimeout: 60s\n{GUEST}{body}{expect}")
    out = tmp / "report.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(scenario), "--json",
                           str(out)], capture_output=True, text=True, timeout=240, cwd=REPO,
                          check=False, env={**os.environ, "HARNESS_WORKDIR": str(tmp / "w")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [sc] = json.loads(out.read_text())["scenarios"]
    assert sc["verdict"] == "pass", sc["reason"]
    return sc


def test_qemu_source_pauses_before_switchover_and_the_step_continues_it(tmp_path):
    sc = run(tmp_path, "source: {kind: qemu}\n"
                       "capabilities: {pause-before-switchover: true}\n"
                       "steps:\n"
                       "  - on: {status: {peer: source, is: pre-switchover}}\n"
                       "    do: migrate-continue\n")
    assert sc["source"]["kind"] == "qemu"
    assert sc["source"]["statuses"] == ["setup", "active", "pre-switchover", "device",
                                        "completed"]
    [step] = [t for t in sc["timeline"] if t["name"] == "step"]
    assert step["data"]["command"] == "migrate-continue" and "error" not in step["data"]


@pytest.mark.parametrize("qemu_side", ["source", "destination"])
def test_x_ignore_shared_streams_interoperate_with_qemu(tmp_path, qemu_side):
    sc = run(tmp_path, f"{qemu_side}: {{kind: qemu}}\ncapabilities: {{x-ignore-shared: true}}\n")
    assert sc[qemu_side]["kind"] == "qemu"
    assert sc["destination"]["statuses"][-1] == "completed"


def test_validate_uuid_our_source_sends_what_qemu_checks(tmp_path):
    uuid = "66666666-7777-8888-9999-aaaaaaaaaaaa"
    sc = run(tmp_path, f"destination: {{kind: qemu, args: [-uuid, {uuid}]}}\n"
                       "capabilities: {validate-uuid: true}\n",
             expect="expect:\n  source: failed\n  guest-runs-on: source\n")
    assert (f"UUID received is 00000000-0000-0000-0000-000000000000 and local is {uuid}"
            in sc["destination"]["error"])
