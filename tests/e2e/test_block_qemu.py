"""Block migration with QEMU 7.2: a real QEMU source (-M none, a bare raw -drive: the
source only reads it, B5/B7) migrates its disk to a harness destination, and the
harness's own source sends the same section order QEMU does (B2).

A harness source cannot migrate to a QEMU 7.2 destination here: on -M none QEMU has no
bus for a writable block device, and 7.2's destination aborts on the first chunk written
to a bare -drive (B5); scenario validation says so (harness/scenario/disks.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.qemu_env import QEMU_MARKS

SCENARIO = """
name: block-qemu-source
seed: 22
timeout: 60s
guest:
  machine: none
  memory: 16MiB
  fill: 0.5
  devices: [timer, globalstate]
  disks: [{name: d0, size: 16MiB, fill: 0.5}]
source: {kind: qemu}
capabilities: {block: true}
parameters: {max-bandwidth: 64MiB}
expect: {source: completed, destination: completed, memory: identical, disks: identical}
"""


def _run_recorded(scenario: Path, tmp: Path) -> tuple[dict, list[tuple[str, str]], dict]:
    """`harness run --record`, the recorded stream's section order and its block records
    (harness analyze)."""
    out, work = tmp / "report.json", tmp / "work"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(scenario), "--record",
                           "--json", str(out)], capture_output=True, text=True, timeout=200,
                          cwd=REPO, check=False,
                          env={**__import__("os").environ, "HARNESS_WORKDIR": str(work)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [sc] = json.loads(out.read_text())["scenarios"]
    [stream] = work.glob("*/stream.fwd.bin")
    analyzed = subprocess.run([sys.executable, "-m", "harness", "analyze", str(stream),
                               "--json"], capture_output=True, text=True, timeout=60,
                              cwd=REPO, check=True)
    doc = json.loads(analyzed.stdout)
    sections = [(s["type"], s["idstr"]) for s in doc["sections"]
                if s["idstr"] in ("block", "ram")]
    return sc, sections, doc["block"]


def _b2_order(sections: list[tuple[str, str]]) -> None:
    """START block, START ram, (PART block, [PART ram])+, END block, END ram: every
    iteration opens with block's PART; RAM's follows unless the rate limit came first
    (QEMU's qemu_savevm_state_iterate checks it before each section)."""
    assert sections[:2] == [("start", "block"), ("start", "ram")]
    assert sections[-2:] == [("end", "block"), ("end", "ram")]
    middle = sections[2:-2]
    assert middle and middle[0] == ("part", "block")
    assert set(middle) == {("part", "block"), ("part", "ram")}
    assert all(middle[i - 1] == ("part", "block") for i, s in enumerate(middle)
               if s == ("part", "ram"))


@pytest.mark.parametrize("who", [pytest.param("qemu", marks=QEMU_MARKS), "harness"])
def test_block_migration_disks_identical_in_qemu_order(who: str, tmp_path: Path) -> None:
    if who == "qemu":  # 16 MiB without zero-blocks: every chunk carries its data (B4)
        scenario = tmp_path / "block-qemu-source.yaml"
        scenario.write_text(SCENARIO)
        chunks = {"chunks": 16, "zero_chunks": 0}
    else:  # 32 MiB with zero-blocks, each chunk the guest rewrote sent again
        scenario = REPO / "scenarios" / "precopy-block.yaml"
        chunks = None
    sc, sections, block = _run_recorded(scenario, tmp_path)
    if chunks is None:  # the stream holds what the source counted, no more, no less
        sent = sc["stats"]["x-block"]
        chunks = {"chunks": sent["chunks"], "zero_chunks": sent["zero-chunks"]}
        assert sum(chunks.values()) == 32 + sent["dirty-chunks"]
    assert block == {"devices": {"d0": chunks}, "progress": 100}
    assert sc["verdict"] == "pass", sc["reason"]
    checked = {i["name"]: i for i in sc["invariants"]}
    assert checked["disks-identical"]["ok"] and checked["memory-identical"]["ok"]
    assert "every sector of d0 equal" in checked["disks-identical"]["detail"]
    _b2_order(sections)
