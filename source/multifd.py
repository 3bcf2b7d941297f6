"""multifd on the source: N extra channels that carry the non-zero pages of precopy.

Strategy: QEMU 7.2's `migration/multifd.c` send side (multifd_save_setup,
multifd_send_pages, multifd_send_thread, multifd_send_sync_main), facts M1-M15 of
reference/qemu-7.2-production-features.md.  The migration thread connects the N channels
right after the main one, through the same connector (so TLS wraps them as it wraps
main); each channel starts with its 64-byte `MultifdInit`, sent as soon as it is
connected (a 7.2 destination under TLS needs it before the next channel's handshake).  One sender thread per channel
holds at most one job: a packet of up to 128 pages of one RAMBlock (consecutive raw pages
are sent straight from guest RAM; others are gathered into the thread's own buffer, and
compressed with the channel's own zlib/zstd stream, in that thread) or an empty SYNC
packet.  `send_pages` hands each packet to the next free channel from a
rotating start (7.2's choice: not strict round-robin) with a global packet number, and
waits for one to be free, never longer than a cancel.  `sync` is multifd_send_sync_main:
every queued packet out, then one SYNC packet on every channel, and it returns once each
channel has written its SYNC -- the caller writes the RAM EOS on main only after (M10).
As in 7.2, a SYNC packet without pages carries the SYNC flag alone (the compression bit
is set when pages are prepared), and `multifd_bytes` counts header plus uncompressed
pages of every packet, SYNCs included, never the init packets (M15).  A failure on a
channel (a send error, a peer gone) is handed at once to `on_error` (the migration then
wakes its main channel, which may be blocked on a peer that stopped reading) and raised
by the next `send_pages`/`sync`, as "multifd channel N: ..."; `close()` wakes and joins
every thread and closes every socket, with a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.protocol.multifd import (
    FLAG_SYNC,
    HEADER_SIZE,
    PAGES_PER_PACKET,
    MultifdInit,
    PacketHeader,
    PageCompressor,
)
from harness.protocol.ram_saver import PAGE

from .interfaces import Channel

if TYPE_CHECKING:
    from harness.migration.config import MigrationConfig

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 5.0
WAIT_SLICE = 0.2  # s between two looks at the stop flag while waiting for a channel


class MultifdSendError(ConnectionError):
    """A multifd channel failed; the message names it."""


@dataclass
class _Job:
    packet_num: int
    block: str = ""
    mem: np.ndarray | None = None
    pages: np.ndarray | None = None  # page indexes in the block; None: a SYNC packet


class _Sender:
    """One channel and its thread (MultiFDSendParams)."""

    def __init__(self, index: int, channel: Channel, compressor: PageCompressor,
                 owner: MultifdSend) -> None:
        self.id = index
        self.channel = channel
        self.compressor = compressor
        self.owner = owner
        self.job: _Job | None = None
        self._rows = np.empty((PAGES_PER_PACKET, PAGE), dtype=np.uint8)
        self.packets = 0
        self.syncs = 0
        self.pages = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._main, name=f"multifdsend_{index}",
                                       daemon=True)

    def _main(self) -> None:
        owner = self.owner
        try:
            while True:
                with owner.cond:
                    while self.job is None and not owner.quit:
                        owner.cond.wait()
                    if self.job is None:
                        return
                    job = self.job
                self._send(job)
                with owner.cond:
                    self.job = None
                    owner.cond.notify_all()
        except Exception as err:  # noqa: BLE001 -- kept: the next send_pages/sync raises it
            with owner.cond:
                self.error = str(err) or type(err).__name__
                self.job = None
                owner.cond.notify_all()
            if not owner.quit:
                log.warning("multifd channel %d failed: %s", self.id, self.error)
                owner.on_error(f"multifd channel {self.id}: {self.error}")

    def _send(self, job: _Job) -> None:
        """multifd_send_thread: fill the packet, write header and payload."""
        if job.pages is None:
            self.channel.sendall(PacketHeader(FLAG_SYNC, 0, 0, job.packet_num).pack())
            self.syncs += 1
            self.packets += 1
            return
        assert job.mem is not None
        n, first = job.pages.size, int(job.pages[0])
        if self.compressor.method == "none" and int(job.pages[-1]) - first == n - 1:
            rows = job.mem[first * PAGE:(first + n) * PAGE]  # consecutive: sent from RAM
        else:
            rows = self._rows[:n]  # reused: no fresh 512 KiB (page faults) a packet
            np.take(job.mem[:job.mem.size // PAGE * PAGE].reshape(-1, PAGE), job.pages,
                    axis=0, out=rows)
        if self.compressor.method == "none":
            payload: bytes | np.ndarray = rows
            size = rows.nbytes
        else:
            payload = self.compressor.compress(list(rows))
            size = len(payload)
        offsets = (job.pages.astype(np.uint64) * PAGE).tolist()
        header = PacketHeader(self.compressor.flag, len(offsets), size, job.packet_num,
                              job.block, offsets)
        self.channel.sendall(header.pack())
        self.channel.sendall(memoryview(payload).cast("B"))
        self.packets += 1
        self.pages += len(offsets)


class MultifdSend:
    """The multifd channels of one outgoing migration (multifd_send_state)."""

    def __init__(self, channels: list[Channel], *, compression: str = "none",
                 level: int = 1, stopping: threading.Event | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        """`channels`: connected, each with its MultifdInit sent (`connect_channels`);
        `on_error(text)` is called from a channel's thread as it fails (7.2's
        multifd_send_terminate_threads fails the migration from there at once)."""
        self.on_error = on_error or (lambda text: None)
        self.cond = threading.Condition()
        self.quit = False
        self.stopping = stopping or threading.Event()
        self.bytes = 0  # ram.multifd-bytes
        self._packet_num = 0
        self._next = 0  # where the search for a free channel starts
        self._senders = [_Sender(i, channel, PageCompressor(compression, level), self)
                         for i, channel in enumerate(channels)]
        for sender in self._senders:
            sender.thread.start()

    @property
    def channels(self) -> int:
        return len(self._senders)

    def stats(self) -> list[dict[str, int]]:
        """Per channel: packets, SYNC packets and pages written."""
        return [{"packets": s.packets, "syncs": s.syncs, "pages": s.pages}
                for s in self._senders]

    # ------------------------------------------------------------------ migration thread
    def send_pages(self, block: str, mem: np.ndarray, pages: np.ndarray) -> int:
        """multifd_queue_page/multifd_send_pages: `pages` (non-zero pages of `block`, in
        order) in packets of up to 128, each to the next free channel; the multifd-bytes
        queued (counted as they are queued, as 7.2's multifd_send_pages counts them)."""
        queued = 0
        for first in range(0, pages.size, PAGES_PER_PACKET):
            chunk = pages[first:first + PAGES_PER_PACKET]
            with self.cond:
                sender = self._free_sender()
                sender.job = _Job(self._take_num(), block, mem, chunk)
                self.cond.notify_all()
            queued += HEADER_SIZE + chunk.size * PAGE
        self.bytes += queued
        return queued

    def sync(self) -> int:
        """multifd_send_sync_main: a SYNC packet on every channel once what is queued
        there went out; returns (the multifd-bytes of the SYNCs) when every SYNC is
        written."""
        with self.cond:
            for sender in self._senders:
                self._wait(lambda s=sender: s.job is None)
                sender.job = _Job(self._take_num())
                self.cond.notify_all()
            self._wait(lambda: all(s.job is None for s in self._senders))
        queued = HEADER_SIZE * len(self._senders)
        self.bytes += queued
        return queued

    def close(self) -> None:
        """End every thread (cancel, failure, completion) and close every channel."""
        with self.cond:
            self.quit = True
            self.cond.notify_all()
        for sender in self._senders:
            with contextlib.suppress(Exception):
                sender.channel.shutdown()
        for sender in self._senders:
            sender.thread.join(JOIN_TIMEOUT)
            if sender.thread.is_alive():
                log.warning("multifd channel %d: its thread did not end within %.0f s",
                            sender.id, JOIN_TIMEOUT)
            with contextlib.suppress(Exception):
                sender.channel.close()

    def shutdown(self) -> None:
        """Wake every blocked send (cancel)."""
        for sender in self._senders:
            with contextlib.suppress(Exception):
                sender.channel.shutdown()

    # ------------------------------------------------------------------ helpers
    def _take_num(self) -> int:
        num, self._packet_num = self._packet_num, self._packet_num + 1
        return num

    def _free_sender(self) -> _Sender:
        """The next free channel from the rotating start (caller holds the lock)."""
        found: list[_Sender] = []

        def free() -> bool:
            n = len(self._senders)
            for k in range(n):
                sender = self._senders[(self._next + k) % n]
                if sender.job is None:
                    self._next = (sender.id + 1) % n
                    found.append(sender)
                    return True
            return False

        self._wait(free)
        return found[0]

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait (lock held) until `ready()`; a failed channel or a cancel raises."""
        while True:
            self._raise_failure()
            if ready():
                return
            if self.stopping.is_set() or self.quit:
                raise ConnectionAbortedError("multifd: the migration is stopping")
            self.cond.wait(WAIT_SLICE)

    def _raise_failure(self) -> None:
        for sender in self._senders:
            if sender.error is not None:
                raise MultifdSendError(f"multifd channel {sender.id}: {sender.error}")


def connect_channels(connect: Callable[[], Channel], count: int,
                     uuid: bytes = bytes(16)) -> list[Channel]:
    """socket_send_channel_create, `count` times, after main (M1), each channel's
    MultifdInit sent as soon as it is connected (multifd_send_initial_packet): a 7.2
    destination reads a channel's init packet in its main loop before it does the next
    channel's TLS handshake, so sending the inits only once every channel is connected
    deadlocks under TLS.  On a failure the channels already open are closed and the
    error raised."""
    channels: list[Channel] = []
    try:
        for index in range(count):
            channels.append(connect())
            channels[-1].sendall(MultifdInit(index, uuid).pack())
    except BaseException:
        for channel in channels:
            with contextlib.suppress(Exception):
                channel.close()
        raise
    return channels


def open_multifd(config: MigrationConfig, connect: Callable[[], Channel], uuid: bytes,
                 stopping: threading.Event, on_error: Callable[[str], None]
                 ) -> MultifdSend | None:
    """multifd_save_setup + socket_send_channel_create (None without the capability):
    multifd-channels connections to main's address, each starting with its MultifdInit
    (the peer's --uuid, as 7.2 sends qemu_uuid), and their sender threads."""
    if not config.cap("multifd"):
        return None
    channels = connect_channels(connect, config.param("multifd-channels"), uuid)
    method = config.param("multifd-compression")
    level = config.param(f"multifd-{method}-level") if method != "none" else 1
    try:
        return MultifdSend(channels, compression=method, level=level, stopping=stopping,
                           on_error=on_error)
    except BaseException:
        for channel in channels:
            channel.close()
        raise
