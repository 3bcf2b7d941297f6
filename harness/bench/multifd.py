"""`harness bench multifd`: precopy with multifd channels, beside a raw stream.

Strategy: as `bench precopy` (precopy.py): two fresh harness peer processes migrate an
idle guest of random pages over loopback TCP, max-bandwidth unlimited, timed from
`migrate` to the destination's `completed` event; here with the capability `multifd` and
`multifd-channels` N on both (no compression), so the pages travel in N more connections
(facts M9: every non-zero page) while the main stream carries the rest.  For each N
(default 2 and 4) the baseline -- a raw two-process socket stream of as many bytes as
the pages and their 1344-byte packet headers (one per 128 pages) -- and the migration
alternate for `repeat` rounds, baseline first (rounds.py), and the medians are compared.
Figures are GB/s of guest RAM.  The raw stream is one connection: the ratio says what
the N channels of the harness make of a socket's worth of loopback, on this machine.  When
QEMU is installed, a QEMU 7.2 -> QEMU 7.2 multifd precopy of an equal guest is measured
once per N the same way, against a raw stream of its own wire bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.protocol.multifd import HEADER_SIZE, PAGES_PER_PACKET
from harness.runner.peers import HarnessPeer, PeerHandle, start_together

from .figures import Figure
from .precopy import PAGE, _random_ram, migrate, peer_page_path, qemu_pair
from .rawstream import stream_seconds
from .rounds import DEFAULT_ROUNDS, interleave

__all__ = ["DEFAULT_CHANNELS", "run"]

DEFAULT_CHANNELS = (2, 4)


def _multifd_migrate(src: PeerHandle, dst: PeerHandle, timeout: float, channels: int
                     ) -> tuple[float, int]:
    """(seconds, wire bytes) of one migration with `channels` multifd channels."""
    for peer in (src, dst):  # the destination's before migrate-incoming (M3)
        peer.execute("migrate-set-capabilities",
                     {"capabilities": [{"capability": "multifd", "state": True}]})
        peer.execute("migrate-set-parameters", {"multifd-channels": channels})
    seconds, transferred = migrate(src, dst, timeout)
    multifd = (src.execute("query-migrate") or {}).get("ram", {}).get("multifd-bytes", 0)
    if not multifd:
        raise RuntimeError(f"multifd {channels}: the {src.kind} source reports no "
                           "multifd-bytes: the pages did not go through the channels")
    return seconds, transferred


def _migrate(guest: dict[str, Any], workdir: Path, timeout: float, channels: int,
             paths: set[str]) -> float:
    """Seconds of one multifd migration by two fresh harness peers."""
    dst = HarnessPeer("destination", workdir, guest, ["--incoming", "defer"])
    src = HarnessPeer("source", workdir, guest)
    try:
        start_together([dst, src])
        seconds, _ = _multifd_migrate(src, dst, timeout, channels)
        paths.add(peer_page_path(src, dst))
        return seconds
    finally:
        src.close()
        dst.close()


def qemu_figure(size: int, workdir: Path, timeout: float, channels: int) -> Figure:
    """QEMU 7.2 -> QEMU 7.2 with `channels` multifd channels, once, beside a raw stream of
    its wire bytes (ram.transferred: main stream and multifd-bytes)."""
    with qemu_pair(size, workdir) as (src, dst):
        seconds, stream = _multifd_migrate(src, dst, timeout, channels)
    raw = stream_seconds(_random_ram(stream, seed=3))
    gb = size / 1e9
    return Figure.of(f"precopy.qemu.multifd-{channels}.tcp.idle-random", gb / seconds, "GB/s",
                     gb / raw, note=f"{stream / 1e9:.3f} GB on the wire (QEMU 7.2 -> QEMU 7.2, "
                     f"{channels} multifd channels); one run",
                     baseline_name="raw TCP stream of the same bytes, two processes")


def figures(size: int, workdir: Path, timeout: float, channels: int,
            repeat: int = DEFAULT_ROUNDS) -> Figure:
    guest = {"machine": "none", "seed": 1, "fill": 1.0,
             "blocks": [{"name": "ram", "size": size}], "devices": ["timer", "globalstate"],
             "workload": None}
    pages = size // PAGE
    data = _random_ram(pages * PAGE + -(-pages // PAGES_PER_PACKET) * HEADER_SIZE)
    paths: set[str] = set()
    rounds = interleave(lambda i: stream_seconds(data),
                        lambda i: _migrate(guest, workdir, timeout, channels, paths), repeat)
    gb = size / 1e9
    low, high = rounds.spread("value", key=lambda s: gb / s)
    note = (f"{rounds.note()}; harness {low:.2f}-{high:.2f} GB/s over {channels} multifd "
            f"channels; raw stream of {data.size / 1e9:.3f} GB on one connection")
    return Figure.of(f"precopy.harness.multifd-{channels}.tcp.idle-random",
                     gb / rounds.median("value"), "GB/s", gb / rounds.median("baseline"),
                     note=note, baseline_name="raw TCP stream of the same bytes, two processes",
                     peer_page_path=" + ".join(sorted(paths)))


def run(size: int = 1 << 30, timeout: float = 300.0, repeat: int = DEFAULT_ROUNDS,
        channels: tuple[int, ...] = DEFAULT_CHANNELS) -> list[Figure]:
    workdir = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    from harness.qemu import find_qemu

    try:
        out = [figures(size, workdir, timeout, n, repeat) for n in channels]
        if find_qemu() is not None:
            out += [qemu_figure(size, workdir, timeout, n) for n in channels]
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
