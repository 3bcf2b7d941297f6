"""The source's side of the postcopy recovery handshake, on a freshly connected channel.

Strategy: QEMU 7.2's `postcopy_do_resume` (`migration/migration.c`) in two steps, kept
apart from the migration thread's pause/connect logic (migration.py) so they read like
the QEMU functions they mirror:

* `resume_prepare` (`ram_resume_prepare` -> `ram_dirty_bitmap_sync_all`): one
  MIG_CMD_RECV_BITMAP per RAMBlock; each RP RECV_BITMAP answer is checked
  (`migrate_handle_rp_recv_bitmap`, `ram_dirty_bitmap_reload`) and the block's dirty
  bitmap becomes the complement of what the destination received -- every page lost in
  flight goes again; then the scan restarts and the last block is forgotten
  (`ram_state_resume_prepare`), so the first page on the new channel names its block.
* `resume_handshake` (`postcopy_resume_handshake`): MIG_CMD_POSTCOPY_RESUME, then the
  RESUME_ACK (`migrate_handle_rp_resume_ack`: the value must be 1).

The return-path reader thread hands RECV_BITMAP / RESUME_ACK over through
`RecoveryInbox`; a `None` in it means the return path ended (or a cancel): the wait
ends at once.  Every wait has a deadline; any failure raises, and the migration thread
goes back to postcopy-paused (never failed).
"""

from __future__ import annotations

import queue
from collections.abc import Callable

from harness.protocol import PostcopyResume, RecvBitmapRequest, StreamEncoder
from harness.protocol.return_path import RecvBitmap, ResumeAck, RpMessage

from .ram_save import RamSave
from .return_path import ReturnPathError

RESUME_ACK_VALUE = 1  # migration.h: MIGRATION_RESUME_ACK_VALUE


class RecoveryInbox:
    """RECV_BITMAP and RESUME_ACK from the return-path thread to the migration thread."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._queue: queue.Queue[RpMessage | None] = queue.Queue()

    def put(self, message: RpMessage) -> None:
        self._queue.put(message)

    def close(self) -> None:
        """The return path ended (or the migration is cancelled): wake the waiter."""
        self._queue.put(None)

    def get(self, why_closed: Callable[[], str]) -> RpMessage:
        try:
            message = self._queue.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"postcopy recovery: no answer from the destination within "
                               f"{self.timeout:.0f} s") from None
        if message is None:
            raise ConnectionAbortedError(why_closed())
        return message


def resume_prepare(write: Callable[[bytes], None], enc: StreamEncoder, ram: RamSave,
                   inbox: RecoveryInbox, why_closed: Callable[[], str]) -> None:
    """ram_dirty_bitmap_sync_all + ram_state_resume_prepare."""
    write(b"".join(enc.command(RecvBitmapRequest(b.name)) for b in ram.blocks))
    waiting = {b.name for b in ram.blocks}
    while waiting:
        message = inbox.get(why_closed)
        if not isinstance(message, RecvBitmap):
            raise ReturnPathError(f"postcopy recovery: {type(message).__name__} before "
                                  f"the received bitmaps")
        _reload(ram, message)
        waiting.discard(message.block)
    ram.reset_scan()
    ram.saver.reset()


def _reload(ram: RamSave, message: RecvBitmap) -> None:
    """migrate_handle_rp_recv_bitmap + ram_dirty_bitmap_reload."""
    if message.block not in {b.name for b in ram.blocks}:
        raise ReturnPathError(f"migrate_handle_rp_recv_bitmap: invalid block name "
                              f"'{message.block}'")
    expected = ram.received_bitmap_size(message.block)
    if len(message.bitmap) != expected:
        raise ReturnPathError(f"ram_dirty_bitmap_reload: ramblock '{message.block}' bitmap "
                              f"size mismatch (0x{len(message.bitmap):x} != 0x{expected:x})")
    pages = ram.block(message.block).pages
    ram.reload_received(message.block, message.received(pages))


def resume_handshake(write: Callable[[bytes], None], enc: StreamEncoder,
                     inbox: RecoveryInbox, why_closed: Callable[[], str]) -> None:
    """postcopy_resume_handshake: POSTCOPY_RESUME, then a RESUME_ACK of value 1."""
    write(enc.command(PostcopyResume()))
    message = inbox.get(why_closed)
    if not isinstance(message, ResumeAck):
        raise ReturnPathError(f"postcopy recovery: {type(message).__name__} instead of "
                              f"RESUME_ACK")
    if message.value != RESUME_ACK_VALUE:
        raise ReturnPathError(f"migrate_handle_rp_resume_ack: illegal resume_ack value "
                              f"{message.value}")
