"""The incoming migration: QEMU's `qmp_migrate_incoming` and `process_incoming_migration_co`.

Strategy: `migrate_incoming(uri)` listens (none -> setup) and a thread accepts the one main
connection (setup -> active) and runs the load: bytes go from the channel straight into
the codec's `StreamDecoder` buffer (`receive_into`), which places pages in the guest's
shared-memory RAM and checks everything QEMU's loader checks; until postcopy listens, a
receive first waits (at most 1 ms) for 512 KiB to be there, so that the stream is parsed
in large chunks and the receiver is not woken for every segment.  Events are applied as
QEMU applies them: device state into the guest, OPEN_RETURN_PATH opens the reply
direction of the same channel, PING answers PONG.  After EOF and the VM description the
guest takes the runstate the source stored (running -> it starts, unless autostart is off),
the status becomes completed and the return path gets SHUT(0).  Any error — a malformed
stream, a source that vanishes, a deadline — makes the status failed with QEMU's words and
the byte offset in `error-desc`, sends SHUT(1) when it can, and never starts the guest.
Postcopy commands are handed to `postcopy`.  The guest's vCPU (its workload process) is
started paused as the load begins -- with postcopy-ram at ADVISE, which gives it its
fault fds -- so that the guest's start is a resume, not a process start in the downtime.

Postcopy recovery (QEMU 7.2's `qemu_loadvm_state_main` -> `postcopy_pause_incoming`):
once the guest runs here (PostcopyState RUNNING), any load error -- the source gone, a
reset, `migrate-pause`, garbage -- pauses instead of failing: the channel is shut down
and closed, the status becomes postcopy-paused, the guest keeps running (an access to a
missing page blocks) and the load thread waits, without a deadline but woken by the
peer quitting, for the connection of `migrate-recover URI` (`postcopy_try_recover`:
-> postcopy-recover).  The loader then goes on with the same section table, RAM state
and present bitmap on the new channel, which starts without a header: RECV_BITMAP is
answered with the block's received bitmap on the new return path, POSTCOPY_RESUME makes
it postcopy-active again, answered with RESUME_ACK(1) (postcopy.py re-sends the request
the guest waits for).  A break while recovering pauses again.  Before RUN (LISTENING) a
break fails, as in QEMU.  Statistics carry on across a recovery.

postcopy-preempt (preempt.py): the listener takes two connections, main then preempt,
before the main stream is read; the fault-fast thread places the pages of the preempt
channel from LISTEN (from POSTCOPY_RESUME after a recovery, which again takes two
connections) until its EOS, which completion waits for (at most VMDESC_TIMEOUT).  A
failure on it breaks the main channel, so that the load pauses or fails as for a failure
of main, with the preempt channel's words.  Main's parsing and the fault-fast thread's
hold one lock, so a page is checked, placed and marked present by one of them at a time.

multifd (multifd.py): the listener takes 1 + N connections, main first, before the main
stream is read, and stays open for the load (one more connection fails it); each RAM
EOS on main waits for one SYNC from every channel (`MultifdReceive.sync`), and a failure
on a channel breaks main as a preempt failure does.

With `tls-creds`, each accepted connection is a TLS channel before it gets here
(destination/main.py: harness.transport.tls.TlsListener); a failed handshake fails the
load with QEMU 7.2's words (QEMU itself reports it and stays in setup).  The configuration's UUID is checked against the peer's `--uuid` whenever
the source sends one (validate-uuid on the source), as `vmstate_uuid_post_load` does.
"""

from __future__ import annotations

