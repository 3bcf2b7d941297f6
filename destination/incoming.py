"""The incoming migration: QEMU's `qmp_migrate_incoming` and `process_incoming_migration_co`.

Strategy: `migrate_incoming(uri)` listens (none -> setup) and a thread accepts the one main
connection (setup -> active) and runs the load: bytes go from the channel straight into
the codec's `StreamDecoder` buffer (`receive_into`), which places pages in the guest's
shared-memory RAM and checks everything QEMU's loader checks.  Events are applied as
QEMU applies them: device state into the guest, OPEN_RETURN_PATH opens the reply
direction of the same channel, PING answers PONG.  After EOF and the VM description the
guest takes the runstate the source stored (running -> it starts, unless autostart is off),
the status becomes completed and the return path gets SHUT(0).  Any error — a malformed
stream, a source that vanishes, a deadline — makes the status failed with QEMU's words and
the byte offset in `error-desc`, sends SHUT(1) when it can, and never starts the guest.
Postcopy commands are handed to `postcopy` (the next issue); until then they fail cleanly.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from harness.migration.config import MigrationConfig
from harness.migration.status import MigrationStatus, StatusMachine, destination_machine
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
    PostcopyRun,
    ProtocolError,
    RamPages,
    RemoteProtocolError,
    Shut,
    StreamClosed,
    StreamDecoder,
    StreamWarning,
    VmDescription,
    encode_rp,
)
from harness.protocol.devices import runstate_of

from .postcopy import PostcopyIncoming, PostcopyState

log = logging.getLogger(__name__)
S = MigrationStatus

RECV_SIZE = 1 << 20
ACCEPT_TIMEOUT = 600.0  # waiting for the source to connect
IDLE_TIMEOUT = 300.0  # no byte from the source for this long -> failed
VMDESC_TIMEOUT = 10.0  # after EOF, how long the trailer (or the close) may take


class IncomingError(Exception):
    """A refused QMP command (GenericError), in QEMU's words."""


