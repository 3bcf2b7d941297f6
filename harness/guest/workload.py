"""The workload: a process that rewrites guest pages concurrently, like a vCPU.

Strategy: the workload runs in its own OS process -- a fresh interpreter running
`workload_main` (`python -c`, see `_spawn`), attached to the guest's
`GuestMemory` -- so it really writes while a migration thread reads.  It rewrites
whole pages in batches of about a millisecond of work, paced by a token bucket on the
monotonic clock: per batch it picks pages (seeded RNG; `uniform` over all pages of all
blocks, `hotset` uniformly within a seeded contiguous region of `hotset` bytes,
`sequential` walking the pages in order and wrapping), bumps `version[p]`, writes the
oracle's content for the new version (`content.write_pages`), THEN sets `dirty[p] = 1`
-- so whoever has seen a mark sees the content it marks.

Control protocol: int64 words of `GuestMemory.control` (`Ctl` gives the indices).
Aligned 8-byte stores and loads are single instructions, atomic on x86-64, and x86's
total store order makes one side's stores visible to the other in program order; each
word has exactly one writer:

- owner writes `REQ_STATE` (RUN / PAUSE / EXIT), `SYNC_REQUEST` (a sequence number),
  `THROTTLE_PCT` (0..99: the workload sleeps that share of its time; auto-converge) and
  `PARENT_PID`;
- workload writes `ACK_STATE` (STARTING / RUNNING / PAUSED / EXITED / FAILED),
  `SYNC_ACK`, `WORKLOAD_PID`, the counters `WRITES_TOTAL` (batches) and
  `PAGES_WRITTEN_TOTAL` (page rewrites), and the CPU register words (`RIP`, `RFLAGS`,
  `TSC`, `REGS`..+16, see devices.py) once per batch -- except while the guest is
  paused, when the owner may load them (migration destination).
- The workload acts only between batches: it acknowledges PAUSED when it is not
  writing and will not write again until REQ_STATE is RUN (QEMU's vm_stop); EXITED
  just before it exits; FAILED (after printing its traceback) if it crashed.  It exits
  by itself when its parent process disappears (os.getppid() changes).

Postcopy (the destination's userfaultfd): while POSTCOPY is 1 the workload accesses a
page only when `present[p]` is 1.  On a miss it stores WAIT_PAGE and writes the page
request itself, as the return-path message QEMU's fault thread would send (REQ_PAGES_ID
when the block changes, REQ_PAGES otherwise), to its request fd -- the return path's
socket, or a pipe the destination relays -- then waits on its wake pipe until the page
is present (re-checking every few ms, and giving up the batch if asked to pause or
exit).  When the socket breaks (postcopy paused) the write fails and the request is
lost; the access keeps waiting.  After a recovery the owner passes the new socket over
the handoff socketpair (a third fault fd) and bumps REQUEST_FD_GEN: the workload adopts
it before its next request, and a waiting access whose request was lost asks again.  The loader stores PLACED_NS when it places the page named by WAIT_PAGE; the
request latency (sent -> placed) goes to the memory's latency ring, the blocked time to
BLOCKED_NS.  The first access to each page after the switch records
the page's digest in `touch_digest` (what the guest read before it wrote), then the
write goes ahead as usual.  The loader that places pages writes content, then sets
`present`, then wakes the workload if WAIT_PAGE names a page now present.

Dirty harvest (QEMU's migration_bitmap_sync, with KVM's get-dirty-log): while the
workload runs, only the workload writes `dirty`.  The owner bumps SYNC_REQUEST; the
workload, between batches, does `harvest |= dirty; dirty[:] = 0` and sets SYNC_ACK to
the request; the owner waits for the ack, then copies and clears `harvest`.  While the
workload is paused, exited or absent the owner does both steps itself.  No mark can be
lost: at every moment a mark is in exactly one place, written by exactly one side.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.errors import EnvironmentFailure

from . import content
from .memory import PAGE_SIZE, GuestMemory

Pattern = Literal["uniform", "hotset", "sequential"]
PATTERNS = ("uniform", "hotset", "sequential")


class Ctl(IntEnum):
    """Indices of the control words."""

    MAGIC = 0
    REQ_STATE = 1
    ACK_STATE = 2
    SYNC_REQUEST = 3
    SYNC_ACK = 4
    THROTTLE_PCT = 5
    WRITES_TOTAL = 6
    PAGES_WRITTEN_TOTAL = 7
    PARENT_PID = 8
    WORKLOAD_PID = 9
    RIP = 10
    RFLAGS = 11
    TSC = 12
    REGS = 16  # 16 words: 16..31
    POSTCOPY = 32  # owner: 1 = pages may be missing (check `present`, fault on a miss)
    WAIT_PAGE = 33  # workload: the global page it is blocked on, -1 when none
    BLOCKED_NS = 34  # workload: time spent blocked on missing pages (postcopy blocktime)
    BLOCKED_COUNT = 35  # workload: faults it waited for
    REQUESTS = 36  # workload: page requests (one per fault; a re-send counts in RESENT)
    PLACED_NS = 37  # loader: monotonic ns when the page named by WAIT_PAGE was placed
    LAT_COUNT = 38  # workload: latencies written to the memory's latency ring
    REQUEST_FD_GEN = 39  # owner: request sockets handed over so far (postcopy recovery)
    RESENT = 40  # workload: requests written again on a new socket after a recovery
    COMPRESSIBLE = 41  # owner, before the start: 1 = the guest's content is compressible


class Req(IntEnum):
    RUN = 1
    PAUSE = 2
    EXIT = 3


class Ack(IntEnum):
    STARTING = 0
    RUNNING = 1
    PAUSED = 2
    EXITED = 3
    FAILED = 4


MAGIC = 0x4D48_4755_4553_5431  # "MHGUEST1"
BATCH_SECONDS = 0.001
IDLE_POLL = 0.0005
#: how much dirtying a late wake-up may catch up on: on a busy machine the workload is
#: scheduled tens of ms late, and a 10 ms bucket lost most of its rate (2 of 20 MiB/s seen)
BUCKET_SECONDS = 0.1
MAX_BATCH_PAGES = 4096
FAULT_RECHECK = 0.002  # a blocked access re-checks its page at least this often
HANDOFF_TIMEOUT = 10.0  # a new request socket is sent before its generation is bumped


class WorkloadError(EnvironmentFailure, RuntimeError):
    """The workload process did not do what it was asked (timeout, crash, exit)."""


@dataclass(frozen=True)
class WorkloadSpec:
    """How a guest dirties its RAM: bytes/s (0 = idle), pattern, hot-set size, RNG seed."""

    dirty_rate: int = 0
    pattern: Pattern = "uniform"
    hotset: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dirty_rate < 0:
            raise ValueError(f"dirty_rate must be >= 0 bytes/s, got {self.dirty_rate}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, "
                             f"got {self.pattern!r}")
        if self.pattern == "hotset" and self.hotset < PAGE_SIZE:
            raise ValueError(f"pattern 'hotset' needs hotset >= {PAGE_SIZE} bytes, "
                             f"got {self.hotset}")


# ============================================================ in the workload process


class _PagePicker:
    """Chooses the pages of each batch (global page indices, sorted, unique)."""

    def __init__(self, spec: WorkloadSpec, npages: int) -> None:
        self.rng = np.random.default_rng([spec.seed, 0xD1127])
        self.pattern = spec.pattern
        self.lo, self.hi = 0, npages
        if spec.pattern == "hotset":
            hot = min(npages, max(1, spec.hotset // PAGE_SIZE))
            self.lo = int(self.rng.integers(0, npages - hot + 1))
            self.hi = self.lo + hot
        self.cursor = 0

    def pick(self, n: int) -> np.ndarray:
        span = self.hi - self.lo
        n = min(n, span)
        if self.pattern == "sequential":
            pages = self.lo + (self.cursor + np.arange(n, dtype=np.int64)) % span
            self.cursor = int((self.cursor + n) % span)
            return np.sort(pages)
        return np.unique(self.rng.integers(self.lo, self.hi, n, dtype=np.int64))


class _Faults:
    """The workload's side of postcopy: wait for missing pages, record first touches."""

    def __init__(self, memory: GuestMemory, fds: tuple[int, ...]) -> None:
        self.mem = memory
        self.ctl = memory.control
        self.request_w, self.wake_r = fds[0], fds[1]
        os.set_blocking(self.wake_r, False)
        #: postcopy recovery: a new request socket arrives here (faults.py)
        self.handoff = socket.socket(fileno=fds[2]) if len(fds) > 2 else None
        if self.handoff is not None:
            self.handoff.settimeout(HANDOFF_TIMEOUT)
        self.fd_gen = int(self.ctl[Ctl.REQUEST_FD_GEN])
        self.unsent = False  # the last request died with its socket
        self.starts = memory.block_starts()
        self.last_block: int | None = None

    def ready(self, pages: np.ndarray) -> bool:
        """Make every page accessible; False if asked to stop meanwhile (skip the batch)."""
        mem = self.mem
        for page in pages[mem.present[pages] == 0].tolist():
            if not self._wait(page):
                return False
        fresh = pages[mem.touched[pages] == 0]
        if fresh.size:
            self._touch(fresh)
        return True

    def _wait(self, page: int) -> bool:
        mem, ctl = self.mem, self.ctl
        ctl[Ctl.PLACED_NS] = 0
        ctl[Ctl.WAIT_PAGE] = page
        start = time.monotonic_ns()
        self.ctl[Ctl.REQUESTS] += 1  # one request per fault, however often it is written
        self._request(page)
        try:
            while not mem.present[page]:
                if int(ctl[Ctl.REQ_STATE]) != Req.RUN or not int(ctl[Ctl.POSTCOPY]):
                    return bool(mem.present[page]) or not int(ctl[Ctl.POSTCOPY])
                if os.getppid() != int(ctl[Ctl.PARENT_PID]):
                    return False  # its owner died: the loop sees it and exits
                if self.unsent and int(ctl[Ctl.REQUEST_FD_GEN]) != self.fd_gen:
                    self._request(page)  # the socket it died on was replaced: ask again
                    ctl[Ctl.RESENT] += 1
                select.select([self.wake_r], [], [], FAULT_RECHECK)
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
        finally:
            ctl[Ctl.WAIT_PAGE] = -1
        woke = time.monotonic_ns()
        ctl[Ctl.BLOCKED_NS] += woke - start
        ctl[Ctl.BLOCKED_COUNT] += 1
        placed = int(ctl[Ctl.PLACED_NS]) or woke
        n = int(ctl[Ctl.LAT_COUNT])
        mem.latency[n % mem.latency.size] = placed - start
        ctl[Ctl.LAT_COUNT] = n + 1
        return True

    def _request(self, page: int) -> None:
        """migrate_send_rp_req_pages: the page's whole (host) page, by block name when the
        block changed since the previous request."""
        from harness.protocol.return_path import ReqPages, ReqPagesId, encode_rp

        self._adopt_new_socket()
        index = int(np.searchsorted(self.starts, page, side="right") - 1)
        start = (page - int(self.starts[index])) * PAGE_SIZE
        if index != self.last_block:
            message = encode_rp(ReqPagesId(start, PAGE_SIZE, self.mem.blocks[index].name))
            self.last_block = index
        else:
            message = encode_rp(ReqPages(start, PAGE_SIZE))
        view = memoryview(message)
        try:
            while view:  # one write for a message this small, but be exact
                try:
                    view = view[os.write(self.request_w, view):]
                except BlockingIOError:  # the socket is shared with a non-blocking owner
                    select.select([], [self.request_w], [], FAULT_RECHECK)
        except OSError:  # the channel broke (postcopy paused): the request is lost
            self.unsent = True
            self.last_block = None
            return
        self.unsent = False

    def _adopt_new_socket(self) -> None:
        """After a postcopy recovery: write on the new return path's socket (passed over
        the handoff before REQUEST_FD_GEN was bumped), starting with a REQ_PAGES_ID."""
        gen = int(self.ctl[Ctl.REQUEST_FD_GEN])
        if self.handoff is None or gen == self.fd_gen:
            return
        while self.fd_gen != gen:
            try:
                _, fds, _, _ = socket.recv_fds(self.handoff, 16, 1)
            except OSError as err:  # not there (yet): keep the old one, try next time
                print(f"workload: no request socket handed over: {err}", file=sys.stderr)
                return
            for fd in fds:
                os.close(self.request_w)
                self.request_w = fd
            self.fd_gen += 1
        self.last_block = None

    def _touch(self, pages: np.ndarray) -> None:
        """What each page held when first accessed (before this write changes it)."""
        mem = self.mem
        which = np.searchsorted(self.starts, pages, side="right") - 1
        for page, b in zip(pages.tolist(), which.tolist()):
            local = page - int(self.starts[b])
            block = mem.ram[mem.blocks[b].name]
            digest = content.page_digests(block[local * PAGE_SIZE:(local + 1) * PAGE_SIZE])
            mem.touch_digest[page] = digest[0]
            mem.touched[page] = 1


