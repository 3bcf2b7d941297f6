"""The benchmark's pure parts: the round scheduler, a figure not measured, the relay's watchers."""

from __future__ import annotations

import json
import struct

import pytest

from harness.bench.figures import Figure, write_json
from harness.bench.relay import PageWatch, ReturnPathWatch, Tap
from harness.bench.rounds import interleave, schedule
from harness.bench.suite import Sizes, goal_table


def test_schedule_alternates_baseline_first():
    assert schedule(3) == [(0, "baseline"), (0, "value"), (1, "baseline"), (1, "value"),
                           (2, "baseline"), (2, "value")]


def test_interleave_runs_in_that_order_and_compares_medians():
    calls: list[str] = []
    rounds = interleave(lambda i: calls.append(f"b{i}") or 10.0 + i,
                        lambda i: calls.append(f"v{i}") or [1.0, 50.0, 3.0, 2.0, 4.0][i], 5)
    assert calls == ["b0", "v0", "b1", "v1", "b2", "v2", "b3", "v3", "b4", "v4"]
    assert rounds.order == schedule(5)
    assert rounds.median("baseline") == 12.0 and rounds.median("value") == 3.0
    assert rounds.spread("value") == (1.0, 50.0) and "median of 5" in rounds.note()


def test_a_figure_not_measured_has_no_ratio_and_no_verdict(tmp_path):
    f = Figure.of("x.p50", None, "us", 20.0, goal=5.0, lower_is_better=True, note="why")
    assert (f.value, f.ratio, f.met) == (None, None, None)
    write_json([f], tmp_path / "f.json")
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["figures"][0]["value"] is None and doc["figures"][0]["goal"] == 5.0
    assert set(doc["page_path"]) == {"path", "parts", "HARNESS_NO_EXTENSIONS"}


def test_goal_table_has_every_goal_of_issue_15():
    table = goal_table(Sizes())
    assert table["precopy.harness.tcp.idle-random"] == (0.9, False)
    assert table["codec.decode-into-ram.interleaved-256MiB"] == (0.5, False)
    for kind in ("tcp", "unix"):
        assert table[f"postcopy.request-latency.{kind}.push-64MiBps.p50"] == (3.0, True)
        assert table[f"postcopy.request-latency.{kind}.push-64MiBps.p99"] == (10.0, True)
    assert table["postcopy.request-latency.tcp.push-unlimited.preempt.p50"] == (5.0, True)
    assert table["postcopy.qemu.request-latency.tcp.push-64MiBps.preempt.p50"] == (None, True)


def _rp(kind: int, body: bytes) -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


@pytest.mark.parametrize("flags", [0x08, 0x28, 0x02])
def test_relay_times_a_request_to_its_page_record(flags):
    tap = Tap()
    rp, pages = ReturnPathWatch(tap), PageWatch(tap)
    request = _rp(2, b"\0\0\0\1") + _rp(3, struct.pack(">QIB", 0x7D2000, 4096, 3) + b"ram")
    rp.feed(request[:9], 1.0)  # a frame split between two reads
    rp.feed(request[9:] + _rp(4, struct.pack(">QI", 0x9000, 4096)), 1.5)
    assert tap.requests == 2 and set(tap.pending) == {0x7D2000, 0x9000}
    word = struct.pack(">Q", 0x7D2000 | flags)
    pages.feed(b"\x11" * 100 + word[:3], 2.0)  # the word split too
    pages.feed(word[3:] + b"\x03ram", 2.25)
    assert list(tap.microseconds()) == [pytest.approx(0.75e6)]
    assert set(tap.pending) == {0x9000}
    pages.feed(struct.pack(">Q", 0x5000 | 0x08), 3.0)  # not asked: only noted as passed
    rp.feed(_rp(4, struct.pack(">QI", 0x5000, 4096)), 3.5)  # asked after it passed
    assert tap.early == 1 and 0x5000 not in tap.pending and tap.microseconds().size == 1


def test_a_round_that_measured_nothing_is_left_out_and_none_gives_no_value():
    rounds = interleave(lambda i: 1.0, lambda i: [float("nan"), 4.0, 2.0][i], 3)
    assert rounds.median("value") == 3.0 and rounds.measured("value") == 2
    empty = interleave(lambda i: 1.0, lambda i: float("nan"), 2)
    f = Figure.of("x", empty.median("value"), "us", empty.median("baseline"))
    assert f.value is None and f.ratio is None


def test_a_page_read_before_its_request_is_early_not_a_negative_latency():
    tap = Tap()
    tap.asked(0x3000, 2.0)
    tap.arrived(0x3000, 1.5)  # stamped by the other thread before the request was
    assert tap.early == 1 and tap.microseconds().size == 0 and not tap.pending
