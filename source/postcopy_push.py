"""The postcopy push and the requested pages, sharing one stream.

Strategy: a mixin of `OutgoingMigration` holding only the methods (the state belongs to
the migration object and is declared here for the type checker, as in rate_limit.py).
The migration thread pushes the pages still to send in PARTs of small batches
(`POSTCOPY_BATCH`) under `max-postcopy-bandwidth` (ram.c's postcopy iteration); the
return-path thread sends a requested page itself, between two push batches, under the
same lock (`_wlock`), which keeps records whole and the CONTINUE state consistent --
the handover to the migration thread that QEMU 7.2 makes without postcopy-preempt would
add latency.  While a request waits for the lock, the push steps aside (`_serving`:
Python's lock is not fair, so the pushing thread would take it straight back), and the
push waits for the socket to take more outside the lock, never blocked in a send while
holding it.  A requested page goes out in one send, with the section header and EOS
around it when no push PART is open.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from harness.protocol import SectionType
from harness.protocol.ram_saver import EOS, FrameBuffer

from .postcopy import POSTCOPY_BATCH
from .rate_limit import MAX_WAIT

if TYPE_CHECKING:
    from harness.protocol import StreamEncoder

    from .postcopy import PostcopySource
    from .ram_save import RamSave

REQUEST_YIELD = 0.0001  # s: how long the push steps aside for a requested page


class PostcopyPush:
    ram: RamSave | None
    postcopy: PostcopySource | None
    ram_section_id: int
    _writer: Any
    _channel: Any
    _encoder: StreamEncoder
    _wlock: threading.Lock
    _wake: threading.Event
    _serving: threading.Event
    _in_part: bool
    _stream_ended: bool
    _request_frame: FrameBuffer

    if TYPE_CHECKING:
        def _rate_limited(self) -> bool: ...
        def _budget_pages(self, most: int) -> int: ...
        def _send_batch(self, ram: RamSave, batch: tuple[Any, Any]) -> int: ...

    def _postcopy_iterate(self, ram: RamSave) -> None:
        """A postcopy PART of the background push (requested pages go out meanwhile from
        the return-path thread, between these batches, under the same lock)."""
        assert self._writer is not None
        enc = self._encoder
        with self._wlock:
            self._writer.write(enc.section_header(SectionType.SECTION_PART,
                                                  self.ram_section_id))
            self._in_part = True
        started = time.monotonic()
        try:
            while not self._wake.is_set() and time.monotonic() - started <= MAX_WAIT:
                if not self._push_may_send():
                    continue
                with self._wlock:
                    if self._rate_limited():
                        break
                    batch = ram.next_batch(self._budget_pages(POSTCOPY_BATCH))
                    if batch is None:
                        break
                    assert self.postcopy is not None
                    self.postcopy.bytes += self._send_batch(ram, batch)
        finally:
            with self._wlock:
                self._in_part = False
                self._writer.write(EOS + enc.footer(self.ram_section_id))

    def _push_may_send(self) -> bool:
        """Before a push batch, outside the lock: let a requested page go first (a lock
        just released is otherwise taken again by the same thread before a waiter wakes),
        and wait until the socket takes more, so the lock is never held in a blocked send
        while a request waits for it."""
        if self._serving.is_set():
            time.sleep(REQUEST_YIELD)
            return False
        assert self._channel is not None
        return self._channel.wait_writable(REQUEST_YIELD * 10)

    def _serve_request(self, block: str, start: int, length: int) -> bool:
        """From the return-path thread: send a requested page now (QEMU's preempt path
        does the same on its own channel).  Inside the push's open PART the records just
        go between two batches; otherwise in a PART of their own.  False when the page
        had already gone out."""
        ram = self.ram
        assert ram is not None and self._writer is not None and self.postcopy is not None
        self._serving.set()
        try:
            return self._send_requested(ram, block, start, length)
        finally:
            self._serving.clear()

    def _send_requested(self, ram: RamSave, block: str, start: int, length: int) -> bool:
        assert self._writer is not None and self.postcopy is not None
        with self._wlock:
            if self._stream_ended:
                return False
            pages = ram.take_pages(block, start, length)
            if not pages.size:
                return False
            enc, frame = self._encoder, self._request_frame
            frame.clear()
            opened = not self._in_part  # else the records go between two push batches
            if opened:
                frame.put(enc.section_header(SectionType.SECTION_PART, self.ram_section_id))
            records = len(frame)
            ram.encode(frame, ram.block(block), pages)
            self.postcopy.bytes += len(frame) - records
            if opened:
                frame.put(EOS + enc.footer(self.ram_section_id))
            with frame.view() as data:  # one send: each one wakes the destination
                self._writer.write(data)
            ram.jump_to(block, int(pages[-1]) + 1)
        return True