class _Writer:
    """Rewrites batches of pages: version, then content, then the dirty mark."""

    def __init__(self, memory: GuestMemory, content_seed: int,
                 faults: _Faults | None = None) -> None:
        self.memory = memory
        self.seed = content_seed
        self.starts = memory.block_starts()
        self.faults = faults
        self.compressible = bool(memory.control[Ctl.COMPRESSIBLE])

    def write(self, pages: np.ndarray) -> None:
        mem = self.memory
        if self.faults is not None and int(mem.control[Ctl.POSTCOPY]) and \
                not self.faults.ready(pages):
            return
        mem.version[pages] += 1
        which = np.searchsorted(self.starts, pages, side="right") - 1
        for b in np.unique(which):
            sel = pages[which == b]
            local = sel - self.starts[b]
            spec = mem.blocks[int(b)]
            content.write_pages(mem.ram[spec.name], self.seed, int(b), local,
                                mem.version[sel], 1.0, self.compressible)
        mem.dirty[pages] = 1  # after the content: a harvested mark implies new content

    def tick_cpu(self, batch_pages: np.ndarray) -> None:
        """Advance the "CPU registers" (devices.py's cpu device) once per batch."""
        c = self.memory.control
        c[Ctl.TSC] += 1
        writes = int(c[Ctl.PAGES_WRITTEN_TOTAL])
        c[Ctl.RIP] = np.int64(content.mix_int(writes) >> 1)
        regs = c[Ctl.REGS:Ctl.REGS + 16]
        regs[:] = np.roll(regs, 1)
        regs[0] = int(batch_pages[0]) if len(batch_pages) else 0
        c[Ctl.RFLAGS] = 0x2 | (0x40 if len(batch_pages) == 0 else 0)


