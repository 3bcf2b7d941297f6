"""The source's postcopy: the switch, page requests, and their answers.

Strategy: QEMU 7.2's `postcopy_start` (`migration/migration.c`) and the postcopy parts
of `migration/ram.c`, kept apart from the precopy thread that calls them.  The switch
stops the guest, syncs the dirty bitmap one last time, tells the destination to discard
every page still to be sent (one POSTCOPY_RAM_DISCARD per block at least: QEMU 7.2
destinations need one), forgets the last block sent, sends PING 2, the PACKAGED blob
(LISTEN, the devices, PING 3, RUN) and PING 4.  Page requests arrive on the return-path
thread; they are checked as `migrate_handle_rp_req_pages` / `ram_save_queue_pages` check
them, and the page is sent right there, from that thread, by the outgoing stream
(stream.py): on the preempt channel when postcopy-preempt is on, else on the main channel
between two batches of the background push, which hands the channel over without a sleep.
The push then continues from just after the requested page; it alone obeys
`max-postcopy-bandwidth`.
Requests that arrive before pages can go out are queued (QEMU's `src_page_requests`) and
answered at the switch.  For every request the time from its arrival to the send of its
page is kept.  While postcopy is paused (and until the recovery handshake is over)
requests are queued again (`hold`), to be answered once pages can go out on the new
channel; the counters carry on across the recovery.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.protocol import (
    Ping,
    PostcopyListen,
    PostcopyRun,
    ReqPages,
    ReqPagesId,
    StreamEncoder,
    discard_commands,
)
from harness.protocol.ram import PAGE
from harness.protocol.return_path import RpMessage

from .ram_save import RamSave
from .return_path import ReturnPathError


class RequestError(ReturnPathError):
    """A page request QEMU's source would refuse (the migration fails)."""


@dataclass
class PageRequest:
    block: str
    start: int
    length: int
    arrived: float  # time.monotonic()


class PostcopySource:
    """Postcopy state of one outgoing migration."""

    def __init__(self, ram: RamSave) -> None:
        self.ram = ram
        self._queue: deque[PageRequest] = deque()  # requests before pages can go out
        self._lock = threading.Lock()
        self._serve: Callable[[str, int, int], bool] | None = None
        self._last_block: str | None = None
        self.requests = 0
        self.already_sent = 0  # requested pages that had gone out before the request
        self.latencies: list[float] = []  # seconds from arrival to send

    # ------------------------------------------------------------------ switch
    def discards(self) -> list[Any]:
        """POSTCOPY_RAM_DISCARD commands: every page the bitmap still holds, per block."""
        commands = []
        for block in self.ram.blocks:
            bits = np.concatenate(([False], block.bitmap, [False])).view(np.int8)
            edges = np.flatnonzero(np.diff(bits))
            ranges = [(int(a) * PAGE, int(b - a) * PAGE) for a, b in zip(edges[::2], edges[1::2])]
            commands += discard_commands(block.name, ranges)
        return commands

    @staticmethod
    def package(enc: StreamEncoder, devices: list[Any]) -> bytes:
        """The PACKAGED blob: LISTEN, the devices' FULL sections, PING 3, RUN."""
        blob = bytearray(enc.command(PostcopyListen()))
        for section_id, idstr, instance_id, vmsd, values in devices:
            blob += enc.device(section_id, idstr, instance_id, vmsd, values, describe=False)
        blob += enc.command(Ping(3)) + enc.command(PostcopyRun())
        return enc.packaged(bytes(blob))

    # ------------------------------------------------------------------ requests
    def on_request(self, message: RpMessage) -> None:
        """From the return-path thread: check a request, then send its page at once (or
        queue it while pages cannot go out yet)."""
        if isinstance(message, ReqPagesId):
            block, start, length = message.block, message.start, message.length
        else:
            assert isinstance(message, ReqPages)
            if self._last_block is None:
                raise RequestError("ram_save_queue_pages: no previous block")
            block, start, length = self._last_block, message.start, message.length
        if start % PAGE or length % PAGE:
            raise RequestError(f"migrate_handle_rp_req_pages: Misaligned page request, "
                               f"start: {start:x} len: {length}")
        known = {b.name: b for b in self.ram.blocks}
        if block not in known:
            raise RequestError(f"ram_save_queue_pages: Unknown ramblock '{block}'")
        self._last_block = block
        used = known[block].mem.size
        if length == 0 or start + length > used:
            raise RequestError(f"ram_save_queue_pages request overrun start={start:x} "
                               f"len={length:x} blocklen={used:x}")
        request = PageRequest(block, start, length, time.monotonic())
        with self._lock:
            self.requests += 1
            serve = self._serve
            if serve is None:
                self._queue.append(request)
                return
        self._answer(request, serve)

    def serve_with(self, serve: Callable[[str, int, int], bool]) -> None:
        """From now on a request is answered as it arrives (and the queue is drained)."""
        with self._lock:
            self._serve = serve
            queued, self._queue = list(self._queue), deque()
        for request in queued:
            self._answer(request, serve)

    def hold(self) -> None:
        """Postcopy paused: requests are queued until `serve_with` again."""
        with self._lock:
            self._serve = None

    def _answer(self, request: PageRequest, serve: Callable[[str, int, int], bool]) -> None:
        if serve(request.block, request.start, request.length):
            self.latencies.append(time.monotonic() - request.arrived)
        else:
            self.already_sent += 1

    def pending(self) -> bool:
        return bool(self._queue)

    def stats(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1e6
        out: dict[str, Any] = {"requests": self.requests, "already-sent": self.already_sent}
        if lat.size:
            out["request-to-send-us"] = {"count": int(lat.size),
                                         "p50": float(np.percentile(lat, 50)),
                                         "p99": float(np.percentile(lat, 99)),
                                         "max": float(lat.max())}
        return out
