"""The source's return-path reader: QEMU's `source_return_path_thread`.

Strategy: a thread reads the destination's messages from the same channel the stream
goes out on, decodes them with the codec's `ReturnPathDecoder` (which applies QEMU's
checks and words), and hands them on: PONGs are recorded, SHUT ends the thread (a
non-zero value is the destination's failure: "RP: Sibling indicated error %d"), page
requests go to a handler (postcopy).  Any error is kept as `error`, like QEMU's
`rp_state.error`, which fails the migration at completion; the thread never dies
silently.  `wait_closed` is QEMU's `await_return_path_close_on_source`, with a deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from harness.protocol import Pong, ProtocolError, ReqPages, ReqPagesId, ReturnPathDecoder, Shut
from harness.protocol.return_path import RpMessage

log = logging.getLogger(__name__)


class ReadableChannel(Protocol):
    def recv_into(self, view: memoryview) -> int: ...


class ReturnPathReader:
    def __init__(self, channel: ReadableChannel,
                 emit: Callable[[str, dict[str, Any]], None],
                 on_request: Callable[[RpMessage], None] | None = None,
                 record: BinaryIO | None = None) -> None:
        self._channel = channel
        self._record = record  # the bytes as they arrived (`harness run --record`)
        self._emit = emit
        self._on_request = on_request
        self._decoder = ReturnPathDecoder()
        self._closed = threading.Event()
        self._stopping = False
        self.pongs: list[int] = []
        self.shut: int | None = None
        self.error: str | None = None
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

    def _main(self) -> None:
        buf = bytearray(4096)
        view = memoryview(buf)
        try:
            while self.shut is None and not self._stopping:
                n = self._channel.recv_into(view)
                if n == 0:
                    break
                if self._record is not None:
                    self._record.write(view[:n])
                self._decoder.receive_data(bytes(view[:n]))
                for message in self._decoder.events():
                    self._handle(message)
        except ProtocolError as err:
            self.error = err.message
        except OSError as err:
            if not self._stopping and self.shut is None:
                self.error = f"return path: {err}"
        except Exception as err:  # never die silently
            log.exception("return path reader failed")
            self.error = f"return path: {err}"
        finally:
            if self._record is not None:
                self._record.close()
            self._closed.set()

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
