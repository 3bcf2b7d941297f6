"""The shipped postcopy-preempt scenarios' facts, run as a user runs them (`harness run`).

scenarios/postcopy-preempt.yaml (its facts are also test_scenarios.py's, through
`postcopy_preempt_facts`) and scenarios/faults/postcopy-preempt-reset-recover.yaml, with
the harness's own peers: the proxy took the connection after the main one as its preempt
channel, the triggers on that channel matched at the end of the count-th page record (a
record naming block "ram" is 8 + 1 + 3 + 4096 bytes), the faults acted there, and the
destination placed pages that came that way, ending with its EOS.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import REPO
from tests.e2e.test_scenarios import run

RECORD = 8 + 1 + len("ram") + 4096


def _proxy(sc: dict[str, Any], name: str) -> list[tuple[float, dict[str, Any]]]:
    return [(t["t"], t["data"]) for t in sc["timeline"]
            if t["peer"] == "proxy" and t["name"] == name]


def _sessions(sc: dict[str, Any]) -> list[tuple[int, str]]:
    return [(d["n"], d["channel"]) for _, d in _proxy(sc, "SESSION") if d["event"] == "accepted"]


def _wire(sc: dict[str, Any], step: str) -> tuple[float, dict[str, Any]]:
    [fault] = [f for f in sc["faults"] if f["step"] == step]
    [(t, wire)] = [(t, d) for t, d in _proxy(sc, "WIRE") if d["id"] == fault["detail"]["id"]]
    return t, wire


def postcopy_preempt_facts(sc: dict[str, Any]) -> None:
    """Pages requested while the main channel was stalled came on the preempt channel."""
    assert _sessions(sc) == [(1, "main"), (2, "preempt")]
    stalled_at, _ = _wire(sc, "stall-main")
    paged_at, wire = _wire(sc, "preempt-pages")
    assert (wire["channel"], wire["frame"], wire["count"]) == ("preempt", "RAM_PAGE", 1)
    assert wire["offset"] == RECORD and wire["session"] == 2
    # the first requested page came while main was blackholed (2 s): past the stalled push
    # (it is the guest's first fault after RUN; the 3rd could come late on a busy machine)
    assert paged_at - stalled_at < 2.0, "the page came past the stalled push (blackhole 2 s)"
    xp = sc["destination-stats"]["x-postcopy"]
    assert xp["preempt"]["eos"] is True and xp["preempt"]["bytes"] >= RECORD + 8
    assert xp["requests"] == sc["stats"]["ram"]["postcopy-requests"] >= 1


def test_the_preempt_reset_recovers_on_a_new_pair_of_connections(tmp_path):
    path = REPO / "scenarios" / "faults" / "postcopy-preempt-reset-recover.yaml"
    code, report, output = run(path, tmp=tmp_path)
    assert code == 0, output
    [sc] = report["scenarios"]
    assert sc["verdict"] == "pass", sc["reason"]
    assert all(s["fired"] for s in sc["steps"]), sc["steps"]
    assert _sessions(sc) == [(1, "main"), (2, "preempt"), (3, "main"), (4, "preempt")]
    [fault] = [f["detail"] for f in sc["faults"] if f["step"] == "cut"]
    assert (fault["kind"], fault["flow"], fault["session"], fault["offset"]) == (
        "net.reset", "preempt", 2, 5 * RECORD)
    closed = {d["n"]: d["reason"] for _, d in _proxy(sc, "SESSION") if d["event"] == "closed"}
    assert closed[2].startswith("net.reset")
    for peer in ("source", "destination"):
        statuses = sc[peer]["statuses"]
        assert statuses.index("postcopy-paused") < statuses.index("postcopy-recover") \
            < statuses.index("completed"), (peer, statuses)
    assert sc["destination-stats"]["x-postcopy"]["preempt"]["eos"] is True
