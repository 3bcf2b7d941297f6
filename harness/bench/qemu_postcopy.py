"""QEMU 7.2 -> QEMU 7.2 postcopy page-request latency, with and without postcopy-preempt.

Strategy: two real QEMU pc machines boot the harness's own guest (harness.realguest),
which sweeps its RAM flat out; the source migrates through the timing relay (relay.py)
with precopy at 8 MiB/s and `migrate-start-postcopy` as soon as it is active, as the
harness pair in postcopy.py is driven, so the destination guest runs at once and faults
on nearly every page it sweeps.  `postcopy-ram` (and `postcopy-preempt` when asked) is
set on both sides, on the destination before `migrate-incoming` (fact P1); the
background push is `max-postcopy-bandwidth` (0: unlimited).  The relay gives the
latencies (from a request's arrival at the relay to its page's record); QEMU itself is
not changed or asked for them.  `run` gives, for each push, p50 and p99 without and with
preempt, medians of interleaved rounds against a raw TCP round trip, with no goal: the
issue reports them beside the harness's figures.  Those are measured elsewhere (the
harness destination's own clock, request sent -> page placed), so the note says which.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.qemu import find_qemu, userfaultfd_available
from harness.realguest.image import GuestProgram
from harness.runner.peers import QemuPeer

from .figures import Figure
from .postcopy import latency_figures, push_label, raw_percentiles
from .precopy import wait_status
from .relay import Relay, Tap
from .rounds import DEFAULT_ROUNDS, interleave

MiB = 1 << 20
PRECOPY_RATE = 8 * MiB  # bytes/s before the switch, as the harness pair (postcopy.py)
FLAT_OUT = 16 << 30  # bytes/s: more than a TCG vCPU writes, so it never waits (F14)
NOTE = ("relay-observed: a request's bytes reaching a relay between the QEMUs -> the "
        "page's record reaching it (QEMU's source and one relay round trip; not the "
        "destination's fault nor its placing)")


@dataclass
class QemuLatencies:
    microseconds: np.ndarray
    requests: int  # page requests the relay saw
    early: int  # of which for a page already past the relay (in flight), not timed
    connections: int  # 1, or 2 with the preempt channel
    postcopy_requests: int  # QEMU's own count (query-migrate on the source)
    problems: list[str]


def _boot(peer: QemuPeer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while "S" not in peer.serial_text():
        if not peer.alive():
            raise RuntimeError(f"{peer.role} QEMU exited: {peer.stderr_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{peer.role}: the guest did not boot in {timeout:.0f} s")
        time.sleep(0.01)


def qemu_latencies(workdir: Path, memory: int = 64 * MiB, push: int = 0,
                   preempt: bool = False, timeout: float = 60.0) -> QemuLatencies:
    """One postcopy migration between two QEMU 7.2 pc peers through the relay."""
    program = GuestProgram(memory=memory, dirty_rate=FLAT_OUT)
    src = QemuPeer("source", workdir, memory, machine="pc", program=program)
    dst = QemuPeer("destination", workdir, memory, machine="pc", program=program)
    tap = Tap()
    try:
        src.start()
        dst.start()
        _boot(src, 20.0)
        caps = [{"capability": "postcopy-ram", "state": True}]
        if preempt:
            caps.append({"capability": "postcopy-preempt", "state": True})
        for peer in (src, dst):
            peer.execute("migrate-set-capabilities", {"capabilities": caps})
        src.execute("migrate-set-parameters", {"max-bandwidth": PRECOPY_RATE,
                                               "max-postcopy-bandwidth": push})
        dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        addr = dst.execute("query-migrate")["socket-address"][0]
        with Relay((addr["host"], int(addr["port"])), tap, timeout) as relay:
            src.execute("migrate", {"uri": f"tcp:127.0.0.1:{relay.port}"})
            wait_status(src, {"active", "failed"}, timeout)
            src.execute("migrate-start-postcopy")
            done = wait_status(src, {"completed", "failed"}, timeout)
            if done["status"] != "completed":
                raise RuntimeError(f"QEMU postcopy failed: {done.get('error-desc')}")
            connections = relay.connections
        requests = int(done.get("ram", {}).get("postcopy-requests", 0))
        return QemuLatencies(tap.microseconds(), tap.requests, tap.early, connections,
                             requests,
                             list(tap.problems))
    finally:
        src.close()
        dst.close()


def run(pushes: tuple[int, ...] = (0, 64 * MiB), repeat: int = DEFAULT_ROUNDS,
        memory: int = 64 * MiB) -> list[Figure]:
    """For each push, without and with postcopy-preempt: p50 and p99 (no goal: reported
    beside the harness's), each round a raw TCP round trip then a QEMU -> QEMU run."""
    if find_qemu() is None or not userfaultfd_available():
        print("harness bench: postcopy.qemu skipped: qemu-system-x86_64 is not installed "
              "or userfaultfd is unavailable", file=sys.stderr)
        return []
    workdir = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    figures: list[Figure] = []
    try:
        for push in pushes:
            for preempt in (False, True):
                figures += _figures(workdir, memory, push, preempt, repeat)
        return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _figures(workdir: Path, memory: int, push: int, preempt: bool,
             repeat: int) -> list[Figure]:
    runs: list[QemuLatencies] = []

    def one(_: int) -> dict[str, float]:
        got = qemu_latencies(workdir, memory, push, preempt)
        if preempt and got.connections != 2:
            raise RuntimeError(f"QEMU postcopy-preempt: {got.connections} connection(s) "
                               "reached the relay, not 2")
        runs.append(got)
        us = got.microseconds if got.microseconds.size else np.array([np.nan])
        return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99))}

    rounds = interleave(lambda i: raw_percentiles("tcp"), one, repeat)
    timed = sum(r.microseconds.size for r in runs)
    note = (f"{NOTE}; QEMU 7.2 pc, {memory >> 20} MiB guest sweeping flat out; "
            f"{timed} timed of {sum(r.requests for r in runs)} requests "
            f"({sum(r.early for r in runs)} for a page already past the relay), "
            f"QEMU's postcopy-requests {sum(r.postcopy_requests for r in runs)}, "
            f"push {push_label(push)}, postcopy-preempt {'on' if preempt else 'off'}")
    problems = sorted({p for r in runs for p in r.problems})
    if problems:
        note += "; " + "; ".join(problems)
    name = f"postcopy.qemu.request-latency.tcp.push-{push_label(push)}" + \
        (".preempt" if preempt else "")
    return latency_figures(name, rounds, (None, None), note)