class Listener(Protocol):
    def accept(self, timeout: float | None = None) -> Any: ...
    def close(self) -> None: ...


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
        self.postcopy: PostcopyIncoming | None = None
        self._rp_lock = threading.Lock()  # the load loop and the fault thread both reply
        self.record_dir: Path | None = None  # save both directions for `harness analyze`
        self.record_return_path = True  # False: the source records what it receives
        self._record: tuple[BinaryIO, BinaryIO | None] | None = None
        self.started_at = 0.0
        self.finished_at = 0.0

    # ------------------------------------------------------------------ QMP
    def migrate_incoming(self, uri: str) -> None:
        from harness.transport import UriError, parse_uri

        if self.state.status is not S.NONE:
            raise IncomingError("The incoming migration has already been started")
        try:
            parse_uri(uri, "destination")
        except UriError as err:
            raise IncomingError(str(err)) from None
        listener = self._listen(uri)
        self._listener = listener
        address = getattr(listener, "socket_address", None)
        if address is not None:
            self.socket_address = [address] if isinstance(address, dict) else list(address)
        self.guest.runstate = "inmigrate"
        self.state.set(S.NONE, S.SETUP)
        self._thread = threading.Thread(target=self._thread_main, name="incoming", daemon=True)
        self._thread.start()

    def query(self) -> dict[str, Any]:
        status = self.state.status
        if status is S.NONE:
            return {}
        info: dict[str, Any] = {"status": str(status)}
        if status is S.SETUP and self.socket_address:
            info["socket-address"] = self.socket_address
        if status is not S.SETUP:
            info["ram"] = {"transferred": self.received, "normal": self.pages["normal"],
                           "duplicate": self.pages["duplicate"],
                           "normal-bytes": self.pages["normal"] * 4096}
            end = self.finished_at or time.monotonic()
            info["total-time"] = int((end - self.started_at) * 1000)
            if self.postcopy is not None and self.postcopy.state >= PostcopyState.LISTENING:
                blocked = self.guest.postcopy_stats()
                info["postcopy-blocktime"] = blocked["blocked-ns"] // 1_000_000
                info["x-postcopy"] = self.postcopy.stats()
        if self.error_desc:
            info["error-desc"] = self.error_desc
        return info

    def close(self) -> None:
        """Stop listening/loading (the peer is quitting)."""
        self._stopping = True
        if self.postcopy is not None:
            self.postcopy.close()
        if self._listener is not None:
            self._listener.close()
        if self._channel is not None:
            self._channel.shutdown()
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
            with self._rp_lock:
                files, self._record = self._record, None
            for f in files or ():
                if f is not None:
                    f.close()
            if self._channel is not None:
                self._channel.close()
            if self._listener is not None:
                self._listener.close()

    def _run(self) -> None:
        assert self._listener is not None
        channel = self._listener.accept(timeout=self.accept_timeout)
        self._channel = channel
        self._listener.close()
        self._listener = None
        self.started_at = time.monotonic()
        self.state.set(S.SETUP, S.ACTIVE)
        decoder = self._decoder()
        sock = getattr(channel, "sock", None)
        # the workload writes its page requests straight to the socket, unless this side
        # records the return path: then they pass through `_send_rp` to be saved
        direct = not (self.record_dir and self.record_return_path)
        self.postcopy = PostcopyIncoming(self.guest, self.config.cap("postcopy-ram"),
                                         self._send_rp, decoder.loader,
                                         sock.fileno() if sock is not None and direct else None)
        if hasattr(channel, "set_timeout"):
            channel.set_timeout(self.idle_timeout)
        readinto = channel.recv_into
        if self.record_dir is not None:
            rp = self.record_dir / "stream.rp.bin"
            self._record = ((self.record_dir / "stream.fwd.bin").open("wb"),
                            rp.open("wb") if self.record_return_path else None)
            forward = self._record[0]

            def readinto(view: memoryview) -> int:
                n = channel.recv_into(view)
                forward.write(view[:n])
                return n
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
            while isinstance(event := decoder.next_event(), Event):
                if isinstance(event, EndOfStream) and not event.packaged:
                    if self.postcopy.listening:  # no trailer after a postcopy stream
                        done = True
                        break
                    eof_at = time.monotonic()
                done = self._apply(event) or done
            if self.postcopy.relay_error:
                raise RuntimeError(self.postcopy.relay_error)
            if n == 0:
                break
        self._complete()

    def _decoder(self) -> StreamDecoder:
        caps = [c for c in ("x-ignore-shared",) if self.config.cap(c)]
        return StreamDecoder(
            ram=dict(self.guest.ram), devices=self.guest.device_descriptions(),
            machine=self.guest.machine, capabilities=caps,
            uuid=getattr(self.guest, "uuid", None) if self.config.cap("validate-uuid") else None,
            postcopy_ram=self.config.cap("postcopy-ram"), vmdesc=True)

    def _apply(self, event: Event) -> bool:
        """Apply one event; True once the stream is over (trailer read or input closed)."""
        if isinstance(event, RamPages):
            kinds = event.kinds
            self.pages["normal"] += int((kinds == 0x08).sum())
            self.pages["duplicate"] += int((kinds == 0x02).sum())
        elif isinstance(event, DeviceState):
            assert event.state is not None
            if event.idstr == "globalstate":
                self.runstate_received = runstate_of(event.state)
            self.guest.load_device(event.idstr, event.instance_id, event.state)
        elif isinstance(event, Command):
            self._command(event)
        elif isinstance(event, StreamWarning):
            log.warning("%s", event.message)
        elif isinstance(event, (VmDescription, StreamClosed)):
            return True
        return False

    def _command(self, command: Command) -> None:
        """loadvm_process_command (precopy part)."""
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
            if self._channel is not None:  # a requested page should not queue behind much
                self._channel.prefer_latency()
            if pc.state is PostcopyState.LISTENING:
                self.state.set(S.ACTIVE, S.POSTCOPY_ACTIVE)
        else:
            assert isinstance(command, PostcopyRun)
            pc.run(command, lambda: self.guest.finish_incoming(self.autostart))

    def _send_rp(self, data: bytes) -> None:
        if self._channel is not None and self._rp_open:
            with self._rp_lock:
                self._channel.sendall(data)
                if self._record is not None and self._record[1] is not None:
                    self._record[1].write(data)

    def _complete(self) -> None:
        """process_incoming_migration_bh: runstate, completed, then SHUT(0).

        When asked (`snapshot`), the page digests of the loaded memory are taken first,
        before the guest runs and changes it: they are what the runner compares with the
        source.  (It delays the guest's start by the time digesting takes.)"""
        pc = self.postcopy
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
