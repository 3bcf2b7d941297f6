"""multifd on the destination: the N extra channels, their receive threads and the SYNCs.

Strategy: QEMU 7.2's `migration/multifd.c` receive side (multifd_recv_new_channel,
multifd_recv_thread, multifd_recv_sync_main), facts M2-M11 of
reference/qemu-7.2-production-features.md.  `accept_multifd` takes 1 + N connections
from the one listener in order of acceptance -- the first is main, never decided by
peeking (M2) -- before the main stream is read (M3); channels that do not all come within
`channel_timeout` fail the migration naming how many came (7.2 waits forever, M4).  The
listener stays open during the load: a connection beyond N fails the migration naming it
(7.2 ignores it, and the pages sent there are lost: M4).

`MultifdReceive` runs one thread per channel: it reads exactly the 64-byte init packet,
then each 1344-byte header and its payload, into buffers allocated once, and the codec
(harness.protocol.multifd: `MultifdInit.parse`, `PacketHeader.parse`,
`PageDecompressor`) checks them in 7.2's words -- magic, version, the --uuid, an id
below N and not yet seen (7.2's bound is off by one), each header.  (Not through the
codec's `ChannelDecoder`, whose per-packet buffers cost a fresh 512 KiB -- and its page
faults -- per packet: measured 2 ms a packet on this VM, about 200 MiB/s a channel.)
Raw pages at consecutive offsets (a bulk pass) are read straight into guest RAM, as
7.2 reads into the guest pages; others are written from the buffer under the loader's
place lock (and marked in the present bitmap when there is one).  After a SYNC packet the thread waits until the
main thread releases it; the main thread, at each RAM EOS of the main stream, calls
`sync()`, which waits (with a deadline) for one SYNC from every channel, then releases
them all (M10) -- so a page of one section is never placed after main went past that
section's EOS.  Packet numbers are not checked (duplicates and gaps are normal: M11).
A failure on a channel -- a bad packet, EOF inside a packet, an I/O error -- is kept,
raised by the next `sync()` and handed to `on_error` (which breaks the main channel so
the load stops) as "failed to receive packet via multifd channel N: <QEMU's words>".
EOF between packets is not an error (the source closes its channels at the end); a
`sync()` that then waits for that channel fails at once, naming it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from harness.protocol.multifd import (
    HEADER_SIZE,
    INIT_SIZE,
    MAX_COMPRESSED,
    MultifdInit,
    PacketHeader,
    PageDecompressor,
)
from harness.protocol.ram_saver import PAGE

log = logging.getLogger(__name__)

CHANNEL_TIMEOUT = 10.0  # s the N channels may take to arrive after main
JOIN_TIMEOUT = 5.0


class MultifdReceiveError(ConnectionError):
    """A multifd channel failed (or did not come); the message names it."""


def channel_failure(index: int, text: str) -> MultifdReceiveError:
    return MultifdReceiveError(f"failed to receive packet via multifd channel {index}: {text}")


def accept_multifd(listener: Any, channels: int, accept_timeout: float | None,
                   channel_timeout: float = CHANNEL_TIMEOUT) -> tuple[Any, list[Any]]:
    """Main (the first connection accepted), then `channels` more (M2/M3); a missing
    channel fails naming how many came.  On a failure everything accepted is closed."""
    from harness.transport import ChannelTimeout

    main = listener.accept(timeout=accept_timeout)
    taken: list[Any] = []
    deadline = time.monotonic() + channel_timeout
    try:
        while len(taken) < channels:
            try:
                taken.append(listener.accept(timeout=max(0.01, deadline - time.monotonic())))
            except ChannelTimeout:
                raise MultifdReceiveError(
                    f"multifd: {len(taken)} of {channels} multifd channels arrived within "
                    f"{channel_timeout:g} s of the main channel (multifd-channels is "
                    f"{channels} here: is it the same on the source?)") from None
    except BaseException:
        for channel in (main, *taken):
            with contextlib.suppress(Exception):
                channel.shutdown()
                channel.close()
        raise
    return main, taken


class _Lengths(Mapping[str, int]):
    """idstr -> used_length of the loader's blocks as they are now (a resized block
    included), for the packet checks."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getitem__(self, name: str) -> int:
        return int(self._loader.block_lengths[name])

    def __iter__(self) -> Any:
        return iter(self._loader.block_lengths)

    def __len__(self) -> int:
        return len(self._loader.block_lengths)


