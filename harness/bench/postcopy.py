"""`harness bench postcopy`: page-request latency under a background push, vs a raw RTT.

Strategy: two harness peer processes migrate a guest whose workload keeps writing pages
all over its memory; postcopy starts as soon as the migration is active, so the running
destination guest faults on most pages it touches while the rest is pushed in the
background (at `max-postcopy-bandwidth`, unlimited by default).  The destination records,
for every request, the time from sending it to placing the page; p50 and p99 are printed
beside the p50 and p99 of a raw 24-byte -> 4 KiB request/response between two processes
over the same kind of socket, measured in the same invocation.  Each figure's note also
gives the source's share of it: the p50 from a request's arrival to the send of its page.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.runner.peers import HarnessPeer, short_dir

from .figures import Figure
from .precopy import wait_status
from .rtt import round_trips

MiB = 1 << 20


def harness_latencies(kind: str, size: int, rate: int, push: int, workdir: Path,
                      timeout: float = 120.0) -> dict[str, Any]:
    guest = {"machine": "none", "seed": 3, "fill": 0.5,
             "blocks": [{"name": "ram", "size": size}], "devices": ["timer", "globalstate"],
             "workload": {"dirty_rate": rate, "pattern": "uniform", "hotset": 0, "seed": 3}}
    dst = HarnessPeer("destination", workdir, guest, ["--incoming", "defer"])
    src = HarnessPeer("source", workdir, guest)
    sockdir = short_dir("mhb")
    try:
        dst.start()
        src.start()
        caps = {"capabilities": [{"capability": "postcopy-ram", "state": True}]}
        for peer in (src, dst):
            peer.execute("migrate-set-capabilities", caps)
        src.execute("migrate-set-parameters", {"max-bandwidth": 8 * MiB,
                                               "max-postcopy-bandwidth": push})
        if kind == "tcp":
            dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
            addr = dst.execute("query-migrate")["socket-address"][0]
            uri = f"tcp:{addr['host']}:{addr['port']}"
        else:
            uri = f"unix:{sockdir}/m.sock"
            dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        wait_status(src, {"active", "failed"}, timeout)
        src.execute("migrate-start-postcopy")
        done = wait_status(dst, {"completed", "failed"}, timeout)
        if done["status"] != "completed":
            raise RuntimeError(f"postcopy failed: {done.get('error-desc')}")
        stats = dict(done["x-postcopy"])
        source = src.execute("query-migrate").get("x-postcopy") or {}
        stats["source"] = source.get("request-to-send-us") or {}
        return stats
    finally:
        src.close()
        dst.close()
        shutil.rmtree(sockdir, ignore_errors=True)


GOAL_P50 = 1.5  # issue 7: p50 within 1.5x of the raw round trip
GOAL_P99 = 3.0  # and p99 within 3x


def run(size: int = 256 * MiB, rate: int = 64 * MiB,
        pushes: tuple[int, ...] = (0, 64 * MiB)) -> list[Figure]:
    """For each socket kind and background push (0 = unlimited): p50 and p99."""
    workdir = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    figures = []
    try:
        for kind in ("tcp", "unix"):
            raw = round_trips(kind)
            base50, base99 = float(np.percentile(raw, 50)), float(np.percentile(raw, 99))
            for push in pushes:
                stats = harness_latencies(kind, size, rate, push, workdir)
                lat = stats.get("latency-us")
                if not lat:
                    raise RuntimeError(f"{kind}: the destination guest made no page requests")
                label = "unlimited" if not push else f"{push // MiB}MiBps"
                note = f"{lat['count']} requests, push {label}"
                held = stats["source"]
                if held:  # the source's share: from the request's arrival to its page's send
                    note += f"; source arrival->send p50 {held['p50']:.0f} us"
                name = f"postcopy.request-latency.{kind}.push-{label}"
                what = f"raw 24 B -> 4 KiB round trip over {kind}, two processes"
                figures.append(Figure.of(f"{name}.p50", lat["p50"], "us", base50,
                                         goal=GOAL_P50, note=note, lower_is_better=True,
                                         baseline_name=f"p50 of a {what}"))
                figures.append(Figure.of(f"{name}.p99", lat["p99"], "us", base99,
                                         goal=GOAL_P99, note=note, lower_is_better=True,
                                         baseline_name=f"p99 of a {what}"))
        return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