class _Loop:
    """The workload's main loop: control, pacing, batches, syncs."""

    def __init__(self, memory: GuestMemory, spec: WorkloadSpec, content_seed: int,
                 fault_fds: tuple[int, ...] | None = None) -> None:
        self.mem = memory
        self.ctl = memory.control
        self.spec = spec
        self.picker = _PagePicker(spec, memory.npages)
        faults = _Faults(memory, fault_fds) if fault_fds is not None else None
        self.writer = _Writer(memory, content_seed, faults)
        self.parent = int(self.ctl[Ctl.PARENT_PID])
        self.pages_per_s = spec.dirty_rate / PAGE_SIZE
        self.tokens = 0.0
        self.last = time.monotonic()
        self.sleep_debt = 0.0
        self.batch_cap = 16  # adapted so a batch is about BATCH_SECONDS of work

    def serve_sync(self) -> None:
        req = int(self.ctl[Ctl.SYNC_REQUEST])
        if req != int(self.ctl[Ctl.SYNC_ACK]):
            np.bitwise_or(self.mem.harvest, self.mem.dirty, out=self.mem.harvest)
            self.mem.dirty[:] = 0
            self.ctl[Ctl.SYNC_ACK] = req

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent

    def run(self) -> None:
        while self.parent_alive():
            self.serve_sync()
            req = int(self.ctl[Ctl.REQ_STATE])
            if req == Req.EXIT:
                return
            if req == Req.PAUSE:
                self.ctl[Ctl.ACK_STATE] = Ack.PAUSED
                time.sleep(IDLE_POLL)
                self.last = time.monotonic()  # a paused vCPU accrues no work
                self.tokens = 0.0
                continue
            self.ctl[Ctl.ACK_STATE] = Ack.RUNNING
            self.step()

    def step(self) -> None:
        """One batch, or a short sleep when the bucket holds no whole page.

        Throttling (QEMU's cpu_throttle_set) stops the vCPU `pct`% of the time: tokens
        accrue at the throttled rate, and after each batch the workload sleeps so that
        the batch is (100 - pct)% of the elapsed time.  A paced workload then dirties
        `rate * (1 - pct)`, a CPU-bound one `capacity * (1 - pct)`.
        """
        now = time.monotonic()
        throttle = min(max(int(self.ctl[Ctl.THROTTLE_PCT]), 0), 99)
        pps = self.pages_per_s * (100 - throttle) / 100
        self.tokens = min(self.tokens + (now - self.last) * pps,
                          max(self.batch_cap, pps * BUCKET_SECONDS))
        self.last = now
        n = min(int(self.tokens), self.batch_cap, self.mem.npages)
        if n < 1:
            wait = (1 - self.tokens) / pps if pps > 0 else IDLE_POLL
            time.sleep(min(max(wait, 0.0), IDLE_POLL))
            return
        t0 = time.monotonic()
        self.batch(n)
        work = time.monotonic() - t0
        self.adapt(n, work)
        if throttle:
            self.throttle_sleep(work * throttle / (100 - throttle))

    def throttle_sleep(self, seconds: float) -> None:
        """Sleep `seconds` on average: oversleeping is paid back on the next batches."""
        self.sleep_debt = max(self.sleep_debt, -0.01) + seconds  # bounded pay-back
        if self.sleep_debt > 0:
            t0 = time.monotonic()
            time.sleep(self.sleep_debt)
            self.sleep_debt -= time.monotonic() - t0

    def batch(self, n: int) -> None:
        pages = self.picker.pick(n)
        self.writer.write(pages)
        self.tokens -= len(pages)
        self.ctl[Ctl.PAGES_WRITTEN_TOTAL] += len(pages)
        self.ctl[Ctl.WRITES_TOTAL] += 1
        self.writer.tick_cpu(pages)

    def adapt(self, n: int, work: float) -> None:
        if n >= self.batch_cap and work > 0:
            per_page = work / n
            target = int(BATCH_SECONDS / per_page)
            self.batch_cap = max(1, min(MAX_BATCH_PAGES, (self.batch_cap + target) // 2 or 1))


def workload_main(descriptor: dict[str, Any], spec: dict[str, Any], content_seed: int,
                  fault_fds: tuple[int, ...] | None = None) -> None:
    """Body of the workload process: attach, run the loop, report how it ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its owner stops it, not the terminal
    memory = GuestMemory.attach(descriptor)
    ctl = memory.control
    try:
        if int(ctl[Ctl.MAGIC]) != MAGIC:
            raise WorkloadError(f"segment '{memory.name}' has no workload control block")
        ctl[Ctl.WORKLOAD_PID] = os.getpid()
        _Loop(memory, WorkloadSpec(**spec), content_seed, fault_fds).run()
        ctl[Ctl.ACK_STATE] = Ack.EXITED
    except Exception:  # noqa: BLE001 -- any crash must reach the owner as FAILED
        ctl[Ctl.ACK_STATE] = Ack.FAILED
        traceback.print_exc(file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        del ctl
        memory.close()


def _main(argv: list[str]) -> None:
    """`python -c ... JSON`: JSON = {descriptor, spec, content_seed}."""
    args = json.loads(argv[1])
    fds = args.get("fault_fds")
    workload_main(args["descriptor"], args["spec"], int(args["content_seed"]),
                  tuple(fds) if fds else None)


# ==================================================================== in the owner

_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding `harness`


def _spawn(descriptor: dict[str, Any], spec: WorkloadSpec, content_seed: int,
           fault_fds: tuple[int, ...] | None = None) -> subprocess.Popen[bytes]:
    """A fresh interpreter running `workload_main` (no fork of a threaded owner, and --
    unlike multiprocessing's "spawn" -- no re-import of the owner's __main__, which
    fails for stdin/REPL mains and drags a CLI's imports into every workload)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, env.get("PYTHONPATH")) if p)
    arg = json.dumps({"descriptor": descriptor, "spec": asdict(spec),
                      "content_seed": content_seed, "fault_fds": fault_fds})
    code = "import sys; from harness.guest.workload import _main; _main(sys.argv)"
    return subprocess.Popen([sys.executable, "-c", code, arg], env=env,
                            stdin=subprocess.DEVNULL, pass_fds=fault_fds or ())


def _wait(predicate: Callable[[], bool], timeout: float, poll: float = 0.0002) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass (monotonic deadline)."""
    deadline = time.monotonic() + timeout
    spin = 0
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        spin += 1
        time.sleep(0 if spin < 50 else poll)
    return True


class Workload:
    """The owner's handle on a workload process.  Public methods are for the owner only.

    States: not started -> running <-> paused -> stopped.  `start` returns once the
    process acknowledges RUNNING; `pause` once it acknowledges PAUSED (no write in
    flight); `stop` always reaps the process (EXIT, join, kill).
    """

    def __init__(self) -> None:
        self.memory: GuestMemory | None = None
        self.spec: WorkloadSpec | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.RLock()  # serialises state changes and harvests
        self._rate_mark: tuple[float, int] | None = None
        self.exitcode: int | None = None  # once stopped
        self._final_writes = 0
        self._final_state = Ack.STARTING

    @classmethod
    def start(cls, memory: GuestMemory, spec: WorkloadSpec, *, content_seed: int = 0,
              timeout: float = 30.0, fault_fds: tuple[int, ...] | None = None,
              compressible: bool = False, paused: bool = False) -> Workload:
        """Spawn the workload on `memory` and wait until it runs -- or, `paused`, return
        at once: it acknowledges PAUSED once ready, `resume` waits until it runs.

        `fault_fds` (request fd, wake pipe read end[, handoff socket]: faults.py) let
        it fault on missing pages while the control word POSTCOPY is set (a postcopy
        destination)."""
        self = cls()
        self.memory, self.spec = memory, spec
        ctl = memory.control
        ctl[Ctl.MAGIC] = MAGIC
        ctl[Ctl.ACK_STATE] = Ack.STARTING
        ctl[Ctl.REQ_STATE] = Req.PAUSE if paused else Req.RUN
        ctl[Ctl.SYNC_ACK] = ctl[Ctl.SYNC_REQUEST]
        ctl[Ctl.PARENT_PID] = os.getpid()
        ctl[Ctl.COMPRESSIBLE] = int(compressible)
        try:
            self.process = _spawn(memory.descriptor, spec, content_seed, fault_fds)
            if not paused:
                self._await(Ack.RUNNING, timeout, "start")
        except BaseException:
            self.stop()
            raise
        self._rate_mark = (time.monotonic(), self.writes)
        return self

    # ---------------------------------------------------------------- queries
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def state(self) -> Ack:
        """The state the process last acknowledged (its last one once stopped)."""
        if self.memory is None or self.memory.closed:
            return self._final_state
        return Ack(int(self.memory.control[Ctl.ACK_STATE]))

    @property
    def writes(self) -> int:
        """Pages rewritten so far (the last count once the memory is closed)."""
        if self.memory is None or self.memory.closed:
            return self._final_writes
        return int(self.memory.control[Ctl.PAGES_WRITTEN_TOTAL])

    def rate(self) -> float:
        """Bytes actually dirtied per second since the previous call (or the start)."""
        now, writes = time.monotonic(), self.writes
        then, before = self._rate_mark or (now, writes)
        self._rate_mark = (now, writes)
        return (writes - before) * PAGE_SIZE / (now - then) if now > then else 0.0

    # ---------------------------------------------------------------- control
    def _await(self, ack: Ack, timeout: float, what: str) -> None:
        assert self.memory is not None
        ctl = self.memory.control
        ok = _wait(lambda: int(ctl[Ctl.ACK_STATE]) in (ack, Ack.FAILED) or not self.alive,
                   timeout)
        state = int(ctl[Ctl.ACK_STATE])
        if state == ack:
            return
        if not ok:
            raise WorkloadError(f"workload {what}: no {ack.name} acknowledgement within "
                                f"{timeout}s (state {Ack(state).name})")
        code = None if self.process is None else self.process.poll()
        raise WorkloadError(f"workload {what}: process ended (exit code {code}, "
                            f"state {Ack(state).name})")

    def pause(self, timeout: float = 10.0) -> None:
        """Stop the vCPU: return once no write is in flight (QEMU's vm_stop)."""
        with self.lock:
            assert self.memory is not None
            self.memory.control[Ctl.REQ_STATE] = Req.PAUSE
            self._await(Ack.PAUSED, timeout, "pause")

    def resume(self, timeout: float = 10.0) -> None:
        """Let the vCPU run again (QEMU's vm_start); returns once it runs."""
        with self.lock:
            assert self.memory is not None
            self.memory.control[Ctl.REQ_STATE] = Req.RUN
            self._await(Ack.RUNNING, timeout, "resume")

    def set_throttle(self, pct: int) -> None:
        """Sleep `pct`% of the time (0..99), like QEMU's cpu_throttle_set."""
        if not 0 <= pct <= 99:
            raise ValueError(f"throttle must be within 0..99 percent, got {pct}")
        assert self.memory is not None
        self.memory.control[Ctl.THROTTLE_PCT] = pct

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to exit, join it, kill it if it will not; always reaps."""
        with self.lock:
            proc, self.process = self.process, None
            if proc is None:
                return
            mem = self.memory if self.memory is not None and not self.memory.closed else None
            try:
                if mem is not None:
                    mem.control[Ctl.REQ_STATE] = Req.EXIT
                    proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            finally:
                if proc.poll() is None:
                    proc.kill()
                    try:
                        proc.wait(10.0)
                    except subprocess.TimeoutExpired:  # unkillable (D state): report it
                        raise WorkloadError(f"workload pid {proc.pid} survived SIGKILL "
                                            f"for 10s") from None
                self.exitcode = proc.returncode
                if mem is not None:
                    self._final_writes = int(mem.control[Ctl.PAGES_WRITTEN_TOTAL])
                    self._final_state = Ack(int(mem.control[Ctl.ACK_STATE]))

    # ---------------------------------------------------------------- harvest
    def runs_vcpu(self) -> bool:
        """Whether the process may be writing (harvests must then go through it)."""
        assert self.memory is not None
        req = int(self.memory.control[Ctl.REQ_STATE])
        ack = int(self.memory.control[Ctl.ACK_STATE])
        return self.alive and not (req != Req.RUN and ack in (Ack.PAUSED, Ack.EXITED))


def _harvest_by_owner(memory: GuestMemory) -> np.ndarray:
    out = (memory.harvest | memory.dirty).astype(bool)
    memory.dirty[:] = 0
    memory.harvest[:] = 0
    return out


def harvest_dirty(memory: GuestMemory, workload: Workload | None,
                  timeout: float = 10.0) -> np.ndarray:
    """Pages written since the last harvest, over all blocks (QEMU's bitmap sync).

    With a running workload the workload moves `dirty` to `harvest` between two batches
    (see the module docstring); otherwise this process does it.  Raises WorkloadError
    naming `timeout` if a running workload never acknowledges.
    """
    if workload is None:
        return _harvest_by_owner(memory)
    with workload.lock:
        if not workload.runs_vcpu():
            return _harvest_by_owner(memory)
        ctl = memory.control
        req = int(ctl[Ctl.SYNC_REQUEST]) + 1
        ctl[Ctl.SYNC_REQUEST] = req
        acked = _wait(lambda: int(ctl[Ctl.SYNC_ACK]) == req or not workload.alive, timeout)
        if int(ctl[Ctl.SYNC_ACK]) != req:
            if workload.alive:
                raise WorkloadError(f"dirty harvest: the workload did not acknowledge sync "
                                    f"request {req} within {timeout}s")
            return _harvest_by_owner(memory)  # it died: nobody else writes now
        assert acked
        out = memory.harvest.astype(bool)
        memory.harvest[:] = 0
        return out


def split_by_block(memory: GuestMemory, pages: np.ndarray) -> dict[str, np.ndarray]:
    """A per-page array over all blocks (e.g. a harvest) as arrays per block name."""
    return memory.split(pages)
