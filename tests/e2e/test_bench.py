"""The benchmark commands run end to end on small guests and write consistent figures.

Not timing tests: nothing here asserts a speed, only that each figure was measured (a
positive value beside a positive baseline measured in the same run), that the JSON has
issue 7's shape, and that the ratio and the verdict follow from the numbers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from harness.bench.suite import Sizes, goal_table
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(240)

KEYS = {"name", "value", "unit", "baseline", "ratio", "goal", "met", "goal_of", "baseline_name",
        "lower_is_better", "note", "page_path", "peer_page_path"}
MiB = 1 << 20


def _bench(tmp_path, *args: str) -> list[dict]:
    return _bench_doc(tmp_path, *args)["figures"]


def _bench_doc(tmp_path, *args: str) -> dict:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", *args, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=230, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {"figures", "page_path"}
    figures = doc["figures"]
    for f in figures:
        assert set(f) == KEYS, f
        assert f["name"] in proc.stdout  # the table shows what the JSON holds
        _consistent(f)
    return doc


def _consistent(f: dict) -> None:
    """A baseline beside the value, ratio = value / baseline, the verdict from the goal;
    a figure not measured says why and has no ratio nor verdict."""
    assert f["baseline"] > 0 and f["baseline_name"] and f["page_path"]
    if f["value"] is None:
        assert f["note"].startswith("not measured") and f["ratio"] is None and f["met"] is None
        return
    assert f["value"] > 0
    assert f["ratio"] == pytest.approx(f["value"] / f["baseline"], rel=2e-3)
    if f["goal"] is None:
        assert f["met"] is None
        return
    judged = f["value"] if f["goal_of"] == "value" else f["ratio"]
    assert f["goal_of"] in ("value", "ratio")
    want = judged <= f["goal"] if f["lower_is_better"] else judged >= f["goal"]
    assert f["met"] is want


def test_bench_precopy_compares_with_a_raw_stream(tmp_path):
    figures = _bench(tmp_path, "precopy", "--size", "32MiB", "--repeat", "2")
    ours = next(f for f in figures if f["name"] == "precopy.harness.tcp.idle-random")
    assert "median of 2 interleaved" in ours["note"] and ours["goal"] == 0.9
    assert ours["goal_of"] == "ratio" and ours["peer_page_path"]
    if shutil.which("qemu-system-x86_64"):
        vs = next(f for f in figures if f["name"] == "precopy.harness-vs-qemu")
        qemu = next(f for f in figures if f["name"] == "precopy.qemu.tcp.idle-random")
        assert vs["goal"] == 1.0 and vs["value"] == ours["value"]
        assert vs["baseline"] == qemu["value"]


def test_bench_postcopy_reports_p50_and_p99_per_transport(tmp_path):
    figures = _bench(tmp_path, "postcopy", "--size", "32MiB", "--push", "8MiB/s",
                     "--repeat", "1")
    names = {f["name"] for f in figures}
    assert names == {f"postcopy.request-latency.{kind}.push-8MiBps.{p}"
                     for kind in ("tcp", "unix") for p in ("p50", "p99")} | {
        f"postcopy.request-latency.tcp.push-unlimited.preempt.{p}" for p in ("p50", "p99")}
    by = {f["name"]: f for f in figures}
    for kind in ("tcp", "unix"):
        p50 = by[f"postcopy.request-latency.{kind}.push-8MiBps.p50"]
        p99 = by[f"postcopy.request-latency.{kind}.push-8MiBps.p99"]
        assert p50["value"] <= p99["value"] and p50["baseline"] <= p99["baseline"]
        assert (p50["goal"], p99["goal"]) == (None, None)  # the goals are at 64 MiB/s
        assert p50["lower_is_better"] and p99["lower_is_better"]
        assert int(p50["note"].split()[0]) > 0  # the guest really faulted
        held = float(p50["note"].split("source arrival->send p50 ")[1].split()[0])
        # the source's share of each request is part of that request's whole, so its
        # median is the whole's at most -- up to the two histograms' binning (seen 187 us
        # against 181 us under load): bounded by the whole's p99 instead
        assert 0 < held <= p99["value"]


def test_bench_zero_measures_speed_and_the_peers_memory(tmp_path):
    figures = _bench(tmp_path, "zero", "--size", "64MiB")
    by = {f["name"]: f for f in figures}
    assert set(by) == {"precopy.harness.tcp.idle-zero-64MiB", "memory.peak-rss.idle-zero-64MiB",
                       "memory.peak-pss.idle-zero-64MiB"}
    speed = by["precopy.harness.tcp.idle-zero-64MiB"]
    assert speed["goal"] == 5.0 and speed["goal_of"] == "value" and speed["unit"] == "GB/s"
    for kind in ("rss", "pss"):
        memory = by[f"memory.peak-{kind}.idle-zero-64MiB"]
        assert memory["unit"] == "GiB" and memory["baseline"] == pytest.approx(64 / 1024)
        assert memory["goal"] == 2.2 and memory["lower_is_better"]
        # the destination's RAM is backed up front (the source's untouched RAM is not):
        # the sampler saw it
        assert memory["ratio"] >= 1.0


def test_bench_all_prints_one_table_of_every_figure(tmp_path):
    figures = _bench(tmp_path, "all", "--precopy-size", "16MiB", "--zero-size", "32MiB",
                     "--postcopy-size", "16MiB", "--codec-size", "16MiB", "--qemu-guest-size",
                     "16MiB", "--repeat", "1", "--push", "64MiB/s")
    names = [f["name"] for f in figures]
    assert len(names) == len(set(names))
    for prefix in ("precopy.harness.tcp.idle-zero-", "memory.peak-rss.", "memory.peak-pss.",
                   "precopy.harness.multifd-2.", "precopy.harness.multifd-4."):
        assert any(n.startswith(prefix) for n in names), prefix
    by = {f["name"]: f for f in figures}
    table = goal_table(Sizes(codec=16 * MiB, pushes=(64 * MiB,)))
    for name, (goal, lower) in table.items():  # issue 15's goals table, each with its goal
        if name.startswith("postcopy.qemu.") and not shutil.which("qemu-system-x86_64"):
            continue
        assert name in by, name
        assert (by[name]["goal"], by[name]["lower_is_better"]) == (goal, lower), name


def test_no_extensions_reaches_the_peers(tmp_path):
    doc = _bench_doc(tmp_path, "precopy", "--size", "16MiB", "--repeat", "1",
                     "--no-extensions")
    assert doc["page_path"]["HARNESS_NO_EXTENSIONS"] is True
    assert doc["page_path"]["path"] == "python"
    ours = next(f for f in doc["figures"] if f["name"] == "precopy.harness.tcp.idle-random")
    # the peers' own x-native answer: the Python path, because of the variable
    assert ours["peer_page_path"] == "python [python (HARNESS_NO_EXTENSIONS=1)]"


def test_bench_refuses_a_bad_size(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", "zero", "--size", "12x"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "is not a size" in proc.stderr
