"""The outgoing stream's one owner: its channels, frame buffers, open section and rate window.

Strategy: every byte the source sends goes through one `OutgoingStream`.  The migration
thread calls `write()` (header, commands, device state), `iterate()` (a precopy PART of
dirty pages), `push()` (a postcopy PART of the background push) and `send_remaining()`
(the END section at completion); the return-path thread calls `send_urgent()` for a
requested page.  The stream keeps the byte counts, the open PART (a requested page may go
inside it), the two frame buffers and QEMU's 100 ms rate window (`RateWindow`).

A requested page and the push never wait on each other through a sleep:
- With postcopy-preempt (QEMU 7.2's `postcopy_preempt_choose_channel`) the page goes on
  the preempt channel, under that channel's own lock: it never queues behind the push.
  Each request's records start by naming their block (7.2 resets `last_sent_block` when
  it switches channel) and go out in one send (7.2 flushes after each requested host
  page); EOS closes the channel at completion (`postcopy_preempt_shutdown_file`).
- Without it the page shares the main channel.  Its sender takes a ticket, then the
  channel's lock; the pusher looks at the tickets before each batch and, seeing one, waits
  on the condition until the ticket is returned (Python's lock is not fair: without the
  hand-over the pusher would take the lock straight back).  The pusher also waits for the
  socket to take more outside the lock, so it never holds the lock in a blocked send.
The bitmap and the scan position, shared by both senders, have their own short lock.

With multifd (source/multifd.py) a precopy batch's zero pages stay on main as ZERO
records and its other pages go to the multifd channels -- in postcopy every page goes on
main (7.2: a host page must be placed whole); every RAM EOS (setup, each PART, END,
in postcopy too, a requested page's own PART included) follows `multifd_send_sync_main`.  `total` (query-migrate's transferred, and the
rate limit's count) includes the multifd bytes as 7.2 counts them; a PART's precopy bytes
do not.  The plain path pays one attribute test per batch.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.protocol import SectionType, StreamEncoder
from harness.protocol.ram_saver import EOS, PAGE, FrameBuffer, RamSaver

from .interfaces import Channel

if TYPE_CHECKING:
    from harness.migration.config import MigrationConfig

    from .multifd import MultifdSend
    from .ram_save import RamSave

BUFFER_DELAY = 0.1  # migration.c: BUFFER_DELAY, the rate-limit window
MAX_WAIT = 0.05  # ram.c: MAX_WAIT, the longest an iteration may run
XFER_LIMIT_RATIO = 10  # windows per second
POSTCOPY_BATCH = 32  # background pages per send: a request waits behind at most these
WRITABLE_SLICE = 0.001  # s the pusher waits for the socket between two looks at the clock
HANDOVER_DEADLINE = 1.0  # s the pusher waits for a requested page's sender at most


class RateWindow:
    """QEMU's rate limit: `max-bandwidth` (or `max-postcopy-bandwidth` once in postcopy)
    per 100 ms window, and the per-window figures it derives (migration.c:
    migration_rate_limit, migration_update_counters; qemu-file.c: qemu_file_rate_limit)."""

    def __init__(self, config: MigrationConfig) -> None:
        self.config = config
        self.postcopy = False
        self.start = 0.0  # time.monotonic() of this window's start
        self.bytes_at_start = 0
        self.threshold = 0.0  # bytes that can go within downtime-limit
        self.mbps = 0.0
        self.expected_downtime = 0.0  # s

    def limit(self) -> float:
        name = "max-postcopy-bandwidth" if self.postcopy else "max-bandwidth"
        bandwidth = self.config.param(name)
        return bandwidth / XFER_LIMIT_RATIO if bandwidth else float("inf")

    def restart(self, total: int) -> None:
        self.start = time.monotonic()
        self.bytes_at_start = total

    def over(self, total: int) -> bool:
        return total - self.bytes_at_start > self.limit()

    def budget_pages(self, total: int, most: int) -> int:
        """How many pages the next batch may hold: what is left of this window's budget,
        rounded up, so a window overshoots by less than a page, as QEMU's per-page check
        does (ram.c: ram_find_and_save_block under qemu_file_rate_limit)."""
        left = self.limit() - (total - self.bytes_at_start)
        if left >= most * PAGE:
            return most
        return max(1, int(left) // PAGE + 1)

    def update(self, total: int, ram: RamSave) -> None:
        """migration_update_counters: bandwidth, threshold, mbps, expected downtime."""
        now = time.monotonic()
        spent = now - self.start
        if spent < BUFFER_DELAY:
            return
        transferred = total - self.bytes_at_start
        bandwidth = transferred / (spent * 1000)  # bytes per ms
        self.threshold = bandwidth * self.config.param("downtime-limit")
        self.mbps = transferred * 8 / spent / 1e6
        if ram.stats.dirty_pages_rate and transferred > 10000 and bandwidth:
            self.expected_downtime = ram.remaining() / bandwidth / 1000
        self.start = now
        self.bytes_at_start = total

    def left(self) -> float:
        """Seconds to the end of this window."""
        return self.start + BUFFER_DELAY - time.monotonic()


class OutgoingStream:
    """The source's channels and everything written on them."""

    def __init__(self, channel: Channel, config: MigrationConfig, section_id: int,
                 stopping: threading.Event) -> None:
        self.channel = channel
        self.preempt: Channel | None = None
        self.multifd: MultifdSend | None = None  # the multifd channels, when on
        self.encoder = StreamEncoder()
        self.section_id = section_id
        self.rate = RateWindow(config)
        self.total = 0  # bytes written on the main channel (query-migrate's transferred)
        self.preempt_total = 0
        self.pushed = 0  # postcopy page bytes: the push's (main) and the requests' below
        self.urgent_bytes = 0
        self.ended = False  # the END section is out: no page may follow
        self.stopping = stopping  # set by cancel: every wait ends
        self._cond = threading.Condition(threading.Lock())  # the main channel
        self._tickets = 0  # requested pages waiting for the main channel
        self._tickets_lock = threading.Lock()
        self._preempt_lock = threading.Lock()  # the preempt channel
        self._bitmap = threading.Lock()  # the dirty bitmap and scan, shared by the senders
        self._frame = FrameBuffer(gather=True)  # pages go out of guest RAM by iovec
        self._urgent_frame = FrameBuffer(64 << 10)
        self._in_part = False  # a PART is open on main (a requested page may go inside)

    # ------------------------------------------------------------------ channels
    def attach(self, channel: Channel, preempt: Channel | None) -> None:
        """Postcopy recovery: new channels; the byte counts carry on."""
        with self._cond, self._preempt_lock:
            self.channel, self.preempt = channel, preempt
            self.ended = False
            self._in_part = False

    def shutdown(self) -> None:
        """Wake every blocked send (cancel, pause): every channel says why."""
        for channel in (self.channel, self.preempt):
            if channel is not None:
                channel.shutdown()
        if self.multifd is not None:
            self.multifd.shutdown()

    def close(self) -> None:
        if self.multifd is not None:
            self.multifd.close()
        for channel in (self.channel, self.preempt):
            if channel is not None:
                channel.close()

    @property
    def multifd_bytes(self) -> int:
        return self.multifd.bytes if self.multifd is not None else 0

    def sync_multifd(self) -> None:
        """multifd_send_sync_main before a RAM EOS (nothing without multifd)."""
        if self.multifd is not None:
            self.total += self.multifd.sync()

    def prefer_latency(self) -> None:
        """At the switch: little queued on either channel.  A requested page travels on
        the preempt channel, but one the push had already sent still waits behind what
        main has queued ahead of it."""
        for channel in (self.channel, self.preempt):
            if channel is not None:
                channel.prefer_latency()

    # ------------------------------------------------------------------ main channel
    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Write on main; the caller holds the lock (or is the only sender)."""
        if data:
            self.channel.sendall(data)
            self.total += len(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._cond:
            self._send(data)

    def _send_batch(self, ram: RamSave, batch: tuple[Any, Any]) -> int:
        """Frame a batch of pages into the reused buffer and send it; bytes sent."""
        if self.multifd is not None and not self.rate.postcopy:  # M9: never in postcopy
            return self._send_batch_multifd(ram, batch)
        frame = self._frame
        frame.clear()
        ram.encode(frame, *batch)
        frame.send_to(self.channel)  # headers from the buffer, pages straight from RAM
        self.total += len(frame)
        return len(frame)

    def _send_batch_multifd(self, ram: RamSave, batch: tuple[Any, Any]) -> int:
        """Zero pages as ZERO records on main, the others to the multifd channels;
        the bytes sent on main."""
        assert self.multifd is not None
        block, pages = batch
        zeros, normal = ram.split_zero(block, pages)
        ram.stats.duplicate += zeros.size
        ram.stats.normal += normal.size
        sent = 0
        if zeros.size:
            frame = self._frame
            frame.clear()
            ram.saver.save_pages(frame, block.name, block.mem, zeros,
                                 np.ones(zeros.size, dtype=bool))
            frame.send_to(self.channel)
            sent = len(frame)
            self.total += sent
        if normal.size:
            self.total += self.multifd.send_pages(block.name, block.mem, normal)
        return sent

    def rate_limited(self) -> bool:
        """qemu_file_rate_limit: over this window's budget (or stopping)."""
        return self.stopping.is_set() or self.rate.over(self.total)

    def iterate(self, ram: RamSave, batch_pages: int) -> int:
        """One precopy PART: dirty pages until rate limited, none left or MAX_WAIT;
        the bytes of the section."""
        enc, start, multifd = self.encoder, self.total, self.multifd_bytes
        with self._cond:
            self._send(enc.section_header(SectionType.SECTION_PART, self.section_id))
            started = time.monotonic()
            while not self.rate_limited():
                budget = self.rate.budget_pages(self.total, batch_pages)
                batch = ram.next_batch(budget, more_zeros=True)
                if batch is None:
                    break
                self._send_batch(ram, batch)
                if time.monotonic() - started > MAX_WAIT:
                    break
            self.sync_multifd()
            self._send(EOS + enc.footer(self.section_id))
        return self.total - start - (self.multifd_bytes - multifd)

    def send_remaining(self, ram: RamSave) -> None:
        """The END section of precopy's completion: every page still dirty."""
        enc = self.encoder
        with self._cond:
            self._send(enc.section_header(SectionType.SECTION_END, self.section_id))
            while (batch := ram.next_batch(more_zeros=True)) is not None:
                self._send_batch(ram, batch)
            self.sync_multifd()
            self._send(EOS + enc.footer(self.section_id))

    # ------------------------------------------------------------------ postcopy
    def push(self, ram: RamSave) -> None:
        """A PART of the postcopy background push, batch by batch, each after any
        requested page waiting for the channel."""
        enc = self.encoder
        with self._cond:
            self._send(enc.section_header(SectionType.SECTION_PART, self.section_id))
            self._in_part = True
        started = time.monotonic()
        try:
            while not self.stopping.is_set() and time.monotonic() - started <= MAX_WAIT:
                if not self.channel.wait_writable(WRITABLE_SLICE):
                    continue
                with self._cond:
                    self._cond.wait_for(self._no_ticket, HANDOVER_DEADLINE)
                    if self.rate_limited() or not self._push_batch(ram):
                        break
        finally:
            with self._cond:
                self._in_part = False
                self.sync_multifd()  # ram_save_iterate syncs in postcopy too
                self._send(EOS + enc.footer(self.section_id))

    def _no_ticket(self) -> bool:
        return not self._tickets

    def _push_batch(self, ram: RamSave) -> bool:
        with self._bitmap:
            batch = ram.next_batch(self.rate.budget_pages(self.total, POSTCOPY_BATCH))
        if batch is None:
            return False
        self.pushed += self._send_batch(ram, batch)
        return True

    def end_postcopy(self) -> None:
        """migration_completion in postcopy: END (nothing is left), EOF on main, and EOS
        on the preempt channel (postcopy_preempt_shutdown_file)."""
        enc = self.encoder
        with self._cond:
            self.ended = True
            self.sync_multifd()  # ram_save_complete
            self._send(enc.section_header(SectionType.SECTION_END, self.section_id)
                       + EOS + enc.footer(self.section_id) + enc.eof())
        with self._preempt_lock:
            if self.preempt is not None:
                self.preempt.sendall(EOS)
                self.preempt_total += len(EOS)

    def send_urgent(self, ram: RamSave, block: str, start: int, length: int) -> bool:
        """From the return-path thread: send a requested page now.  False when it had
        gone out already (or the stream has ended)."""
        if self.preempt is not None:
            return self._send_on_preempt(ram, block, start, length)
        with self._tickets_lock:
            self._tickets += 1
        with self._cond:
            try:
                return self._send_on_main(ram, block, start, length)
            finally:
                with self._tickets_lock:
                    self._tickets -= 1
                self._cond.notify_all()

    def _take(self, ram: RamSave, block: str, start: int, length: int) -> Any:
        with self._bitmap:
            pages = ram.take_pages(block, start, length)
            if pages.size:
                ram.jump_to(block, int(pages[-1]) + 1)  # the push carries on after it
        return pages

    def _send_on_main(self, ram: RamSave, block: str, start: int, length: int) -> bool:
        """Inside the push's open PART the records go between two batches; otherwise
        in a PART of their own.  One send: each one wakes the destination."""
        if self.ended:
            return False
        pages = self._take(ram, block, start, length)
        if not pages.size:
            return False
        enc, frame = self.encoder, self._urgent_frame
        frame.clear()
        opened = not self._in_part
        if opened:
            frame.put(enc.section_header(SectionType.SECTION_PART, self.section_id))
        records = len(frame)
        ram.encode(frame, ram.block(block), pages)
        self.urgent_bytes += len(frame) - records
        if opened:
            frame.put(EOS + enc.footer(self.section_id))
            self.sync_multifd()  # a RAM EOS of its own: its SYNCs first
        with frame.view() as data:
            self._send(data)
        return True

    def _send_on_preempt(self, ram: RamSave, block: str, start: int, length: int) -> bool:
        with self._preempt_lock:
            preempt = self.preempt
            if self.ended or preempt is None:
                return False
            pages = self._take(ram, block, start, length)
            if not pages.size:
                return False
            frame = self._urgent_frame
            frame.clear()
            # a fresh saver: the first record names its block (7.2 resets last_sent_block
            # when it switches channel); xbzrle and compression do not apply in postcopy
            zeros, normal = RamSaver().save_pages(frame, block, ram.block(block).mem, pages,
                                                  None)
            ram.stats.duplicate += zeros
            ram.stats.normal += normal
            self.urgent_bytes += len(frame)
            with frame.view() as data:
                preempt.sendall(data)
            self.preempt_total += len(frame)
        return True

    # ------------------------------------------------------------------ rate window
    def update_counters(self, ram: RamSave) -> None:
        self.rate.update(self.total, ram)

    def restart_window(self) -> None:
        self.rate.restart(self.total)

    def wait_window(self, woken: threading.Event) -> None:
        """migration_rate_limit: when over budget, sleep to the end of the window (a
        cancel or the return path's end sets `woken` and ends the wait early)."""
        if not self.rate_limited():
            return
        left = self.rate.left()
        if left > 0:
            woken.wait(left)
            woken.clear()
