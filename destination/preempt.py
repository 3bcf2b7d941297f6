"""postcopy-preempt on the destination: the second channel and its "fault-fast" thread.

Strategy: QEMU 7.2's `postcopy_preempt_thread` (`migration/postcopy-ram.c`).  With the
capability on, the incoming listener takes two connections in order of acceptance, main
then preempt (`migration.c: migration_ioc_process_incoming`, `postcopy_preempt_new_channel`),
and the main stream is not read before both are there (`migration_has_all_channels`):
`accept_channels` does that, with the caller's deadline, and a closed listener (cancel,
quit, a newer migrate-recover) ends the wait.  The preempt channel has no header or
magic; it carries bare RAM page records -- `be64 offset|flags`, the block's idstr, the
payload -- and one `EOS` at completion (`ram.c: postcopy_preempt_shutdown_file`).

`FastLoad` reads it from LISTEN on (7.2 starts the thread in
`postcopy_ram_incoming_setup`) with a fork of the main RAM loader: the same RAM blocks
and present bitmap, its own "last block" (CONTINUE is relative to the block last seen on
this channel: `ram_block_from_stream(..., channel)`), in the loader's postcopy placing
mode, so a page arriving on either channel is placed once and the guest waiting on it
is woken by the same `on_place` hook as for a page on main.  `place_lock` is held around
every parse that places (this thread's and the main loop's), which makes check-place-mark
one step: 7.2's UFFDIO_COPY refuses a second copy (EEXIST) with the same effect.  Reads
are bounded (a buffer of BUFFER bytes; no record is larger).  The thread ends at EOS.
Any other end -- a bad record, EOF, an I/O error -- is handed to `on_error` once, which
makes the incoming migration pause (7.2: qemu_loadvm_state_main checks the preempt
file's error too) or fail; `stop()` (pause, quit) shuts the channel down, so the read
returns, and joins the thread; what it raises then is not an error.  After a recovery
the thread starts again on the new preempt channel (7.2 posts
postcopy_pause_sem_fast_load in loadvm_postcopy_handle_resume).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from harness.protocol import RamPages, RemoteProtocolError
from harness.protocol.wire import Reader

log = logging.getLogger(__name__)

#: bytes buffered from the preempt channel; a record is at most 8 + 256 + 4 + ~4.2 KiB
BUFFER = 256 << 10
JOIN_TIMEOUT = 5.0


def accept_channels(listener: Any, preempt: bool, timeout: float | None) -> tuple[Any, Any]:
    """The main channel, then (with preempt) the preempt channel: (main, preempt or None).

    `timeout` bounds each accept (None: until the listener is closed).  When the second
    accept fails, the main channel is closed and the error raised."""
    main = listener.accept(timeout=timeout)
    if not preempt:
        return main, None
    try:
        second = listener.accept(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            main.shutdown()
            main.close()
        raise
    return main, second


class FastLoad:
    """The fault-fast thread of one incoming migration (one preempt channel at a time)."""

    def __init__(self, loader: Any, place_lock: threading.Lock,
                 on_error: Callable[[Exception], None]) -> None:
        self._main_loader = loader
        self._lock = place_lock
        self._on_error = on_error
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.pages = 0  # pages placed from this channel (all connections)
        self.duplicates = 0  # pages that came here after they had arrived on main
        self.received = 0  # bytes read
        self.eos = False
        self.error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, channel: Any) -> None:
        """Read `channel` from now on (postcopy listens, or resumes after a recovery)."""
        if self.running:
            raise RuntimeError("the fault-fast thread is already running")
        loader = self._main_loader.fork()
        loader.last_block = None  # CONTINUE is per channel: nothing seen here yet
        loader.duplicates = 0
        loader.need = 0
        if hasattr(channel, "set_timeout"):
            channel.set_timeout(None)  # idle until the first request: woken by shutdown
        self._channel = channel
        self._stopping = False
        self.eos = False
        self._thread = threading.Thread(target=self._main, args=(channel, loader),
                                        name="fault-fast", daemon=True)
        self._thread.start()

    def wait_eos(self, timeout: float) -> bool:
        """The stream completed: wait for this channel's EOS (7.2 joins the thread in
        postcopy_ram_incoming_cleanup).  True when it came (or nothing was running)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        return self.eos or thread is None

    def stop(self) -> None:
        """Pause or quit: shut the channel down, join the thread, close the channel."""
        self._stopping = True
        channel, thread = self._channel, self._thread
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.shutdown()
        if thread is not None:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("fault-fast thread did not end within %.0f s", JOIN_TIMEOUT)
                return
        self._thread = None
        self._channel = None
        if channel is not None:
            with contextlib.suppress(Exception):
                channel.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pages": self.pages, "dropped-duplicates": self.duplicates,
                               "bytes": self.received, "eos": self.eos}
        if self.error:
            out["error"] = self.error
        return out

    # ------------------------------------------------------------------ thread
    def _main(self, channel: Any, loader: Any) -> None:
        try:
            self._read(channel, loader)
        except Exception as err:  # never die silently: handed to on_error
            if self._stopping:
                log.debug("fault-fast thread stopped: %s", err)
                return
            if not isinstance(err, (OSError, RemoteProtocolError)):
                log.exception("fault-fast thread failed")
            failure = _named(err)
            self.error = str(failure)
            self._on_error(failure)

    def _read(self, channel: Any, loader: Any) -> None:
        """postcopy_preempt_thread: ram_load_postcopy(RAM_CHANNEL_POSTCOPY) until EOS."""
        buf = bytearray(BUFFER)
        view = memoryview(buf)
        start = end = base = 0
        while True:
            if end == BUFFER:
                if start == 0:
                    raise RemoteProtocolError(f"a record longer than {BUFFER} bytes",
                                              offset=base, qemu=False)
                buf[:end - start] = buf[start:end]
                base, end, start = base + start, end - start, 0
            n = channel.recv_into(view[end:])
            if n == 0:
                raise ConnectionResetError(f"EOF before EOS (after {base + end} bytes)")
            end += n
            self.received += n
            reader = Reader(buf, start, end, base)
            with self._lock:
                events, eos = loader.load(reader, 0)
                self.duplicates = int(loader.duplicates)
            self.pages += sum(int(ev.offsets.size) for ev in events
                              if isinstance(ev, RamPages))
            start = reader.pos
            if eos:
                self.eos = True
                return


def _named(err: Exception) -> Exception:
    """The error, saying it happened on the preempt channel."""
    if isinstance(err, RemoteProtocolError):
        named = RemoteProtocolError(f"postcopy preempt channel: {err.message}",
                                    offset=err.offset, context=err.context, errno=err.errno,
                                    qemu=False)
        return named
    text = str(err) or type(err).__name__
    return ConnectionResetError(f"postcopy preempt channel: {text}")
