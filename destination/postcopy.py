"""The destination's postcopy: QEMU's PostcopyState, discards, the listen switch and faults.

Strategy: QEMU 7.2's `loadvm_postcopy_handle_*` (`migration/savevm.c`) and
`postcopy-ram.c`, as one object driven by the incoming migration's load loop.  The state
table (NONE -> ADVISE -> DISCARD -> LISTENING -> RUNNING -> END) and its messages are
QEMU's, including 7.2's quirk that LISTEN without any DISCARD leaves the state at DISCARD,
so the RUN that follows fails (a 7.2 destination behaves so; a source must send a
discard per block).  ADVISE makes every page of the guest missing (QEMU discards all
RAM); pages loaded afterwards are present; DISCARD ranges make pages missing again.
From LISTEN the loader places each page once and marks it present.  The guest, started
at RUN, faults on missing pages like a vCPU under userfaultfd: it writes the request
(REQ_PAGES_ID when the block changes, REQ_PAGES otherwise) straight onto the return
path's socket -- no thread hop, as a page request is latency-bound -- and placing the page
it waits for wakes it at once, from inside the loader's loop.  Without a socket (an exec:
channel) a relay thread carries the guest's requests to the return path.

Recovery (`postcopy_pause_incoming` .. `loadvm_postcopy_handle_resume`): while paused the
guest keeps running and its accesses to missing pages block; a request written on the
dead socket fails in the guest (and is retried there), one relayed is dropped.
RECV_BITMAP is answered from the loader's present bitmap (QEMU's receivedmap).  On
POSTCOPY_RESUME, after RESUME_ACK, the request of the page the guest waits for is sent
again (`migrate_send_rp_req_pages_pending`), and only then is the guest's fault path
released: it is handed the new socket, or the relay forwards again.
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
    RemoteProtocolError,
    ReqPagesId,
    encode_rp,
    pack_received_bitmap,
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
STATS_PERIOD = 1.0  # seconds between two computations of the latency percentiles


class PostcopyIncoming:
    """Postcopy on the destination of one incoming migration."""

    def __init__(self, guest: Any, postcopy_ram: bool, send_rp: Callable[[bytes], None],
                 loader: Any, request_fd: int | None = None) -> None:
        self.guest = guest
        self.postcopy_ram = postcopy_ram
        self._send_rp = send_rp
        self._loader = loader
        self._request_fd = request_fd
        self.state = P.NONE
        self._relay: threading.Thread | None = None
        self._relay_fd: int | None = None
        self._stop = threading.Event()
        self._held = False  # paused: the fault path has no channel to write on
        self.resent = 0  # requests sent again after a recovery
        self.relay_error: str | None = None
        self._latency: tuple[int, float, dict[str, Any]] = (0, 0.0, {})  # count, when, figures
        memory = guest.memory
        self._starts = {spec.name: int(start)
                        for spec, start in zip(memory.blocks, memory.block_starts())}

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
        # every page missing from here (ADVISE discards all RAM)
        self._relay_fd, _ = self.guest.enable_postcopy(self._request_fd)
        self.guest.prepare_start()  # its process starts now, not in the downtime
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
        self._loader.on_place = self._placed
        if self._relay_fd is not None and self._relay is None:
            self._relay = threading.Thread(target=self._relay_requests,
                                           name="postcopy-requests", daemon=True)
            self._relay.start()

    def run(self, cmd: PostcopyRun, start_guest: Callable[[], None]) -> None:
        """loadvm_postcopy_handle_run: the guest runs here from now on."""
        if self.state is not P.LISTENING:
            raise RemoteProtocolError(f"CMD_POSTCOPY_RUN in wrong postcopy state "
                                      f"({int(self.state)})", offset=cmd.offset)
        self.state = P.RUNNING
        start_guest()

    @property
    def listening(self) -> bool:
        return self._loader.postcopy_mode and self.state >= P.DISCARD

    # ------------------------------------------------------------------ pages
    def _placed(self, block: str, pages: np.ndarray) -> None:
        """Pages were placed: if the guest waits for a page that is here now, wake it (a
        scalar look, not a search of the run: this runs for every run the push places)."""
        waiting = self.guest.postcopy_stats_waiting()
        if waiting >= 0 and self.guest.memory.present[waiting]:
            self.guest.page_placed(waiting)

    def missing_pages(self) -> int:
        present = self.guest.memory.present
        return int(present.size - np.count_nonzero(present))

    def end(self, before_release: Callable[[], None] | None = None) -> None:
        """The stream ended: postcopy is over (END), the guest stops faulting.

        `before_release` runs while the guest still records first accesses (what it found
        on a page can only be known until it stops doing so)."""
        self.state = P.END
        self.close()
        missing = self.missing_pages()
        if missing:
            raise RemoteProtocolError(f"postcopy ended with {missing} pages never received",
                                      qemu=False)
        if before_release is not None:
            before_release()
        self.guest.finish_postcopy()

    # ------------------------------------------------------------------ recovery
    def pause(self) -> None:
        """postcopy_pause_incoming: the fault path has nowhere to send until resume."""
        self._held = True

    def received_bitmap(self, block: str) -> bytes | None:
        """The block's received pages as RECV_BITMAP data (ramblock_recv_bitmap_send);
        None for a block this destination does not have."""
        present = self._loader.present
        if present is None or block not in present:
            return None
        return pack_received_bitmap(present[block].astype(bool))

    def resume(self, request_fd: int | None) -> None:
        """loadvm_postcopy_handle_resume, after RESUME_ACK: ask again for the page the
        guest waits for (migrate_send_rp_req_pages_pending), then release the fault path
        (postcopy_pause_sem_fault): the guest writes on the new socket `request_fd`."""
        waiting = self.guest.postcopy_stats_waiting()
        if waiting >= 0 and not self.guest.memory.present[waiting]:
            block, offset = self._block_of(waiting)
            self._send_rp(encode_rp(ReqPagesId(offset, PAGE, block)))
            self.resent += 1
        self._held = False
        if request_fd is not None and self.guest.requests_direct:
            self.guest.replace_request_fd(request_fd)

    def _block_of(self, page: int) -> tuple[str, int]:
        """A global page index -> (block name, byte offset in the block)."""
        name, start = max(((n, s) for n, s in self._starts.items() if s <= page),
                          key=lambda item: item[1])
        return name, (page - start) * PAGE

    def close(self) -> None:
        self._stop.set()
        if self._relay is not None:
            self._relay.join(5.0)

    def stats(self) -> dict[str, Any]:
        guest = self.guest.postcopy_stats()
        lat = guest["latencies-ns"] / 1e3
        out: dict[str, Any] = {"requests": guest["requests"],
                               "dropped-duplicates": int(self._loader.duplicates),
                               "blocked-count": guest["blocked-count"]}
        if guest["resent"] or self.resent:  # after a recovery: asked again, not anew
            out["resent"] = guest["resent"] + self.resent
        if lat.size:
            out["latency-us"] = self._latency_figures(lat, guest["requests"])
        return out

    def _latency_figures(self, lat: np.ndarray, requests: int) -> dict[str, Any]:
        """p50/p99/max of the request latencies, recomputed at most once a second while
        requests keep coming (a poll of query-migrate stays cheap for the loader)."""
        count, when, figures = self._latency
        now = time.monotonic()
        if requests != count and (now - when >= STATS_PERIOD or self.state is P.END):
            figures = {"count": int(lat.size), "p50": float(np.percentile(lat, 50)),
                       "p99": float(np.percentile(lat, 99)), "max": float(lat.max()),
                       "histogram": latency_histogram(lat)}
            self._latency = (requests, now, figures)
        return figures

    # ------------------------------------------------------------------ relay
    def _relay_requests(self) -> None:
        """Without a socket to write on, the guest's requests come through a pipe."""
        assert self._relay_fd is not None
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._relay_fd], [], [], 0.1)
                if ready:
                    data = os.read(self._relay_fd, 4096)
                    if not data:
                        return
                    self._forward(data)
        except Exception as err:
            log.exception("postcopy request relay failed")
            self.relay_error = f"postcopy request relay: {err}"

    def _forward(self, data: bytes) -> None:
        """Forward the guest's requests; while paused (or as the channel breaks) they are
        lost, like those the guest writes on a dead socket: `resume` asks again."""
        if self._held:
            return
        try:
            self._send_rp(data)
        except OSError as err:
            log.debug("page request lost with the channel: %s", err)


def latency_histogram(lat_us: np.ndarray) -> dict[str, list[float] | list[int]]:
    """Request latencies (us) counted in 10 log-spaced bins a decade from 1 us to 100 s,
    without the empty bins at either end: {"edges-us": [n + 1], "counts": [n]}."""
    edges = np.logspace(0, 8, 81)
    counts, _ = np.histogram(np.clip(lat_us, edges[0], edges[-1]), edges)
    used = np.flatnonzero(counts)
    if not used.size:
        return {"edges-us": [], "counts": []}
    first, last = int(used[0]), int(used[-1]) + 1
    return {"edges-us": [round(float(e), 3) for e in edges[first:last + 1]],
            "counts": [int(c) for c in counts[first:last]]}