import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from harness.migration.config import (
    MigrationConfig,
    multifd_uri_refusal,
    preempt_uri_refusal,
    tls_refusal,
)
from harness.migration.status import (
    MIGRATE_PAUSE_REFUSED,
    MIGRATE_RECOVER_REFUSED,
    MigrationStatus,
    StatusMachine,
    destination_machine,
)
from harness.protocol import (
    Command,
    DeviceState,
    EndOfStream,
    Event,
    OpenReturnPath,
    Packaged,
    Ping,
    Pong,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    PostcopyResume,
    PostcopyRun,
    ProtocolError,
    RamEos,
    RamPages,
    RecvBitmap,
    RecvBitmapRequest,
    RemoteProtocolError,
    ResumeAck,
    Shut,
    StreamClosed,
    StreamDecoder,
    StreamWarning,
    VmDescription,
    encode_rp,
)
from harness.protocol.block import BlockProgress
from harness.protocol.devices import runstate_of

from . import decompress
from .multifd import MultifdReceive, accept_multifd
from .postcopy import PostcopyIncoming, PostcopyState
from .preempt import FastLoad, accept_channels

log = logging.getLogger(__name__)
S = MigrationStatus

RECV_SIZE = 1 << 20
#: precopy: a receive waits (up to BULK_WAIT_MS) until this much has arrived, so that
#: the stream is parsed in large chunks and the receiver is woken less often
BULK_LOWAT = 512 << 10
BULK_WAIT_MS = 1
ACCEPT_TIMEOUT = 600.0  # waiting for the source to connect
IDLE_TIMEOUT = 300.0  # no byte from the source for this long -> failed
VMDESC_TIMEOUT = 10.0  # after EOF, how long the trailer (or the close) may take
CHANNEL_GRACE = 0.5  # main failed: how long a multifd channel's own failure may take


class IncomingError(Exception):
    """A refused QMP command (GenericError), in QEMU's words."""


class Listener(Protocol):
    def accept(self, timeout: float | None = None) -> Any: ...
    def close(self) -> None: ...
    def expect_channels(self, channels: int) -> None: ...


