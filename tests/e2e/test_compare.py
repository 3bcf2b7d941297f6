"""scenarios/compare/: precopy, postcopy, auto-converge, xbzrle and compression on the
same guest, workload and link, run as a user runs them (one `harness run --json`).

Each feature must do something measurable against plain precopy, which cannot converge
under this workload (it needs its downtime limit raised at pass 6): postcopy switches
and completes, auto-converge throttles the guest and completes by itself, XBZRLE sends
deltas and fewer bytes, compression puts fewer bytes on the wire than the pages it
sends.  Every run ends with the destination holding exactly the source's memory.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e.test_scenarios import run

COMPARE = REPO / "scenarios" / "compare"
NAMES = ("precopy", "postcopy", "auto-converge", "xbzrle", "compress")
PAGE = 4096

pytestmark = [pytest.mark.timeout(300)]


def _steps(sc: dict[str, Any]) -> list[str]:
    return [t["data"]["step"] for t in sc["timeline"]
            if t["peer"] == "runner" and t["name"] == "step"]


def test_the_comparison_set(tmp_path):
    code, report, output = run(*(COMPARE / f"{n}.yaml" for n in NAMES), tmp=tmp_path)
    assert code == 0, output
    runs = {sc["name"].removeprefix("compare-"): sc for sc in report["scenarios"]}
    assert sorted(runs) == sorted(NAMES)
    for name, sc in runs.items():
        assert sc["verdict"] == "pass", (name, sc["reason"])
        checks = {i["name"]: i["ok"] for i in sc["invariants"]}
        assert checks.get("memory-identical") is True, (name, sc["invariants"])

    precopy = runs["precopy"]
    assert _steps(precopy) == ["give-up"], "plain precopy cannot converge by itself"
    assert precopy["stats"]["ram"]["dirty-sync-count"] >= 6
    plain_bytes = precopy["stats"]["ram"]["transferred"]

    postcopy = runs["postcopy"]
    assert _steps(postcopy) == ["switch"]
    assert "postcopy-active" in postcopy["source"]["statuses"]

    auto = runs["auto-converge"]["stats"]
    assert _steps(runs["auto-converge"]) == [], "it completes with no help"
    assert auto["x-cpu-throttle"]["highest"] >= 80, auto  # cpu-throttle-initial, at least
    assert "cpu-throttle-percentage" not in auto, "the throttle ends with the migration"

    xbzrle = runs["xbzrle"]["stats"]
    cache = xbzrle["xbzrle-cache"]
    assert cache["pages"] > 0 and cache["cache-miss"] > 0, cache
    assert cache["bytes"] < cache["pages"] * PAGE / 4, "a delta is a small part of a page"
    assert xbzrle["ram"]["transferred"] < 0.8 * plain_bytes, (xbzrle["ram"], plain_bytes)

    compress = runs["compress"]["stats"]
    packed = compress["compression"]
    assert packed["pages"] > 0 and packed["compressed-size"] < packed["pages"] * PAGE / 2
    sent_pages = compress["ram"]["normal"] + packed["pages"]
    assert compress["ram"]["transferred"] < sent_pages * PAGE, compress["ram"]
    assert compress["ram"]["transferred"] < 0.5 * plain_bytes
