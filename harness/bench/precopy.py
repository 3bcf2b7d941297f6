"""`harness bench precopy`: migrate an idle guest of random content, beside a raw stream.

Strategy: two harness peer processes (what `harness run` starts) migrate an idle guest
whose pages are all non-zero random content over loopback TCP with max-bandwidth
unlimited; the time runs from `migrate` to the destination's `completed` (so loading is
inside it), which a harness destination reports as an event (it is not polled: a query
costs the peer CPU), QEMU by being polled.  The baseline, measured in the same
invocation, is a raw two-process socket stream (`sendall` / `recv_into`) of as many
bytes as the page records of the guest (4104 per page); the two alternate, raw stream
first, for `repeat` rounds (rounds.py) and the medians are compared.  When QEMU is
installed, a real QEMU -> QEMU precopy of an equal guest is measured once the same way
and given against its own raw stream, and the harness's GB/s against QEMU's (goal >= 1).  Figures are GB/s of guest RAM
(size / seconds).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness.runner.peers import HarnessPeer, PeerHandle, QemuPeer, start_together

from .figures import Figure, path_text
from .rawstream import stream_seconds
from .rounds import DEFAULT_ROUNDS, interleave

PAGE = 4096
UNLIMITED = 100 << 30  # bytes/s: far above what loopback carries
GOAL_VS_RAW = 0.9  # issue 15: >= 0.9 of the raw stream
GOAL_VS_QEMU = 1.0  # and >= QEMU -> QEMU


def _random_ram(size: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(size, dtype=np.uint8)
    step = 64 << 20
    for at in range(0, size, step):
        out[at:at + step] = rng.integers(0, 256, min(step, size - at), dtype=np.uint8)
    return out


def wait_status(peer: PeerHandle, want: set[str], timeout: float) -> dict[str, Any]:
    """Poll query-migrate until the status is one of `want` (TimeoutError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        info = peer.execute("query-migrate") or {}
        if info.get("status") in want:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"{peer.role} still {info.get('status')} after {timeout:.0f} s")
        time.sleep(0.005)


def migrate(src: PeerHandle, dst: PeerHandle, timeout: float) -> tuple[float, int]:
    """(seconds from migrate to the destination's completion, stream bytes).

    A harness destination says when it completed with a MIGRATION event stamped by its
    own clock (nobody polls it meanwhile: a query costs the peer CPU); QEMU is polled."""
    for peer in (src, dst):
        peer.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
    if isinstance(dst, HarnessPeer):
        dst.execute("migrate-set-capabilities",
                    {"capabilities": [{"capability": "events", "state": True}]})
    dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    info = dst.execute("query-migrate")
    addr = info["socket-address"][0]
    start, wall = time.perf_counter(), time.time()
    src.execute("migrate", {"uri": f"tcp:{addr['host']}:{addr['port']}"})
    if isinstance(dst, HarnessPeer):
        event = dst.client.wait_event(
            "MIGRATION", lambda e: e.data.get("status") in ("completed", "failed"), timeout)
        seconds = event.timestamp - wall
        done = dst.execute("query-migrate")
    else:
        done = wait_status(dst, {"completed", "failed"}, timeout)
        seconds = time.perf_counter() - start
    result = wait_status(src, {"completed", "failed"}, timeout)
    if done["status"] != "completed" or result["status"] != "completed":
        raise RuntimeError(f"migration ended {result['status']} / {done['status']}: "
                           f"{result.get('error-desc') or done.get('error-desc')}")
    return seconds, int(result["ram"]["transferred"])


def peer_page_path(*peers: PeerHandle) -> str:
    """The page path the harness peers ran, each asked with `x-native` (figures.path_text
    of it; "+"-joined when they differ, "" without a harness peer)."""
    texts = {path_text(str(reply["path"]), dict(reply["parts"])) for peer in peers
             if isinstance(peer, HarnessPeer) and (reply := peer.execute("x-native"))}
    return " + ".join(sorted(texts))