class _Receiver:
    """One channel and its thread (MultiFDRecvParams)."""

    def __init__(self, index: int, channel: Any, owner: MultifdReceive) -> None:
        self.index = index  # accept order, until the init packet names the channel
        self.id: int | None = None
        self.channel = channel
        self.owner = owner
        self.received = 0  # SYNC packets seen
        self.released = 0  # SYNCs the main thread let go
        self.packets = 0
        self.pages = 0
        self.bytes = 0
        self.ended = False  # EOF between two packets
        self.error: str | None = None
        self.thread = threading.Thread(target=self._main, name=f"multifdrecv_{index}",
                                       daemon=True)

    @property
    def name(self) -> int:
        return self.index if self.id is None else self.id

    def _main(self) -> None:
        owner = self.owner
        try:
            self._read()
        except Exception as err:  # noqa: BLE001 -- kept, raised by sync, handed to on_error
            if owner.stopping:
                return
            text = getattr(err, "message", None) or str(err) or type(err).__name__
            failure = channel_failure(self.name, text)
            with owner.cond:
                self.error = str(failure)
                owner.cond.notify_all()
            log.warning("%s", failure)
            owner.on_error(failure)

    def _read(self) -> None:
        """multifd_recv_thread: the init packet, then packets until EOF.  Reads go into
        two buffers allocated once (a fresh 512 KiB per packet costs its page faults)."""
        owner = self.owner
        raw = self._exact(memoryview(bytearray(INIT_SIZE)))
        assert raw is not None  # EOF before it raises
        init = MultifdInit.parse(raw, uuid=owner.uuid, channels=owner.channels)
        owner.claim(self, init.channel_id)
        method = owner.compression
        decompressor = PageDecompressor(method, init.channel_id) if method != "none" else None
        header_buf = memoryview(bytearray(HEADER_SIZE))
        payload_buf = memoryview(bytearray(MAX_COMPRESSED))
        while not owner.stopping:
            if not self._exact(header_buf, eof_ok=True):
                with owner.cond:
                    self.ended = True
                    owner.cond.notify_all()
                return
            header = PacketHeader.parse(header_buf, blocks=owner.lengths, channel=init.channel_id,
                                        compression=method)
            self.packets += 1
            run = owner.run_of(header) if decompressor is None else None
            if run is not None:  # consecutive raw pages: straight into guest RAM
                self._exact(run, before=HEADER_SIZE)
                owner.mark(header.ramblock, header.offsets)
            else:
                payload = payload_buf[:header.payload_size]
                self._exact(payload, before=HEADER_SIZE)
                if header.normal_pages:
                    pages = payload if decompressor is None else \
                        decompressor.decompress(payload, header.normal_pages)
                    owner.place(header.ramblock, header.offsets, pages)
            self.pages += header.normal_pages
            if header.sync:
                self._wait_release()

    def _exact(self, view: memoryview, *, eof_ok: bool = False,
               before: int = 0) -> memoryview | None:
        """Fill `view` from the channel; None at EOF before its first byte when `eof_ok`
        (the end of the channel between packets), else EOF is an error."""
        got = 0
        while got < view.nbytes:
            n = self.channel.recv_into(view[got:])
            if n == 0:
                if got == 0 and before == 0 and eof_ok:
                    return None
                where = "before its init packet" if self.id is None else "inside a packet"
                raise ConnectionResetError(f"the channel ended {where} "
                                           f"({before + got} bytes of it read)")
            got += n
            self.bytes += n
        return view

    def _wait_release(self) -> None:
        """After a SYNC: wait until the main thread's sync lets this channel go on."""
        owner = self.owner
        with owner.cond:
            self.received += 1
            owner.cond.notify_all()
            while self.released < self.received and not owner.stopping:
                owner.cond.wait()


