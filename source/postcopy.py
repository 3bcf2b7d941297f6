"""The source's postcopy: the switch, the page-request queue and the postcopy passes.

Strategy: QEMU 7.2's `postcopy_start` (`migration/migration.c`) and the postcopy parts
of `migration/ram.c`, kept apart from the precopy thread that calls them.  The switch
stops the guest, syncs the dirty bitmap one last time, tells the destination to discard
every page still to be sent (one POSTCOPY_RAM_DISCARD per block at least: QEMU 7.2
destinations need one), forgets the last block sent, sends PING 2, the PACKAGED blob
(LISTEN, the devices, PING 3, RUN) and PING 4.  Page requests arrive on the return-path
thread; they are checked as `migrate_handle_rp_req_pages` / `ram_save_queue_pages` check
them and queued (QEMU's `src_page_requests`), and the migration thread is woken.  A
postcopy pass sends queued pages first, ignoring the rate limit, then continues the
background push from just after the last requested page, in small batches so that a new
request never waits behind much; the background push alone obeys
`max-postcopy-bandwidth`.  For every request the time from its arrival to the send of its
page is kept.
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

POSTCOPY_BATCH = 32  # background pages per send: a request waits behind at most these


class RequestError(RuntimeError):
    """A page request QEMU's source would refuse (the migration fails)."""


@dataclass
class PageRequest:
    block: str
    start: int
    length: int
    arrived: float  # time.monotonic()


class PostcopySource:
    """Postcopy state of one outgoing migration."""

    def __init__(self, ram: RamSave, wake: threading.Event) -> None:
        self.ram = ram
        self._wake = wake
        self._queue: deque[PageRequest] = deque()
        self._lock = threading.Lock()
        self._last_block: str | None = None
        self.requests = 0
        self.already_sent = 0  # requested pages that had gone out before the request
        self.latencies: list[float] = []  # seconds from arrival to send
        self.bytes = 0

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
        """From the return-path thread: check a request, queue it, wake the sender."""
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
        with self._lock:
            self._queue.append(PageRequest(block, start, length, time.monotonic()))
            self.requests += 1
        self._wake.set()

    def pending(self) -> bool:
        return bool(self._queue)

    def take(self) -> PageRequest | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    # ------------------------------------------------------------------ passes
    def serve(self, send: Callable[[Any, np.ndarray], int]) -> int:
        """Send every queued page that still has to go; bytes sent."""
        sent = 0
        while (request := self.take()) is not None:
            pages = self.ram.take_pages(request.block, request.start, request.length)
            if not pages.size:
                self.already_sent += 1
                continue
            block = self.ram.block(request.block)
            sent += send(block, pages)
            self.latencies.append(time.monotonic() - request.arrived)
            self.ram.jump_to(request.block, int(pages[-1]) + 1)
        self.bytes += sent
        return sent

    def stats(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1e6
        out: dict[str, Any] = {"requests": self.requests, "already-sent": self.already_sent}
        if lat.size:
            out["request-to-send-us"] = {"count": int(lat.size),
                                         "p50": float(np.percentile(lat, 50)),
                                         "p99": float(np.percentile(lat, 99)),
                                         "max": float(lat.max())}
        return out