def _migrate_fresh(guest: dict[str, Any], workdir: Path, timeout: float,
                   paths: set[str]) -> float:
    """Seconds of one migration by two fresh harness peers (their page path into `paths`)."""
    dst = HarnessPeer("destination", workdir, guest, ["--incoming", "defer"])
    src = HarnessPeer("source", workdir, guest)
    try:
        start_together([dst, src])
        seconds, _ = migrate(src, dst, timeout)
        paths.add(peer_page_path(src, dst))
        return seconds
    finally:
        src.close()
        dst.close()


def harness_figures(size: int, workdir: Path, timeout: float,
                    repeat: int = DEFAULT_ROUNDS) -> list[Figure]:
    """Medians of `repeat` interleaved rounds: the raw stream of as many bytes as the
    page records (4104 per page), then a migration by fresh peers, and again."""
    guest = {"machine": "none", "seed": 1, "fill": 1.0,
             "blocks": [{"name": "ram", "size": size}], "devices": ["timer", "globalstate"],
             "workload": None}
    data = _random_ram(size // PAGE * (PAGE + 8))
    paths: set[str] = set()
    rounds = interleave(lambda i: stream_seconds(data),
                        lambda i: _migrate_fresh(guest, workdir, timeout, paths), repeat)
    gb = size / 1e9
    low, high = rounds.spread("value", key=lambda s: gb / s)
    note = (f"{rounds.note()}; harness {low:.2f}-{high:.2f} GB/s; raw stream of "
            f"{data.size / 1e9:.3f} GB")
    return [Figure.of("precopy.harness.tcp.idle-random", gb / rounds.median("value"), "GB/s",
                      gb / rounds.median("baseline"), goal=GOAL_VS_RAW, note=note,
                      baseline_name="raw TCP stream of the same bytes, two processes",
                      peer_page_path=" + ".join(sorted(paths)))]


@contextlib.contextmanager
def qemu_pair(size: int, workdir: Path) -> Iterator[tuple[QemuPeer, QemuPeer]]:
    """Two QEMU 7.2 peers of `size` RAM, started together, the source's RAM random (a
    loader file); both closed and the file removed afterwards."""
    loader = workdir / "random-ram.bin"
    _random_ram(size, seed=2).tofile(loader)
    src = QemuPeer("source", workdir, size, loader=loader)
    dst = QemuPeer("destination", workdir, size)
    try:
        start_together([dst, src])
        yield src, dst
    finally:
        src.close()
        dst.close()
        loader.unlink()


def qemu_figures(size: int, workdir: Path, timeout: float) -> list[Figure]:
    from harness.qemu import find_qemu

    if find_qemu() is None:
        print("harness bench: precopy.qemu skipped: qemu-system-x86_64 is not installed",
              file=sys.stderr)
        return []
    with qemu_pair(size, workdir) as (src, dst):
        for peer in (src, dst):
            peer.execute("migrate-set-capabilities",
                         {"capabilities": [{"capability": "events", "state": True}]})
        seconds, stream = migrate(src, dst, timeout)
    raw = stream_seconds(_random_ram(stream, seed=3))
    gb = size / 1e9
    return [Figure.of("precopy.qemu.tcp.idle-random", gb / seconds, "GB/s", gb / raw,
                      note=f"{stream / 1e9:.3f} GB on the wire (QEMU 7.2 -> QEMU 7.2)",
                      baseline_name="raw TCP stream of the same bytes, two processes")]


def run(size: int = 1 << 30, timeout: float = 300.0,
        repeat: int = DEFAULT_ROUNDS) -> list[Figure]:
    workdir = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    try:
        figures = harness_figures(size, workdir, timeout, repeat)
        figures += qemu_figures(size, workdir, timeout)
        harness_fig, qemu_fig = figures[0], figures[-1]
        if qemu_fig is not harness_fig:
            figures.append(Figure.of("precopy.harness-vs-qemu", harness_fig.value, "GB/s",
                                     qemu_fig.value, goal=GOAL_VS_QEMU,
                                     baseline_name="QEMU 7.2 -> QEMU 7.2 of an equal guest"))
        return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