class MultifdReceive:
    """The multifd channels of one incoming migration (multifd_recv_state)."""

    def __init__(self, channels: list[Any], *, compression: str, uuid: bytes,
                 loader: Any, place_lock: threading.Lock,
                 on_error: Callable[[Exception], None], listener: Any = None,
                 sync_timeout: float = 300.0) -> None:
        self.compression = compression
        self.uuid = uuid
        self.channels = len(channels)
        self.lengths = _Lengths(loader)
        self._loader = loader
        self._place_lock = place_lock
        self.on_error = on_error
        self.sync_timeout = sync_timeout
        self.cond = threading.Condition()
        self.stopping = False
        self.syncs = 0  # RAM EOS syncs done
        self._ids: dict[int, _Receiver] = {}
        self._extra: str | None = None  # a connection beyond 1 + N came
        self._listener = listener
        self._receivers = [_Receiver(i, ch, self) for i, ch in enumerate(channels)]
        for receiver in self._receivers:
            if hasattr(receiver.channel, "set_timeout"):
                receiver.channel.set_timeout(None)  # idle between sections; woken by close
            receiver.thread.start()
        self._watcher: threading.Thread | None = None
        if listener is not None:
            self._watcher = threading.Thread(target=self._watch_extra, name="multifd-extra",
                                             daemon=True)
            self._watcher.start()

    # ------------------------------------------------------------------ receive threads
    def claim(self, receiver: _Receiver, channel_id: int) -> None:
        """multifd_recv_new_channel: the id the init packet gives, once."""
        with self.cond:
            if channel_id in self._ids:
                raise MultifdReceiveError(f"multifd: received id '{channel_id}' already setup'")
            self._ids[channel_id] = receiver
            receiver.id = channel_id

    def place(self, block: str, offsets: Any, pages: bytes | memoryview) -> None:
        """The packet's pages into guest RAM, under the place lock."""
        mem = self._loader.ram[block]
        index = np.asarray(offsets, dtype=np.int64) // PAGE
        data = np.frombuffer(pages, dtype=np.uint8).reshape(-1, PAGE)
        rows = mem[:mem.size // PAGE * PAGE].reshape(-1, PAGE)
        with self._place_lock:
            rows[index] = data
            present = getattr(self._loader, "present", None)
            if present is not None and block in present:
                present[block][index] = 1

    def run_of(self, header: PacketHeader) -> memoryview | None:
        """Guest RAM of the packet's pages when they are consecutive (the usual case of a
        bulk pass), to receive them in place as 7.2's readv into guest pages does; None
        otherwise.  No lock is held while the socket fills it: multifd never runs with
        postcopy here (refused), and a page's packet and its zero record on main of
        another section are ordered by the SYNCs."""
        offsets = header.offsets
        n = header.normal_pages
        if n == 0 or offsets[-1] - offsets[0] != (n - 1) * PAGE:
            return None
        first = offsets[0]
        if any(offsets[i] != first + i * PAGE for i in range(1, n - 1)):
            return None
        mem = self._loader.ram[header.ramblock]
        return memoryview(mem[first:first + n * PAGE]).cast("B")

    def mark(self, block: str, offsets: Any) -> None:
        """Pages received in place: in the present bitmap, when there is one."""
        present = getattr(self._loader, "present", None)
        if present is not None and block in present:
            with self._place_lock:
                present[block][np.asarray(offsets, dtype=np.int64) // PAGE] = 1

    def _watch_extra(self) -> None:
        """A connection beyond 1 + N fails the migration, naming it (7.2 ignores it)."""
        try:
            extra = self._listener.accept(timeout=None)
        except Exception:  # noqa: BLE001 -- closed at the end of the load: nothing came
            return
        with contextlib.suppress(Exception):
            extra.close()
        if self.stopping:
            return
        failure = MultifdReceiveError(
            f"multifd: an extra incoming migration connection (number {self.channels + 2}) "
            f"with multifd-channels {self.channels}: QEMU 7.2 would ignore it and lose the "
            f"pages sent on it; is multifd-channels larger on the source?")
        with self.cond:
            self._extra = str(failure)
            self.cond.notify_all()
        log.warning("%s", failure)
        self.on_error(failure)

    # ------------------------------------------------------------------ main thread
    def sync(self) -> None:
        """multifd_recv_sync_main (at a RAM EOS on main): one SYNC from every channel,
        then release them all."""
        deadline = time.monotonic() + self.sync_timeout
        with self.cond:
            while True:
                self._raise_failure()
                if self.stopping:
                    raise MultifdReceiveError("multifd: the load is stopping")
                waiting = [r for r in self._receivers if r.received <= r.released]
                if not waiting:
                    break
                ended = [r for r in waiting if r.ended]
                if ended:
                    raise channel_failure(ended[0].name, "the channel closed before the "
                                          f"SYNC of RAM EOS {self.syncs + 1}")
                left = deadline - time.monotonic()
                if left <= 0:
                    names = ", ".join(str(r.name) for r in waiting)
                    raise MultifdReceiveError(
                        f"multifd: no SYNC from channel(s) {names} within "
                        f"{self.sync_timeout:g} s of RAM EOS {self.syncs + 1} on main")
                self.cond.wait(min(left, 1.0))
            for receiver in self._receivers:
                receiver.released += 1
            self.syncs += 1
            self.cond.notify_all()

    def failure(self, timeout: float) -> MultifdReceiveError | None:
        """A channel's failure (waiting up to `timeout` for one): when main failed, its
        cause may be a channel's (a source that saw its channel fail ends main)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                try:
                    self._raise_failure()
                except MultifdReceiveError as err:
                    return err
                left = deadline - time.monotonic()
                if left <= 0 or all(r.ended for r in self._receivers):
                    return None
                self.cond.wait(left)

    def _raise_failure(self) -> None:
        if self._extra:
            raise MultifdReceiveError(self._extra)
        for receiver in self._receivers:
            if receiver.error:
                raise MultifdReceiveError(receiver.error)

    def stats(self) -> list[dict[str, Any]]:
        """Per channel in accept order: its id, packets, SYNCs, pages and bytes."""
        return [{"id": r.id, "packets": r.packets, "syncs": r.received, "pages": r.pages,
                 "bytes": r.bytes} for r in self._receivers]

    @property
    def pages(self) -> int:
        return sum(r.pages for r in self._receivers)

    def close(self) -> None:
        """End every thread, close every channel and the listener (load over, quit)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
        for receiver in self._receivers:
            with contextlib.suppress(Exception):
                receiver.channel.shutdown()
        for thread in [r.thread for r in self._receivers] + [self._watcher]:
            if thread is not None:
                thread.join(JOIN_TIMEOUT)
                if thread.is_alive():
                    log.warning("%s did not end within %.0f s", thread.name, JOIN_TIMEOUT)
        for receiver in self._receivers:
            with contextlib.suppress(Exception):
                receiver.channel.close()
