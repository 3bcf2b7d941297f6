"""The source's return-path reader: QEMU's `source_return_path_thread`.

Strategy: a thread reads the destination's messages from the same channel the stream
goes out on, decodes them with the codec's `ReturnPathDecoder` (which applies QEMU's
checks and words), and hands them on: PONGs are recorded, SHUT ends the thread (a
non-zero value is the destination's failure: "RP: Sibling indicated error %d"), page
requests go to a handler (postcopy), RECV_BITMAP and RESUME_ACK to the recovery handler.
Any error is kept as `error`, like QEMU's `rp_state.error`, which fails the migration at
completion; the thread never dies silently.  `io_failed` tells an I/O failure (or the
channel ending before SHUT) from a protocol error, as QEMU's `qemu_file_get_error(rp)`
does: in postcopy only the former pauses the migration (`source_return_path_thread`'s
`postcopy_pause_return_path_thread`).  One reader serves one channel; a recovery starts a
new one on the new channel.  `on_end` is called as the thread ends (the migration thread
is woken by it).  `wait_closed` is QEMU's `await_return_path_close_on_source`, with a
deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from harness.protocol import Pong, ProtocolError, ReqPages, ReqPagesId, ReturnPathDecoder, Shut
from harness.protocol.return_path import RecvBitmap, ResumeAck, RpMessage

log = logging.getLogger(__name__)


class ReturnPathError(RuntimeError):
    """A message the source refuses, in QEMU's words (the reader keeps it as `error`)."""


class ReadableChannel(Protocol):
    def recv_into(self, view: memoryview) -> int: ...


class ReturnPathReader:
    def __init__(self, channel: ReadableChannel,
                 emit: Callable[[str, dict[str, Any]], None],
                 on_request: Callable[[RpMessage], None] | None = None,
                 record: BinaryIO | None = None, *,
                 on_recovery: Callable[[RpMessage], None] | None = None,
                 on_end: Callable[[ReturnPathReader], None] | None = None) -> None:
        self._channel = channel
        self._record = record  # the bytes as they arrived (`harness run --record`)
        self._emit = emit
        self._on_request = on_request
        self._on_recovery = on_recovery
        self._on_end = on_end
        self._decoder = ReturnPathDecoder()
        self._closed = threading.Event()
        self._stopping = False
        self.pongs: list[int] = []
        self.shut: int | None = None
        self.error: str | None = None
        self.io_failed = False  # the channel failed or ended before SHUT (not a bad message)
        self.messages: list[RpMessage] = []
        self._thread = threading.Thread(target=self._main, name="return-path", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stop reading (the caller shuts the channel down to unblock a pending read)."""
        self._stopping = True

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def broken(self) -> bool:
        """The channel failed under it (postcopy pauses on this, QEMU's file error)."""
        return self.io_failed and not self._stopping

    def _main(self) -> None:
        buf = bytearray(4096)
        view = memoryview(buf)
        try:
            while self.shut is None and not self._stopping:
                n = self._channel.recv_into(view)
                if n == 0:
                    if not self._stopping:
                        self.io_failed = True  # qemu_get_be16 at EOF: a file error
                        self.error = "return path: the destination closed it before SHUT"
                    break
                if self._record is not None:
                    self._record.write(view[:n])
                self._decoder.receive_data(bytes(view[:n]))
                for message in self._decoder.events():
                    self._handle(message)
        except ProtocolError as err:
            self.error = err.message
        except ReturnPathError as err:
            self.error = str(err)
        except OSError as err:
            if not self._stopping and self.shut is None:
                self.io_failed = True
                self.error = f"return path: {err}"
        except Exception as err:  # never die silently
            log.exception("return path reader failed")
            self.error = f"return path: {err}"
        finally:
            if self._record is not None:
                self._record.close()
            self._closed.set()
            if self._on_end is not None:
                self._on_end(self)

    def _handle(self, message: RpMessage) -> None:
        self.messages.append(message)
        if isinstance(message, Pong):
            self.pongs.append(message.value)
        elif isinstance(message, Shut):
            self.shut = message.value
            if message.value:
                self.error = f"RP: Sibling indicated error {message.value}"
        elif isinstance(message, (ReqPages, ReqPagesId)):
            if self._on_request is None:
                self.error = "RP: page request received outside postcopy"
            else:
                self._on_request(message)
        elif isinstance(message, (RecvBitmap, ResumeAck)) and self._on_recovery is not None:
            self._on_recovery(message)
