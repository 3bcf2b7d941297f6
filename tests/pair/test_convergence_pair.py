"""XBZRLE, compression and auto-converge between a real source and destination (pair tier).

`OutgoingMigration` and `IncomingMigration` in one process over a unix socket, real
guests in shared memory with a real workload process rewriting a hot set: each feature
must do what it is for (deltas, compressed pages inflated by the destination's threads,
a throttled guest) and the destination must end with exactly the source's memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.guest import BlockSpec, GuestSpec, WorkloadSpec
from harness.guest.workload import Ctl
from tests.pair.test_precopy_pair import _config, _incoming, _outgoing, _wait

MiB = 1 << 20
PAGE = 4096


@dataclass
class Run:
    info: dict[str, Any]
    incoming: Any
    source: Any
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # t, writes, pct


def _migrate(guests, sockdir, caps: dict[str, bool], params: dict[str, Any], *,
             size: int = 32 * MiB, content: str = "random", rate: int = 32 * MiB) -> Run:
    def spec(workload: WorkloadSpec | None) -> GuestSpec:
        return GuestSpec(machine="none", blocks=[BlockSpec("ram", size)], fill=0.25, seed=4,
                         workload=workload, devices=["timer", "globalstate"], content=content)

    src = guests(spec(WorkloadSpec(rate, "hotset", 8 * MiB, 4)), source=True)
    dst = guests(spec(None), source=False)
    src.start()
    configs = []
    for _ in range(2):
        config = _config(**caps)
        config.set_parameters(params)
        configs.append(config)
    outgoing, incoming = _outgoing(src, configs[0]), _incoming(dst, configs[1])
    incoming.snapshot = True
    uri = f"unix:{sockdir}/c.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    run = Run({}, incoming, src)
    deadline = time.monotonic() + 60
    while str(outgoing.state.status) not in ("completed", "failed"):
        assert time.monotonic() < deadline, f"still {outgoing.state.status}"
        info = outgoing.query()
        if src.workload is not None and src.runstate == "running":
            run.samples.append((time.monotonic(), src.workload.writes,
                                int(info.get("cpu-throttle-percentage", 0))))
        time.sleep(0.02)
    assert _wait(outgoing, {"completed", "failed"}) == "completed", outgoing.error_desc
    assert _wait(incoming, {"completed", "failed"}) == "completed", incoming.error_desc
    run.info = outgoing.query()
    source_digests = src.digests()
    for name, digests in incoming.loaded_digests.items():
        assert np.array_equal(digests, source_digests[name]), f"block {name} differs"
    return run


def test_xbzrle_sends_deltas_of_the_hot_set(guests, sockdir):
    run = _migrate(guests, sockdir, {"xbzrle": True},
                   {"max-bandwidth": 16 * MiB, "downtime-limit": 20,
                    "xbzrle-cache-size": 8 * MiB})
    cache = run.info["xbzrle-cache"]
    assert list(cache) == ["cache-size", "bytes", "pages", "cache-miss", "cache-miss-rate",
                           "encoding-rate", "overflow"]  # QEMU 7.2's XBZRLECacheStats
    assert cache["cache-size"] == 8 * MiB
    assert cache["pages"] > 0 and cache["cache-miss"] > 0
    assert cache["bytes"] < cache["pages"] * PAGE / 4, "a delta is a small part of a page"
    assert run.incoming.pages["xbzrle"] == cache["pages"], "the destination decoded each"


def test_compression_threads_on_both_sides(guests, sockdir):
    run = _migrate(guests, sockdir, {"compress": True},
                   {"max-bandwidth": 64 * MiB, "downtime-limit": 100, "compress-threads": 3,
                    "decompress-threads": 2, "compress-level": 1},
                   content="compressible", rate=8 * MiB)
    stats = run.info["compression"]
    assert set(stats) == {"pages", "busy", "busy-rate", "compressed-size", "compression-rate"}
    assert stats["pages"] > 0
    assert stats["compressed-size"] < stats["pages"] * PAGE / 2, "compressible pages shrink"
    ram = run.info["ram"]
    assert ram["transferred"] < (ram["normal"] + stats["pages"]) * PAGE
    assert run.incoming.pages["compressed"] == stats["pages"]


def test_auto_converge_throttles_the_guest_until_precopy_converges(guests, sockdir):
    """A hot set rewritten twice as fast as the link carries it, and larger than what
    one 100 ms window of the rate limit lets out in a burst: without the throttle
    precopy would resend it forever.  The throttled workload really slows down, and the
    throttle is lifted when the migration ends."""
    run = _migrate(guests, sockdir, {"auto-converge": True},
                   {"max-bandwidth": 16 * MiB, "downtime-limit": 20,
                    "cpu-throttle-initial": 70, "cpu-throttle-increment": 20})
    throttle = run.info["x-cpu-throttle"]
    assert throttle["highest"] >= 70 and throttle["steps"] >= 1
    assert "cpu-throttle-percentage" not in run.info, "QEMU stops throttling at the end"
    assert int(run.source.memory.control[Ctl.THROTTLE_PCT]) == 0
    free = [s for s in run.samples if s[2] == 0]
    slowed = [s for s in run.samples if s[2] >= 70]
    assert len(free) >= 2 and len(slowed) >= 2, run.samples

    def rate(samples: list[tuple[float, int, int]]) -> float:
        return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])

    assert rate(slowed) < 0.6 * rate(free), (rate(slowed), rate(free))