class IncomingMigration:
    """The destination side of one peer."""

    def __init__(self, guest: Any, config: MigrationConfig,
                 listen: Callable[[str], Listener],
                 emit: Callable[[str, dict[str, Any]], None], *, autostart: bool = True,
                 accept_timeout: float = ACCEPT_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT
                 ) -> None:
        self.guest = guest
        self.config = config
        self._listen = listen
        self._emit = emit
        self.autostart = autostart
        self.accept_timeout = accept_timeout
        self.idle_timeout = idle_timeout
        self.state: StatusMachine = destination_machine()
        self.state.on_change(self._status_changed)
        self._listener: Listener | None = None
        self._recover = threading.Condition()  # migrate-recover's listener, or quitting
        self._recover_listener: Listener | None = None
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._rp_open = False
        self._stopping = False
        self.error_desc: str | None = None
        self.socket_address: list[dict[str, Any]] | None = None
        self.received = 0
        self.pages = {"normal": 0, "duplicate": 0, "xbzrle": 0, "compressed": 0}
        self.runstate_received: str | None = None
        self.loaded_digests: dict[str, Any] | None = None
        self.snapshot = False  # take page digests when the load completes
        self._decompress: decompress.DecompressThreads | None = None  # decompress-threads
        self.postcopy: PostcopyIncoming | None = None
        self._rp_lock = threading.Lock()  # the load loop and the fault thread both reply
        self.record_dir: Path | None = None  # save both directions for `harness analyze`
        self.record_return_path = True  # False: the source records what it receives
        self._record: tuple[BinaryIO, BinaryIO | None] | None = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self._place_lock = threading.Lock()  # main's parsing and the fault-fast thread's
        self._preempt_channel: Any = None
        self.fast_load: FastLoad | None = None  # postcopy-preempt's fault-fast thread
        self._fast_error: Exception | None = None
        self.multifd: MultifdReceive | None = None
        self.multifd_channel_timeout: float | None = None  # None: multifd.CHANNEL_TIMEOUT

    # ------------------------------------------------------------------ QMP
    def migrate_incoming(self, uri: str) -> None:
        from harness.transport import UriError, parse_uri

        if self.state.status is not S.NONE:
            raise IncomingError("The incoming migration has already been started")
        try:
            parse_uri(uri, "destination")
        except UriError as err:
            raise IncomingError(str(err)) from None
        listener = self._listener_for(uri)
        self._listener = listener
        self._note_address(listener)
        self.guest.runstate = "inmigrate"
        self.state.set(S.NONE, S.SETUP)
        self._thread = threading.Thread(target=self._thread_main, name="incoming", daemon=True)
        self._thread.start()

    def migrate_recover(self, uri: str) -> None:
        """qmp_migrate_recover: only when postcopy is paused.  Listens on `uri`; the
        load thread accepts the source's new connection.  A listener of an earlier
        migrate-recover is released first (7.2: migration_incoming_transport_cleanup)."""
        from harness.transport import TransportError, UriError, parse_uri

        if self.state.status is not S.POSTCOPY_PAUSED:
            raise IncomingError(MIGRATE_RECOVER_REFUSED)
        # 7.2 migration.c: qemu_start_incoming_migration sends a MIGRATION event "setup"
        # before it listens, whatever the state (which stays postcopy-paused)
        self._emit("MIGRATION", {"status": str(S.SETUP)})
        try:
            parse_uri(uri, "destination")
            listener = self._listener_for(uri)
        except (UriError, TransportError, OSError) as err:
            raise IncomingError(str(err)) from None
        with self._recover:
            old, self._recover_listener = self._recover_listener, listener
            if self._stopping:
                old, self._recover_listener = listener, None
            self._recover.notify_all()
        if old is not None:
            old.close()
        self._note_address(listener)

    @property
    def _preempt(self) -> bool:
        return self.config.cap("postcopy-preempt")

    def _listener_for(self, uri: str) -> Listener:
        """Listen on `uri`: for two channels with postcopy-preempt (a socket URI only:
        harness.migration.config.preempt_uri_refusal)."""
        refusal = (preempt_uri_refusal(self.config.capabilities, uri)
                   or multifd_uri_refusal(self.config.capabilities, uri))
        if refusal:
            raise IncomingError(refusal)
        listener = self._listen(uri)
        multifd = self.config.cap("multifd")
        if self._preempt or multifd:  # multifd: one more, to refuse an extra connection
            try:
                listener.expect_channels(self.config.param("multifd-channels") + 2
                                         if multifd else 2)
            except ValueError as err:
                listener.close()
                raise IncomingError(str(err)) from None
        return listener

    def pause(self) -> None:
        """qmp_migrate_pause on the destination: shut the channel down; the loader sees
        the failure and pauses (7.2 accepts it in postcopy-active only)."""
        if self.state.status is not S.POSTCOPY_ACTIVE:
            raise IncomingError(MIGRATE_PAUSE_REFUSED)
        channel = self._channel
        if channel is not None:
            channel.shutdown()

    def _note_address(self, listener: Listener) -> None:
        """query-migrate's socket-address: where we listen (the port after port 0)."""
        address = getattr(listener, "socket_address", None)
        if address is not None:
            self.socket_address = [address] if isinstance(address, dict) else list(address)

    def query(self) -> dict[str, Any]:
        status = self.state.status
        if status is S.NONE:
            return {}
        info: dict[str, Any] = {"status": str(status)}
        listening = (S.SETUP, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER)
        if status in listening and self.socket_address:
            info["socket-address"] = self.socket_address
        if status is not S.SETUP:
            multifd = self.multifd
            if multifd is not None:
                info["x-multifd"] = multifd.stats()
            info["ram"] = {"transferred": self.received, "normal": self.pages["normal"]
                           + (multifd.pages if multifd is not None else 0),
                           "duplicate": self.pages["duplicate"],
                           "normal-bytes": self.pages["normal"] * 4096}
            end = self.finished_at or time.monotonic()
            info["total-time"] = int((end - self.started_at) * 1000)
            if self.postcopy is not None and self.postcopy.state >= PostcopyState.LISTENING:
                blocked = self.guest.postcopy_stats()["blocked-ns"] // 1_000_000
                if self.config.cap("postcopy-blocktime"):  # as 7.2's blocktime_ctx
                    info["postcopy-blocktime"] = blocked
                info["x-postcopy"] = {**self.postcopy.stats(), "blocked-ms": blocked}
                if self.fast_load is not None:
                    info["x-postcopy"]["preempt"] = self.fast_load.stats()
        if self.error_desc:
            info["error-desc"] = self.error_desc
        return info

    def close(self) -> None:
        """Stop listening/loading (the peer is quitting)."""
        self._stopping = True
        with self._recover:
            recover, self._recover_listener = self._recover_listener, None
            self._recover.notify_all()
        if recover is not None:
            recover.close()
        if self.postcopy is not None:
            self.postcopy.close()
        if self._listener is not None:
            self._listener.close()
        if self._channel is not None:
            self._channel.shutdown()
        self._stop_fast_load()
        if self.multifd is not None:
            self.multifd.close()
        if self._thread is not None:
            self._thread.join(5.0)

    # ------------------------------------------------------------------ thread
    def _thread_main(self) -> None:
        try:
            self._run()
        except ProtocolError as err:
            self._failed(str(err), err.qemu_lines)
        except Exception as err:  # never die silently
            if not isinstance(err, (OSError, TimeoutError)):
                log.exception("incoming migration failed")
            self._failed(str(err) or type(err).__name__, [str(err)])
        finally:
            if self._decompress is not None:
                self._decompress.close()
            self._stop_recording()
            self._stop_fast_load()
            if self.multifd is not None:
                self.multifd.close()
            if self._channel is not None:
                self._channel.close()
            if self._listener is not None:
                self._listener.close()

    def _run(self) -> None:
        assert self._listener is not None
        # migration_has_all_channels: nothing is read before every channel is here
        multifd_channels: list[Any] = []
        if self.config.cap("multifd"):  # the listener stays: _start_multifd takes it
            channel, multifd_channels = self._accept_multifd()
        else:
            channel, self._preempt_channel = accept_channels(self._listener, self._preempt,
                                                             self.accept_timeout)
            self._listener.close()
            self._listener = None
        refusal = tls_refusal(self.config.parameters)
        if refusal:  # migration_tls_channel_process_incoming: no such credentials object
            for each in (channel, *multifd_channels):
                each.close()
            raise ConnectionRefusedError(refusal)
        self.started_at = time.monotonic()
        self.state.set(S.SETUP, S.ACTIVE)
        self._attach(channel)
        decoder = self._decoder()
        if self._preempt_channel is not None:
            self.fast_load = FastLoad(decoder.loader, self._place_lock, self._fast_load_failed)
        self._decompress = decompress.attach(decoder.loader, self.config)
        if multifd_channels:
            self._start_multifd(multifd_channels, decoder)
        self.postcopy = PostcopyIncoming(self.guest, self.config.cap("postcopy-ram"),
                                         self._send_rp, decoder.loader,
                                         self._request_fd(channel))
        if not self.config.cap("postcopy-ram"):  # else after ADVISE, with the fault fds
            self.guest.prepare_start()  # the vCPU's process starts now, not in the downtime
        if self.record_dir is not None:
            rp = self.record_dir / "stream.rp.bin"
            self._record = ((self.record_dir / "stream.fwd.bin").open("wb"),
                            rp.open("wb") if self.record_return_path else None)
        while True:
            try:
                self._load(channel, decoder)
                break
            except Exception as err:
                cause, self._fast_error = self._fast_error or err, None
                if cause is err and self.multifd is not None:  # a channel's reset, say,
                    cause = self.multifd.failure(CHANNEL_GRACE) or err  # made main end
                if not self._pausable():
                    if cause is err:
                        raise
                    raise cause from err
                recovered = self._postcopy_pause(cause)
                if recovered is None:
                    return  # quitting while paused
                channel = recovered
                decoder = _continue_decoder(decoder)
        self._complete()

    def _request_fd(self, channel: Any) -> int | None:
        """The socket the guest writes its page requests on itself -- unless this side
        records the return path: then they pass through `_send_rp` to be saved."""
        sock = getattr(channel, "sock", None)
        direct = not (self.record_dir and self.record_return_path)
        return sock.fileno() if sock is not None and direct else None

    def _attach(self, channel: Any) -> None:
        with self._rp_lock:
            self._channel = channel
        if hasattr(channel, "set_timeout"):
            channel.set_timeout(self.idle_timeout)

    def _load(self, channel: Any, decoder: StreamDecoder) -> None:
        """qemu_loadvm_state_main on one channel, until the stream is over."""
        assert self.postcopy is not None
        readinto = self._reader(channel)
        done = False
        eof_at: float | None = None
        while not done:
            if self._stopping:
                raise RuntimeError("the destination is shutting down")
            if eof_at is not None and hasattr(channel, "set_timeout"):
                channel.set_timeout(max(0.1, VMDESC_TIMEOUT - (time.monotonic() - eof_at)))
            try:
                n = decoder.receive_into(readinto, RECV_SIZE)
            except TimeoutError:
                if eof_at is not None:  # no trailer and no close: QEMU would block; we go on
                    break
                raise TimeoutError(f"no data from the source for {self.idle_timeout:.0f} s "
                                   f"(at stream offset {decoder.offset})") from None
            self.received += n
            if n == 0:
                decoder.receive_data(b"")
            # one event at a time: a command takes effect before the records after it are
            # parsed (ADVISE before the pages it governs, LISTEN before placement)
            while isinstance(event := self._next_event(decoder), Event):
                if isinstance(event, EndOfStream) and not event.packaged:
                    if self.postcopy.listening:  # no trailer after a postcopy stream
                        done = True
                        break
                    eof_at = time.monotonic()
                done = self._apply(event) or done
            if self.postcopy.relay_error:
                raise RuntimeError(self.postcopy.relay_error)
            if n == 0:
                if not done and self._pausable():  # cut between two records
                    raise ConnectionResetError("the migration stream ended before its EOF")
                break

    def _next_event(self, decoder: StreamDecoder) -> Any:
        """The decoder's next event; pages it places are placed under the lock the
        fault-fast thread also holds (each page checked, placed, marked by one)."""
        with self._place_lock:
            return decoder.next_event()

    def _reader(self, channel: Any) -> Callable[[memoryview], int]:
        """The channel's recv_into, saving what it reads when recording."""
        receive = self._bulk_receiver(channel)
        forward = self._record[0] if self._record is not None else None
        if forward is None:
            return receive

        def readinto(view: memoryview) -> int:
            n = receive(view)
            forward.write(view[:n])
            return n
        return readinto

    def _bulk_receiver(self, channel: Any) -> Callable[[memoryview], int]:
        """The channel's recv_into; on a socket, until postcopy listens, each receive
        first waits up to BULK_WAIT_MS for BULK_LOWAT bytes (SO_RCVLOWAT, set only around
        that poll: the channel's own waits stay plain, so a stream that pauses or ends
        is still read at once after the short wait)."""
        sock = getattr(channel, "sock", None)
        if sock is None:
            return channel.recv_into  # type: ignore[no-any-return]
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)

        def readinto(view: memoryview) -> int:
            pc = self.postcopy
            if pc is None or not pc.listening:  # postcopy: a requested page must not wait
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT,
                                    min(BULK_LOWAT, len(view)))
                    poller.poll(BULK_WAIT_MS)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                except OSError:
                    pass  # closed or shut down: the receive says so
            n: int = channel.recv_into(view)
            return n
        return readinto

    def _stop_recording(self) -> None:
        with self._rp_lock:
            files, self._record = self._record, None
        for f in files or ():
            if f is not None:
                f.close()

    # ------------------------------------------------------------------ recovery
    def _pausable(self) -> bool:
        """qemu_loadvm_state_main: a load error pauses only once the guest runs here
        (PostcopyState RUNNING, RAM postcopy), not while LISTENING."""
        pc = self.postcopy
        return (not self._stopping and pc is not None and pc.postcopy_ram
                and pc.state is PostcopyState.RUNNING
                and self.state.status in (S.POSTCOPY_ACTIVE, S.POSTCOPY_RECOVER))

    def _postcopy_pause(self, err: Exception) -> Any:
        """postcopy_pause_incoming, then postcopy_try_recover: the new channel (status
        postcopy-recover), or None when the peer quits meanwhile."""
        assert self.postcopy is not None
        if not isinstance(err, (OSError, ProtocolError)):
            log.error("postcopy load failed", exc_info=err)
        self.error_desc = str(err) or type(err).__name__
        print("harness destination: Detected IO failure for postcopy. Migration paused. "
              f"({self.error_desc})", file=sys.stderr, flush=True)
        self.postcopy.pause()
        self._stop_fast_load()  # 7.2 shuts the preempt file down and closes it too
        self._stop_recording()  # a recording holds one stream: the first channel's
        with self._rp_lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.shutdown()  # the guest's writes on its dup of the socket fail now
            channel.close()
        self.state.move(S.POSTCOPY_PAUSED)
        new = self._wait_for_recovery()
        if new is None:
            return None
        self._attach(new)
        if self.postcopy.listening and hasattr(new, "prefer_latency"):
            new.prefer_latency()
        self.state.set(S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER)
        return new

    def _wait_for_recovery(self) -> Any:
        """Accept on migrate-recover's listener (no deadline: a paused guest waits for
        its user; quitting, or a newer migrate-recover, interrupts the accept)."""
        from harness.transport import TransportError

        while True:
            with self._recover:
                while self._recover_listener is None and not self._stopping:
                    self._recover.wait()
                listener = self._recover_listener
                if self._stopping or listener is None:
                    return None
            try:  # two new connections with preempt: main, then preempt
                channel, self._preempt_channel = accept_channels(listener, self._preempt, None)
            except (TransportError, OSError) as err:
                log.info("migrate-recover listener: %s", err)
                channel = None
            with self._recover:
                if self._recover_listener is listener:
                    self._recover_listener = None
            listener.close()
            if channel is not None:
                return channel

    def _recv_bitmap(self, command: RecvBitmapRequest) -> None:
        """loadvm_handle_recv_bitmap -> migrate_send_rp_recv_bitmap."""
        bitmap = self.postcopy.received_bitmap(command.block) if self.postcopy else None
        if bitmap is None:
            raise RemoteProtocolError(f"loadvm_handle_recv_bitmap: block '{command.block}' "
                                      f"not found", offset=command.offset)
        self._send_rp(encode_rp(RecvBitmap(command.block, bitmap)))

    def _postcopy_resume(self) -> None:
        """loadvm_postcopy_handle_resume: postcopy-active, RESUME_ACK, then the fault path
        is released on the new channel (postcopy.py)."""
        if self.state.status is not S.POSTCOPY_RECOVER:
            # "Don't fail the load, only for this."
            print("harness destination: loadvm_postcopy_handle_resume: illegal resume "
                  "received", file=sys.stderr, flush=True)
            return
        assert self.postcopy is not None
        self.state.set(S.POSTCOPY_RECOVER, S.POSTCOPY_ACTIVE)
        self.error_desc = None
        self._send_rp(encode_rp(ResumeAck(1)))
        self.postcopy.resume(self._request_fd(self._channel))
        self._start_fast_load()  # postcopy_pause_sem_fast_load

    # ------------------------------------------------------------------ multifd
    def _accept_multifd(self) -> tuple[Any, list[Any]]:
        """Main, then the N channels; the listener stays open (held by MultifdReceive
        from here on, or closed when the channels do not all come)."""
        kwargs = ({} if self.multifd_channel_timeout is None
                  else {"channel_timeout": self.multifd_channel_timeout})
        return accept_multifd(self._listener, self.config.param("multifd-channels"),
                              self.accept_timeout, **kwargs)

    def _start_multifd(self, channels: list[Any], decoder: StreamDecoder) -> None:
        listener, self._listener = self._listener, None
        self.multifd = MultifdReceive(
            channels, compression=self.config.param("multifd-compression"),
            uuid=getattr(self.guest, "uuid", None) or bytes(16),
            loader=decoder.loader, place_lock=self._place_lock,
            on_error=self._fast_load_failed, listener=listener,
            sync_timeout=self.idle_timeout)

    # ------------------------------------------------------------------ preempt
    def _start_fast_load(self) -> None:
        if self.fast_load is not None and self._preempt_channel is not None:
            self.fast_load.start(self._preempt_channel)

    def _stop_fast_load(self) -> None:
        """Stop the fault-fast thread and close the preempt channel (pause, end, quit)."""
        if self.fast_load is not None:
            self.fast_load.stop()  # joined: no failure is reported after this
        self._fast_error = None  # one the load did not see yet belongs to this channel
        channel, self._preempt_channel = self._preempt_channel, None
        if channel is not None:
            channel.shutdown()
            channel.close()

    def _fast_load_failed(self, err: Exception) -> None:
        """The fault-fast thread failed: break main, so the load pauses (or fails)."""
        self._fast_error = err
        channel = self._channel
        if channel is not None:
            channel.shutdown()

    # ------------------------------------------------------------------ loading
    def _decoder(self) -> StreamDecoder:
        caps = [c for c in ("x-ignore-shared",) if self.config.cap(c)]
        decoder = StreamDecoder(
            ram=self.guest.loadable_ram(), devices=self.guest.device_descriptions(),
            machine=self.guest.machine, capabilities=caps,
            uuid=getattr(self.guest, "uuid", None),  # vmstate_uuid_post_load: when set
            postcopy_ram=self.config.cap("postcopy-ram"), vmdesc=True,
            disks=dict(getattr(self.guest, "drives", None) or {}))  # block migration
        decoder.loader.resize = self.guest.resize_block  # resizable blocks (pc's ROM blobs)
        return decoder

    def _apply(self, event: Event) -> bool:
        """Apply one event; True once the stream is over (trailer read or input closed)."""
        if isinstance(event, RamPages):
            kinds = event.kinds
            self.pages["normal"] += int((kinds == 0x08).sum())
            self.pages["duplicate"] += int((kinds == 0x02).sum())
            self.pages["xbzrle"] += int((kinds == 0x40).sum())
            self.pages["compressed"] += int((kinds == 0x100).sum())
        elif isinstance(event, DeviceState):
            assert event.state is not None
            if event.idstr == "globalstate":
                self.runstate_received = runstate_of(event.state)
            self.guest.load_device(event.idstr, event.instance_id, event.state)
        elif isinstance(event, Command):
            self._command(event)
        elif isinstance(event, RamEos) and self.multifd is not None:
            self.multifd.sync()  # ram_load_precopy: RAM_SAVE_FLAG_EOS
        elif isinstance(event, BlockProgress):  # block.c prints it on stdout; we log it
            log.info("Completed %d %%", event.percent)
        elif isinstance(event, StreamWarning):
            log.warning("%s", event.message)
        elif isinstance(event, (VmDescription, StreamClosed)):
            return True
        return False

    def _command(self, command: Command) -> None:
        """loadvm_process_command."""
        if isinstance(command, OpenReturnPath):
            if self._rp_open:
                log.warning("CMD_OPEN_RETURN_PATH called when RP already open")
            self._rp_open = True
        elif isinstance(command, Ping):
            if not self._rp_open:
                raise RemoteProtocolError(
                    f"CMD_PING (0x{command.value:x}) received with no return path",
                    offset=command.offset)
            self._send_rp(encode_rp(Pong(command.value)))
        elif isinstance(command, (PostcopyAdvise, PostcopyRamDiscard, PostcopyListen,
                                  PostcopyRun)):
            self._postcopy_command(command)
        elif isinstance(command, RecvBitmapRequest):
            self._recv_bitmap(command)
        elif isinstance(command, PostcopyResume):
            self._postcopy_resume()
        elif not isinstance(command, Packaged):
            raise RemoteProtocolError(
                f"{command.cmd.name} is not supported by this destination",
                offset=command.offset, qemu=False)

    def _postcopy_command(self, command: Command) -> None:
        pc = self.postcopy
        assert pc is not None
        if isinstance(command, PostcopyAdvise):
            pc.advise(command)
        elif isinstance(command, PostcopyRamDiscard):
            pc.discard(command)
        elif isinstance(command, PostcopyListen):
            pc.listen(command)
            self._start_fast_load()  # postcopy_ram_incoming_setup: the fault-fast thread
            if self._channel is not None:  # a requested page should not queue behind much
                self._channel.prefer_latency()
            if pc.state is PostcopyState.LISTENING:
                self.state.set(S.ACTIVE, S.POSTCOPY_ACTIVE)
        else:
            assert isinstance(command, PostcopyRun)
            pc.run(command, lambda: self.guest.finish_incoming(self.autostart))

    def _send_rp(self, data: bytes) -> None:
        """migrate_send_rp_message: one whole message under the lock (none while paused:
        there is no return path then)."""
        with self._rp_lock:
            if self._channel is None or not self._rp_open:
                return
            self._channel.sendall(data)
            if self._record is not None and self._record[1] is not None:
                self._record[1].write(data)

    def _complete(self) -> None:
        """process_incoming_migration_bh: runstate, completed, then SHUT(0).

        When asked (`snapshot`), the page digests of the loaded memory are taken first,
        before the guest runs and changes it: they are what the runner compares with the
        source.  (It delays the guest's start by the time digesting takes.)"""
        pc = self.postcopy
        fast = self.fast_load
        if fast is not None and not fast.wait_eos(VMDESC_TIMEOUT):
            raise RemoteProtocolError(f"postcopy preempt channel: no EOS within "
                                      f"{VMDESC_TIMEOUT:.0f} s of the main stream's end "
                                      f"({fast.error or 'still reading'})", qemu=False)
        if pc is not None and pc.listening:
            def snapshot() -> None:  # what the guest found on each page at its first access
                self.loaded_digests = self.guest.arrival_digests()

            pc.end(snapshot if self.snapshot else None)
            self.finished_at = time.monotonic()
            self.state.set(S.POSTCOPY_ACTIVE, S.COMPLETED)
        else:
            if self.snapshot:
                self.loaded_digests = self.guest.digests()
            self.guest.finish_incoming(self.autostart)
            self.finished_at = time.monotonic()
            self.state.set(S.ACTIVE, S.COMPLETED)
        if self._rp_open:
            self._send_rp(encode_rp(Shut(0)))

    def _failed(self, desc: str, lines: list[str]) -> None:
        if self.state.status in (S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER):
            log.warning("postcopy stays paused: %s", desc)  # quitting: nothing fails
            return
        self.error_desc = desc
        if self.postcopy is not None:
            self.postcopy.close()
            if self.postcopy.state >= PostcopyState.RUNNING and self.guest.runstate == "running":
                # QEMU 7.2 (without recovery) exits here: the guest is lost, not half-run
                self.guest.stop("internal-error")
        for line in lines:
            print(f"harness destination: {line}", file=sys.stderr, flush=True)
        self.finished_at = time.monotonic()
        if self._rp_open:
            try:
                self._send_rp(encode_rp(Shut(1)))
            except OSError:
                pass
        self.state.move(S.FAILED)

    # ------------------------------------------------------------------ events
    def _status_changed(self, change: Any) -> None:
        if self.config.cap("events"):
            self._emit("MIGRATION", {"status": str(change.new)})


def _continue_decoder(old: StreamDecoder) -> StreamDecoder:
    """qemu_loadvm_state_main's `retry` on the recovered channel: the codec's successor
    (known sections, no header or configuration; a record cut by the break is dropped)
    with the very same RAM loader, whose present bitmap, placement hook and counters
    the postcopy state shares."""
    new = old.successor()
    new.loader = old.loader
    old.loader.need = 0
    return new
