"""The benchmark commands run end to end on a small guest and write consistent figures.

Not timing tests: nothing here asserts a speed, only that each figure was measured (a
positive value beside a positive baseline measured in the same run) and that the ratio
and the verdict follow from them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(180)


def _bench(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", *args, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())["figures"]
    for f in figures:
        assert f["name"] in proc.stdout  # the table shows what the JSON holds
    return figures


def _consistent(f: dict) -> None:
    assert f["value"] > 0 and f["baseline"] > 0
    assert f["ratio"] == pytest.approx(f["value"] / f["baseline"], rel=1e-3)


def test_bench_precopy_compares_with_a_raw_stream(tmp_path):
    figures = _bench(tmp_path, "precopy", "--size", "32MiB", "--repeat", "2")
    ours = next(f for f in figures if f["name"] == "precopy.harness.tcp.idle-random")
    _consistent(ours)
    assert "median of 2" in ours["note"] and ours["goal"] == 0.5


def test_bench_postcopy_reports_p50_and_p99_per_transport(tmp_path):
    figures = _bench(tmp_path, "postcopy", "--size", "32MiB", "--push", "64MiB/s")
    names = {f["name"] for f in figures}
    assert names == {f"postcopy.request-latency.{kind}.push-64MiBps.{p}"
                     for kind in ("tcp", "unix") for p in ("p50", "p99")}
    for f in figures:
        _consistent(f)
    by = {f["name"]: f for f in figures}
    for kind in ("tcp", "unix"):
        p50 = by[f"postcopy.request-latency.{kind}.push-64MiBps.p50"]
        p99 = by[f"postcopy.request-latency.{kind}.push-64MiBps.p99"]
        assert p50["value"] <= p99["value"] and p50["baseline"] <= p99["baseline"]
        assert int(p50["note"].split()[0]) > 0  # the guest really faulted
