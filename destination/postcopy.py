"""The destination's postcopy: QEMU's PostcopyState, discards, the listen switch and faults.

Strategy: QEMU 7.2's `loadvm_postcopy_handle_*` (`migration/savevm.c`) and
`postcopy-ram.c`, as one object driven by the incoming migration's load loop.  The state
table (NONE -> ADVISE -> DISCARD -> LISTENING -> RUNNING -> END) and its messages are
QEMU's, including 7.2's quirk that LISTEN without any DISCARD leaves the state at DISCARD,
so the RUN that follows fails (a 7.2 destination behaves so; a source must send a
discard per block).  ADVISE makes every page of the guest missing (QEMU discards all
RAM); pages loaded afterwards are present; DISCARD ranges make pages missing again.
From LISTEN the loader places each page once and marks it present; the guest, started at
RUN, faults on missing pages: a fault thread turns each fault into REQ_PAGES_ID (when the
block changes) or REQ_PAGES on the return path, and placing the page wakes the guest.
The time from request to placement of each requested page is recorded.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from harness.protocol import (
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    PostcopyRun,
    RamPages,
    RemoteProtocolError,
    ReqPages,
    ReqPagesId,
    encode_rp,
)
from harness.protocol.ram import PAGE

log = logging.getLogger(__name__)


class PostcopyState(enum.IntEnum):
    """postcopy-ram.h: PostcopyState."""

    NONE = 0
    ADVISE = 1
    DISCARD = 2
    LISTENING = 3
    RUNNING = 4
    END = 5


P = PostcopyState


class PostcopyIncoming:
    """Postcopy on the destination of one incoming migration."""

    def __init__(self, guest: Any, postcopy_ram: bool, send_rp: Callable[[bytes], None],
                 loader: Any) -> None:
        self.guest = guest
        self.postcopy_ram = postcopy_ram
        self._send_rp = send_rp
        self._loader = loader
        self.state = P.NONE
        self._fds: tuple[int, int] | None = None
        self._fault_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending: dict[int, float] = {}  # global page -> time its request was sent
        self._lock = threading.Lock()
        self._last_block: str | None = None
        self.requests = 0
        self.latencies: list[float] = []  # seconds, request sent -> page placed
        self.fault_error: str | None = None
        memory = guest.memory
        self._starts = memory.block_starts()
        self._names = [b.name for b in memory.blocks]

    # ------------------------------------------------------------------ commands
    def advise(self, cmd: PostcopyAdvise) -> None:
        """loadvm_postcopy_handle_advise."""
        if self.state is not P.NONE:
            raise RemoteProtocolError(f"CMD_POSTCOPY_ADVISE in wrong postcopy state "
                                      f"({int(self.state)})", offset=cmd.offset)
        if cmd.page_size_summary is None:
            if self.postcopy_ram:
                raise RemoteProtocolError("RAM postcopy is enabled but have 0 byte advise",
                                          offset=cmd.offset)
            return
        if not self.postcopy_ram:
            raise RemoteProtocolError("RAM postcopy is disabled but have 16 byte advise",
                                      offset=cmd.offset)
        if cmd.page_size_summary != PAGE:
            raise RemoteProtocolError(f"Postcopy needs matching RAM page sizes "
                                      f"(s={cmd.page_size_summary:x} d={PAGE:x})",
                                      offset=cmd.offset)
        if cmd.target_page_size != PAGE:
            raise RemoteProtocolError(f"Postcopy needs matching target page sizes "
                                      f"(s={cmd.target_page_size} d={PAGE})", offset=cmd.offset)
        self._fds = self.guest.enable_postcopy()  # every page missing (ADVISE discards all)
        memory = self.guest.memory
        self._loader.present = {spec.name: memory.present[memory.page_slice(i)]
                                for i, spec in enumerate(memory.blocks)}
        self.state = P.ADVISE

    def discard(self, cmd: PostcopyRamDiscard) -> None:
        """loadvm_postcopy_ram_handle_discard + ram_discard_range."""
        if self.state not in (P.ADVISE, P.DISCARD):
            raise RemoteProtocolError(f"CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state "
                                      f"({int(self.state)})", offset=cmd.offset)
        self.state = P.DISCARD
        present = self._loader.present
        if cmd.block not in present:
            raise RemoteProtocolError(f"ram_discard_range: Failed to find block '{cmd.block}'",
                                      offset=cmd.offset)
        pages = present[cmd.block]
        for start, length in cmd.ranges:
            if start % PAGE:
                raise RemoteProtocolError(f"ram_discard_range: Unaligned start address: "
                                          f"{start:x}", offset=cmd.offset)
            if start + length > pages.size * PAGE:
                raise RemoteProtocolError(
                    f"ram_discard_range: Overrun block '{cmd.block}' ({start}/{length:x}/"
                    f"{pages.size * PAGE:x})", offset=cmd.offset)
            pages[start // PAGE:(start + length + PAGE - 1) // PAGE] = 0

    def listen(self, cmd: PostcopyListen) -> None:
        """loadvm_postcopy_handle_listen: from here pages are placed, the guest may fault."""
        if self.state not in (P.ADVISE, P.DISCARD):
            raise RemoteProtocolError(f"CMD_POSTCOPY_LISTEN in wrong postcopy state "
                                      f"({int(self.state)})", offset=cmd.offset)
        # QEMU 7.2 sets LISTENING, then in the "rare case" of no discard runs the discard
        # preparation, which sets DISCARD again: the RUN that follows is refused.
        self.state = P.DISCARD if self.state is P.ADVISE else P.LISTENING
        self._loader.postcopy_mode = True
        self._fault_thread = threading.Thread(target=self._faults, name="postcopy-faults",
                                              daemon=True)
        self._fault_thread.start()

    def run(self, cmd: PostcopyRun, start_guest: Callable[[], None]) -> None:
        """loadvm_postcopy_handle_run: the guest runs here from now on."""
        if self.state is not P.LISTENING:
            raise RemoteProtocolError(f"CMD_POSTCOPY_RUN in wrong postcopy state "
                                      f"({int(self.state)})", offset=cmd.offset)
        self.state = P.RUNNING
        start_guest()

    @property
    def listening(self) -> bool:
        return self.state >= P.LISTENING and self._fault_thread is not None

    # ------------------------------------------------------------------ pages
    def placed(self, event: RamPages) -> None:
        """After pages were placed: record request latencies, wake a waiting guest."""
        now = time.monotonic()
        if self._pending:
            with self._lock:
                for page in list(self._pending):
                    if self.guest.memory.present[page]:
                        self.latencies.append(now - self._pending.pop(page))
        waiting = self.guest.postcopy_stats()["waiting-page"]
        if waiting >= 0 and self.guest.memory.present[waiting] and self._fds is not None:
            os.write(self._fds[1], b"!")

    def missing_pages(self) -> int:
        return int(self.guest.memory.present.size - np.count_nonzero(self.guest.memory.present))

    def end(self, before_release: Callable[[], None] | None = None) -> None:
        """The stream ended: postcopy is over (END), the guest stops faulting.

        `before_release` runs while the guest still records first accesses (what it found
        on a page can only be known until it stops doing so)."""
        self.state = P.END
        self._stop.set()
        if self._fault_thread is not None:
            self._fault_thread.join(5.0)
        missing = self.missing_pages()
        if missing:
            raise RemoteProtocolError(f"postcopy ended with {missing} pages never received",
                                      qemu=False)
        if before_release is not None:
            before_release()
        self.guest.finish_postcopy()

    def close(self) -> None:
        self._stop.set()
        if self._fault_thread is not None:
            self._fault_thread.join(5.0)

    def stats(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1e6
        out: dict[str, Any] = {"requests": self.requests, "placed-twice": 0,
                               "dropped-duplicates": int(self._loader.duplicates)}
        if lat.size:
            out["latency-us"] = {"count": int(lat.size), "p50": float(np.percentile(lat, 50)),
                                 "p99": float(np.percentile(lat, 99)),
                                 "max": float(lat.max())}
        return out

    # ------------------------------------------------------------------ faults
    def _faults(self) -> None:
        """The fault thread: a fault of the guest becomes a page request."""
        assert self._fds is not None
        request_r = self._fds[0]
        buf = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([request_r], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(request_r, 4096)
                if not data:
                    return
                buf += data
                while len(buf) >= 8:
                    self._request(int.from_bytes(buf[:8], "little"))
                    buf = buf[8:]
        except Exception as err:
            log.exception("postcopy fault thread failed")
            self.fault_error = f"postcopy fault thread: {err}"

    def _request(self, page: int) -> None:
        """postcopy_request_page / migrate_send_rp_req_pages: the whole (host) page."""
        with self._lock:
            if page in self._pending or self.guest.memory.present[page]:
                return
            index = int(np.searchsorted(self._starts, page, side="right") - 1)
            block = self._names[index]
            start = (page - int(self._starts[index])) * PAGE
            if block != self._last_block:
                message: Any = ReqPagesId(start, PAGE, block)
                self._last_block = block
            else:
                message = ReqPages(start, PAGE)
            self._pending[page] = time.monotonic()
            self.requests += 1
        self._send_rp(encode_rp(message))
