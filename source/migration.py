"""The outgoing migration: QEMU's `qmp_migrate`, `migrate_fd_connect` and `migration_thread`.

Strategy: one `OutgoingMigration` per source peer, mirroring QEMU 7.2's
`migration/migration.c` step by step.  `migrate()` checks what `qmp_migrate` checks
(a migration in progress, blockers, the URI), moves none -> setup and starts the
migration thread, which connects, writes the header, configuration and RAM setup,
goes active, then loops: while not rate limited (max-bandwidth per 100 ms window) it
either iterates (a PART of dirty pages) or, once pending <= threshold (bandwidth x
downtime-limit), completes: stop the guest, final bitmap sync, END with every remaining
page, device state, EOF, VM description; then completed (and postmigrate) or failed.
Counters are updated per window like `migration_update_counters`.  Every blocking
point can be woken: `migrate_cancel` shuts the channel down and sets an event the
thread sleeps on.  A failure or cancel restarts the guest if it was running and
postcopy was not entered.  The thread never dies silently: its exception becomes the
`failed` status with an error-desc.

Postcopy recovery (QEMU 7.2's `migration_detect_error` -> `postcopy_pause`): in
postcopy-active an I/O failure -- a send that fails, the return path failing or ending
before SHUT, `migrate-pause` shutting the channel down -- does not fail the migration:
the broken channel and its return-path reader are released, requests are queued, the
status becomes postcopy-paused (error-desc says why) and the thread waits, without a
deadline but woken by `migrate_cancel`, for `migrate resume=true`.  It then connects
(a refused connect leaves it paused: 7.2 has no postcopy-recover-setup), goes
postcopy-recover, starts a return-path reader on the new channel and runs the handshake
(recovery.py); RESUME_ACK makes it postcopy-active and the push carries on, PART after
PART, until END/EOF/SHUT as before.  Any failure during the recovery goes back to
postcopy-paused, and the user may try again.  The guest stays stopped here throughout:
it runs on the destination only.  A protocol error (a bad page request, SHUT(1)) still
fails the migration.

Pause before switchover (QEMU 7.2's `migration_maybe_pause`, called from
`migration_completion` and `postcopy_start`): with the capability on, once the guest is
stopped for the switch the status goes pre-switchover and the thread waits -- without a
deadline, as QEMU's semaphore, but woken by `migrate_cancel` -- for `migrate-continue`
(`qmp_migrate_continue`: refused unless the status is the one named); it then goes on to
device (precopy) or postcopy-active.  A cancel during the pause fails the compare-and-swap
and the migration ends cancelled with the guest restarted.

TLS is the connector's (source/main.py: harness.transport.tls, every channel);
`x-ignore-shared` sends each block's guest-physical address in the block list
(`ram_save_setup`) and skips no block, as none of the harness's RAM is shared (QEMU skips
only `qemu_ram_is_shared` blocks: `ramblock_is_ignored`); `validate-uuid` sends the
peer's `--uuid` (all zeros without one, as QEMU's unset `qemu_uuid`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.migration.config import (
    MIGRATION_ACTIVE,
    MigrationConfig,
    multifd_uri_refusal,
    not_implemented,
    preempt_uri_refusal,
    tls_refusal,
)
from harness.migration.status import (
    MIGRATE_PAUSE_REFUSED,
    MIGRATE_RESUME_REFUSED,
    RUNNING,
    MigrationStatus,
    StatusMachine,
    continue_refusal,
    source_machine,
)
from harness.protocol import OpenReturnPath, Ping, PostcopyAdvise
from harness.protocol.ram_saver import PAGE
from harness.protocol.return_path import ResumeAck, RpMessage

from .block_save import BlockSave, apply_migrate_options, block_save_of, remove_migrate_options
from .convergence import Convergence
from .interfaces import Channel, Connector, GuestLike
from .multifd import open_multifd
from .postcopy import PostcopySource
from .ram_save import BATCH_PAGES, RamSave
from .recovery import RecoveryInbox, resume_handshake, resume_prepare
from .return_path import ReturnPathError, ReturnPathReader
from .stream import OutgoingStream

log = logging.getLogger(__name__)
S = MigrationStatus

RETURN_PATH_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0


class MigrationError(Exception):
    """A refused QMP command (GenericError), in QEMU's words."""


class _PostcopyStartFailed(RuntimeError):
    """postcopy_start failed: 7.2 fails the migration (it pauses only afterwards)."""


@dataclass
class Timing:
    start: float = 0.0  # time.monotonic() of `migrate`
    setup_time: float = 0.0
    downtime_start: float = 0.0
    end: float = 0.0
    total_time: float = 0.0
    downtime: float = 0.0


class OutgoingMigration:
    """The source side of one peer: status, statistics and the migration thread."""

    def __init__(self, guest: GuestLike, config: MigrationConfig, connect: Connector,
                 emit: Callable[[str, dict[str, Any]], None]) -> None:
        self.guest = guest
        self.config = config
        self._connect = connect
        self._emit = emit
        self.state: StatusMachine = source_machine()
        self.state.on_change(self._status_changed)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # set by cancel: every wait ends
        self._urgent = threading.Event()  # ends the rate-limit wait early: cancel, RP end
        self.record_dir: Path | None = None  # save the return path (stream.rp.bin)
        self._resume = threading.Condition()  # postcopy_pause_sem: `migrate resume`, cancel
        self._resume_uri: str | None = None
        self._inbox = RecoveryInbox(RETURN_PATH_TIMEOUT)
        self._continue = threading.Event()  # pause_sem: migrate-continue, cancel
        self._block_options = False  # `migrate` blk/inc set `block` for this migration
        self._reset()

    def _reset(self) -> None:
        self.timing = Timing()
        self.ram: RamSave | None = None
        self.block: BlockSave | None = None  # block migration (block_save.py)
        self.convergence: Convergence | None = None  # xbzrle, compress, auto-converge
        self.error_desc: str | None = None
        self.stream: OutgoingStream | None = None  # every byte sent goes through it
        self._rp: ReturnPathReader | None = None
        self.vm_was_running = False
        self.entered_postcopy = False
        self._final_mbps: float | None = None  # over the whole migration, once completed
        self._wake.clear()
        self._urgent.clear()
        self.postcopy: PostcopySource | None = None
        self.postcopy_requested = False
        self._resume_uri = None

    # ------------------------------------------------------------------ QMP
    def migrate(self, uri: str, blk: bool = False, inc: bool = False) -> None:
        """qmp_migrate: checks, then none/completed/failed/cancelled -> setup, thread."""
        if self.state.status in RUNNING:
            raise MigrationError(MIGRATION_ACTIVE)
        blockers = self.guest.unmigratable_devices()
        if blockers:
            raise MigrationError(f"State blocked by non-migratable device '{blockers[0]}'")
        self._check_uri(uri)
        if self.config.cap("postcopy-ram") and getattr(self.guest, "device_replay", None):
            raise MigrationError(not_implemented("postcopy with --replay-devices"))
        try:
            self._block_options = apply_migrate_options(self.config, blk, inc)
        except ValueError as err:
            raise MigrationError(str(err)) from None
        self._reset()
        self.timing.start = time.monotonic()
        self.state.move(S.SETUP)
        self._thread = threading.Thread(target=self._thread_main, args=(uri,),
                                        name="migration", daemon=True)
        self._thread.start()

    def start_postcopy(self) -> None:
        """qmp_migrate_start_postcopy: only sets a flag the migration thread acts on."""
        if not self.config.cap("postcopy-ram"):
            raise MigrationError("Enable postcopy with migrate_set_capability before the "
                                 "start of migration")
        if self.state.status is S.NONE:
            raise MigrationError("Postcopy must be started after migration has been started")
        self.postcopy_requested = True  # no error even if finished: that would be racy

    def resume(self, uri: str) -> None:
        """qmp_migrate with resume=true (migrate_prepare's checks): the paused migration
        thread connects to `uri` and recovers (migrate_fd_connect, postcopy_do_resume)."""
        if self.state.status is not S.POSTCOPY_PAUSED:
            raise MigrationError(MIGRATE_RESUME_REFUSED)
        if self.config.cap("release-ram"):
            raise MigrationError("Postcopy recovery cannot work when release-ram "
                                 "capability is set")
        if self.stream is not None and self.stream.multifd is not None:  # closed at the pause
            raise MigrationError(not_implemented("postcopy recovery with multifd"))
        self._check_uri(uri)
        with self._resume:
            self._resume_uri = uri
            self._resume.notify_all()

    def migrate_continue(self, state: str) -> None:
        """qmp_migrate_continue: wake the pre-switchover pause if `state` is the status."""
        refusal = continue_refusal(state, str(self.state.status))
        if refusal:
            raise MigrationError(refusal)
        self._continue.set()

    def pause(self) -> None:
        """qmp_migrate_pause on the source: shut the channel down; the migration thread
        sees the failure and pauses (7.2 accepts it in postcopy-active only)."""
        if self.state.status is not S.POSTCOPY_ACTIVE:
            raise MigrationError(MIGRATE_PAUSE_REFUSED)
        stream = self.stream
        if stream is not None:
            stream.channel.shutdown()  # qmp_migrate_pause: the main channel

    def cancel(self) -> None:
        """migrate_fd_cancel: running states -> cancelling, then wake everything up.

        `migration_is_running` includes postcopy-active, -paused and -recover, so 7.2
        cancels there too.  After the switch the guest is not restarted: QEMU 7.2 sets
        `vm_was_running` only in `migration_completion`'s precopy path, so
        `migration_iteration_finish` moves finish-migrate to postmigrate instead of
        calling `vm_start` (here it is cleared as the package goes out).  The
        destination sees its stream break and, running the guest, goes postcopy-paused
        -- where it stays, as nothing is left to recover it.  7.2's `migrate_fd_cancel`
        kicks only the pre-switchover pause; we also wake a postcopy-paused or
        -recovering thread, so that the cancel always ends in cancelled."""
        while True:
            old = self.state.status
            if old not in RUNNING or old is S.CANCELLING:
                break
            if self.state.set(old, S.CANCELLING):
                break
        if self.state.status is S.CANCELLING:
            self._wake.set()
            self._urgent.set()
            self._continue.set()  # migrate_fd_cancel posts pause_sem
            with self._resume:
                self._resume.notify_all()
            self._inbox.close()
            if self._rp is not None:
                self._rp.shutdown()
            if self.stream is not None:
                self.stream.shutdown()

    def query(self) -> dict[str, Any]:
        """query-migrate, as QEMU 7.2 fills MigrationInfo for the source."""
        status = self.state.status
        if status is S.NONE:
            return {}
        info: dict[str, Any] = {"status": str(status)}
        now = time.monotonic()
        if status in (S.ACTIVE, S.CANCELLING, S.POSTCOPY_ACTIVE, S.COMPLETED,
                      S.PRE_SWITCHOVER, S.DEVICE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER):
            info["ram"] = self._ram_info(status)
            if self.convergence is not None:
                info.update(self.convergence.info())
        if status in (S.SETUP, S.ACTIVE, S.CANCELLING, S.POSTCOPY_ACTIVE, S.PRE_SWITCHOVER,
                      S.DEVICE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER):
            info["total-time"] = int((now - self.timing.start) * 1000)
            info["setup-time"] = int(self.timing.setup_time * 1000)
            if status is S.ACTIVE:
                expected = self.stream.rate.expected_downtime if self.stream else 0.0
                info["expected-downtime"] = int(expected * 1000)
        if status is S.COMPLETED:
            info["total-time"] = int(self.timing.total_time * 1000)
            info["downtime"] = int(self.timing.downtime * 1000)
            info["setup-time"] = int(self.timing.setup_time * 1000)
        if self.entered_postcopy and status is not S.COMPLETED:
            info["downtime"] = int(self.timing.downtime * 1000)
        if self.block is not None:  # B6: `disk` only while active; x-block the harness's own
            info.update(self.block.info(active=status is S.ACTIVE))
        if self.postcopy is not None:
            info["x-postcopy"] = self.postcopy.stats()
        if self._rp is not None:
            info["x-return-path"] = {"pongs": list(self._rp.pongs), "shut": self._rp.shut}
        if self.stream is not None and self.stream.multifd is not None:
            info["x-multifd"] = self.stream.multifd.stats()
        if self.error_desc:
            info["error-desc"] = self.error_desc
        return info

    def _ram_info(self, status: MigrationStatus) -> dict[str, Any]:
        ram = self.ram
        if ram is None:
            return {}
        st = ram.stats
        done = status is S.COMPLETED
        return {
            "transferred": self.stream.total if self.stream else 0,
            "remaining": 0 if done else ram.remaining(),
            "total": ram.total,
            "duplicate": st.duplicate,
            "skipped": 0,
            "normal": st.normal,
            "normal-bytes": st.normal * PAGE,
            "dirty-pages-rate": 0 if done else st.dirty_pages_rate,
            "mbps": round(self.mbps(), 6),
            "dirty-sync-count": st.dirty_sync_count,
            "postcopy-requests": self.postcopy.requests if self.postcopy else 0,
            "page-size": PAGE,
            "precopy-bytes": st.precopy_bytes,
            "downtime-bytes": st.downtime_bytes,
            "postcopy-bytes": (self.stream.pushed + self.stream.urgent_bytes
                               if self.postcopy and self.stream else 0),
            "multifd-bytes": self.stream.multifd_bytes if self.stream else 0,
            "pages-per-second": 0,
            "dirty-sync-missed-zero-copy": 0,
        }

    def mbps(self) -> float:
        """The last window's rate, or the whole migration's once completed."""
        if self._final_mbps is not None:
            return self._final_mbps
        return self.stream.rate.mbps if self.stream else 0.0

    def join(self, timeout: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ thread
    def _check_uri(self, uri: str) -> None:
        from harness.transport import UriError, parse_uri

        try:
            parse_uri(uri, "source")
        except UriError as err:
            raise MigrationError(str(err)) from None

    def _thread_main(self, uri: str) -> None:
        try:
            self._run(uri)
        except Exception as err:  # the thread never dies silently
            if self.state.status is not S.CANCELLING:
                log.warning("migration failed: %s", err, exc_info=not _expected(err))
                self.error_desc = self.error_desc or _describe(err)
            self._fail_or_cancel()
        finally:
            self._cleanup()

    def _run(self, uri: str) -> None:
        channel = self._connect(uri, CONNECT_TIMEOUT)
        stream = self.stream = OutgoingStream(channel, self.config, self.ram_section_id,
                                              self._wake)
        if self.state.status is S.CANCELLING:  # cancelled while connecting
            return
        # migration_channel_connect: the TLS handshake needs the creds object;
        # migrate_fd_connect -> postcopy_preempt_setup: a second channel needs a socket
        refusal = (tls_refusal(self.config.parameters)
                   or preempt_uri_refusal(self.config.capabilities, uri)
                   or multifd_uri_refusal(self.config.capabilities, uri))
        if refusal:
            self.error_desc = refusal
            raise ConnectionRefusedError(refusal)
        stream.attach(channel, self._connect_preempt(uri))
        stream.multifd = open_multifd(  # multifd_save_setup, after main (M1)
            self.config, lambda: self._connect(uri, CONNECT_TIMEOUT),
            getattr(self.guest, "uuid", None) or bytes(16), self._wake, self._multifd_failed)
        ram = RamSave(self.guest_ram(), self.guest.harvest_dirty,
                      holes=getattr(self.guest, "ram_holes", None))
        self.ram = ram
        self.block = block_save_of(self.config, self.guest)
        self.convergence = Convergence.attach(ram, self.config, self.guest,
                                              lambda: stream.total,
                                              lambda: self.entered_postcopy)
        self._setup(ram, channel)
        while self.state.status in (S.ACTIVE, S.POSTCOPY_ACTIVE):
            try:
                if self._step(ram):
                    break
            except Exception as err:
                if not self._pausable(err):
                    raise
                if not self._postcopy_pause(err):
                    return  # cancelled while paused or recovering

    def _step(self, ram: RamSave) -> bool:
        """One turn of migration_thread's loop; True once the migration is over."""
        self._check_return_path(broken_only=True)
        stream = self.stream
        assert stream is not None
        if not stream.rate_limited() and self._iteration(ram):
            return True
        stream.update_counters(ram)
        if self.state.status in (S.ACTIVE, S.POSTCOPY_ACTIVE):
            stream.wait_window(self._urgent)  # migration_rate_limit
        return False

    def _connect_preempt(self, uri: str) -> Channel | None:
        """postcopy_preempt_setup: the preempt channel, right after the main one (7.2
        opens it at the start of the migration, not at the switch)."""
        if not self.config.cap("postcopy-preempt"):
            return None
        return self._connect(uri, CONNECT_TIMEOUT)

    def _multifd_failed(self, text: str) -> None:
        """From a multifd channel's thread as it fails: the migration fails with its
        words (multifd_send_terminate_threads), and main is shut down so that a send
        blocked on it ends now."""
        if self.state.status is S.CANCELLING:
            return
        self.error_desc = self.error_desc or text
        stream = self.stream
        if stream is not None:
            stream.channel.shutdown()

    def _check_return_path(self, broken_only: bool = False) -> None:
        """An I/O failure of the return path is a file error now (postcopy pauses); any
        other error -- a bad message, SHUT(1) -- only marks it bad, and fails the
        migration at completion, as QEMU 7.2's mark_source_rp_bad does (meanwhile a
        destination that failed and closed makes the stream itself fail)."""
        rp = self._rp
        if rp is None or not rp.error:
            return
        if rp.broken:
            raise ConnectionAbortedError(rp.error)  # an I/O failure: postcopy pauses
        if not broken_only:
            raise RuntimeError(rp.error)

    def _pausable(self, err: Exception) -> bool:
        """migration_detect_error: in postcopy-active a file error pauses."""
        return (self.state.status is S.POSTCOPY_ACTIVE and isinstance(err, OSError)
                and self.config.cap("postcopy-ram"))

    def guest_ram(self) -> Mapping[str, Any]:
        return self.guest.ram

    def _start_return_path(self, channel: Channel, record: bool) -> ReturnPathReader:
        """open_return_path_on_source: a reader thread on `channel`."""
        on_request = self.postcopy.on_request if self.postcopy else None
        recording = ((self.record_dir / "stream.rp.bin").open("wb")
                     if record and self.record_dir is not None else None)
        self._rp = ReturnPathReader(channel, self._emit_rp, on_request, recording,
                                    on_recovery=self._on_recovery, on_end=self._rp_ended)
        self._rp.start()
        return self._rp

    def _setup(self, ram: RamSave, channel: Channel) -> None:
        """qemu_savevm_state_header + qemu_savevm_state_setup, then setup -> active."""
        assert self.stream is not None
        enc = self.stream.encoder
        out = bytearray(enc.header())
        out += enc.configuration(self.guest.machine, self._validated_caps(), self._uuid())
        postcopy = self.config.cap("postcopy-ram")
        if postcopy:
            self.postcopy = PostcopySource(ram)
        if self.config.cap("return-path") or postcopy:
            self._start_return_path(channel, record=True)
            out += enc.command(OpenReturnPath()) + enc.command(Ping(1))
        if postcopy:
            out += enc.command(PostcopyAdvise(PAGE, PAGE))
        ram.bitmap_sync()  # ram_init_bitmaps: the first sync (pass 1)
        self._pass_event(ram)
        if self.block is not None:  # block registers before ram: its sections go first
            out += self.block.setup_section(enc)
        out += enc.ram_start(self.ram_section_id, self._block_list(ram))
        self.stream.sync_multifd()  # ram_save_setup: before its EOS
        self.stream.write(out)
        self.timing.setup_time = time.monotonic() - self.timing.start
        self.stream.restart_window()
        self.state.set(S.SETUP, S.ACTIVE)

    ram_section_id = 2  # as QEMU's -M none registers it

    def _validated_caps(self) -> tuple[str, ...] | None:
        caps = tuple(c for c in ("x-ignore-shared",) if self.config.cap(c))
        return caps or None

    def _uuid(self) -> bytes | None:
        """vmstate_uuid: sent with validate-uuid, all zeros when the peer has no --uuid."""
        if not self.config.cap("validate-uuid"):
            return None
        return getattr(self.guest, "uuid", None) or bytes(16)

    def _block_list(self, ram: RamSave) -> list[Any]:
        """ram_save_setup's list; with x-ignore-shared each block's guest-physical address
        follows (the blocks are laid out one after the other from 0, as -M none maps its
        one block at 0)."""
        blocks = ram.block_list()
        if not self.config.cap("x-ignore-shared"):
            return blocks
        placed, addr = [], 0
        for block in blocks:
            placed.append(dataclasses.replace(block, addr=addr))
            addr += block.used_length
        return placed

    def _maybe_pause(self, new: MigrationStatus) -> bool:
        """migration_maybe_pause: with pause-before-switchover, active -> pre-switchover,
        wait for migrate-continue (or a cancel), then pre-switchover -> `new`.  False when
        the migration was cancelled meanwhile."""
        if not self.config.cap("pause-before-switchover"):
            return True
        self._continue.clear()  # QEMU eats stale posts of the semaphore first
        if not self.state.set(S.ACTIVE, S.PRE_SWITCHOVER):
            return False
        self._continue.wait()  # no deadline, as QEMU: migrate-continue or cancel end it
        return self.state.set(S.PRE_SWITCHOVER, new)

    def _iteration(self, ram: RamSave) -> bool:
        """migration_iteration_run: True when the migration completed (or failed)."""
        if self.state.status is S.POSTCOPY_ACTIVE:
            assert self.postcopy is not None
            if ram.remaining() == 0:
                self._completion_postcopy(ram)
                return True
            assert self.stream is not None
            self.stream.push(ram)
            return False
        assert self.stream is not None
        threshold = self.stream.rate.threshold
        disk = self.block.pending() if self.block is not None else 0
        pending = ram.remaining() + disk
        if pending < threshold:
            ram.bitmap_sync()  # ram_save_pending: exact figure below the threshold
            self._pass_event(ram)
            pending = ram.remaining() + disk
        if pending and pending >= threshold:
            if self.postcopy_requested and self.postcopy is not None:
                self._postcopy_start(ram)
            else:
                self._iterate(ram)
            return False
        self._completion(ram)
        return True

    def _iterate(self, ram: RamSave) -> None:
        """One PART of `ram`: dirty pages until rate limited, none left or MAX_WAIT."""
        assert self.stream is not None
        if self.block is not None:  # block's PART first; RAM's is empty during the bulk
            sent, ram_silent = self.block.part_before_ram(self.stream, self.ram_section_id)
            ram.stats.precopy_bytes += sent
            if ram_silent:
                return
        ram.stats.precopy_bytes += self.stream.iterate(ram, BATCH_PAGES)

    # ------------------------------------------------------------------ postcopy
    def _postcopy_start(self, ram: RamSave) -> None:
        """postcopy_start: stop, last sync, discards, PING 2, package, PING 4.

        A stream error on the way fails the migration, as 7.2's postcopy_start does
        ("Migration stream errored"); only later ones pause it."""
        assert self.postcopy is not None
        if (not self.config.cap("pause-before-switchover")
                and not self.state.set(S.ACTIVE, S.POSTCOPY_ACTIVE)):
            return
        try:
            self._switch_to_postcopy(ram)
        except OSError as err:
            raise _PostcopyStartFailed(_describe(err)) from err

    def _switch_to_postcopy(self, ram: RamSave) -> None:
        assert self.postcopy is not None and self.stream is not None
        stream = self.stream
        self.timing.downtime_start = time.monotonic()
        self.vm_was_running = self.guest.runstate == "running"
        self.guest.global_state_store()
        self.guest.stop("finish-migrate")
        if not self._maybe_pause(S.POSTCOPY_ACTIVE):
            raise ConnectionAbortedError("migration cancelled before the switchover")
        ram.bitmap_sync()  # the last one: the guest is stopped
        self._pass_event(ram)
        enc = stream.encoder
        out = bytearray()
        for command in self.postcopy.discards():
            out += enc.command(command)
        ram.saver.reset()  # QEMU forgets the last block sent at the switch
        ram.reset_scan()
        out += enc.command(Ping(2))
        out += self.postcopy.package(enc, list(self.guest.save_devices()))
        self.entered_postcopy = True
        # 7.2 sets vm_was_running only for a precopy completion: from the package on, no
        # failure or cancel may restart the source's copy of the guest
        self.vm_was_running = False
        stream.prefer_latency()  # a requested page waits behind little
        stream.rate.postcopy = True  # max-postcopy-bandwidth from now on
        stream.write(out)
        self.timing.downtime = time.monotonic() - self.timing.downtime_start
        stream.write(enc.command(Ping(4)))
        self.postcopy.serve_with(self._serve_request)  # requests go out from now on
        stream.restart_window()

    def _completion_postcopy(self, ram: RamSave) -> None:
        """migration_completion in postcopy: END (nothing left), EOF (and EOS on the
        preempt channel), then wait for SHUT."""
        assert self.stream is not None
        self.stream.end_postcopy()
        self._await_return_path()
        if not self.state.set(S.POSTCOPY_ACTIVE, S.COMPLETED):
            return
        self._finished()

    def _finished(self) -> None:
        """Completed: the timings and the rate over the whole migration."""
        assert self.stream is not None
        now = time.monotonic()
        self.timing.end = now
        self.timing.total_time = now - self.timing.start
        self._final_mbps = self.stream.total * 8 / max(self.timing.total_time, 1e-9) / 1e6
        self.guest.runstate = "postmigrate"

    def _serve_request(self, block: str, start: int, length: int) -> bool:
        """From the return-path thread: a requested page goes out now."""
        assert self.stream is not None and self.ram is not None
        return self.stream.send_urgent(self.ram, block, start, length)

    def _completion(self, ram: RamSave) -> None:
        """migration_completion (precopy): stop, last sync, END, devices, EOF, trailer."""
        self.timing.downtime_start = time.monotonic()
        self.vm_was_running = self.guest.runstate == "running"
        self.guest.global_state_store()
        self.guest.stop("finish-migrate")
        if not self._maybe_pause(S.DEVICE):
            raise ConnectionAbortedError("migration cancelled before the switchover")
        ram.bitmap_sync()
        self._pass_event(ram)
        stream = self.stream
        assert stream is not None
        enc, start = stream.encoder, stream.total
        if self.convergence is not None:
            self.convergence.last_stage = True
        if self.block is not None:
            self.block.complete(enc, stream.write)
        stream.send_remaining(ram)
        replay = getattr(self.guest, "device_replay", None)  # a QEMU's: harness/qemu/replay.py
        out = bytearray(replay.device_sections if replay else b"")
        for section_id, idstr, instance_id, vmsd, values in self.guest.save_devices():
            out += enc.device(section_id, idstr, instance_id, vmsd, values)
        out += enc.eof() + (replay.trailer if replay else enc.vmdesc())
        stream.write(out)
        ram.stats.downtime_bytes += stream.total - start
        if self._rp is not None:
            self._await_return_path()
        if not self.state.set(self.state.status if self.state.status is S.DEVICE else S.ACTIVE,
                              S.COMPLETED):
            return
        self._finished()
        self.timing.downtime = self.timing.end - self.timing.downtime_start

    def _await_return_path(self) -> None:
        """await_return_path_close_on_source: wait for SHUT (or the channel closing).
        No SHUT in time, or the channel failing first, pauses a postcopy migration."""
        assert self._rp is not None
        if not self._rp.wait_closed(RETURN_PATH_TIMEOUT):
            raise TimeoutError(f"the destination did not close the return path within "
                               f"{RETURN_PATH_TIMEOUT:.0f} s")
        self._check_return_path()

    # ------------------------------------------------------------------ recovery
    def _postcopy_pause(self, err: Exception) -> bool:
        """postcopy_pause: paused until a recovery succeeds (True) or a cancel (False)."""
        self._enter_pause(err)
        while self.state.status is S.POSTCOPY_PAUSED:
            uri = self._wait_for_resume()
            if uri is None:
                break
            try:
                self._postcopy_recover(uri)
                return True
            except Exception as failure:  # "Pause is always better than throwing data away"
                if self.state.status is S.CANCELLING:
                    break
                if not _expected(failure):
                    log.exception("postcopy recovery failed")
                self._enter_pause(failure)
        return False

    def _enter_pause(self, err: Exception) -> None:
        """Release the broken channel and its return path; postcopy-active or -recover
        -> postcopy-paused ("Detected IO failure for postcopy. Migration paused.")."""
        self.error_desc = _describe(err)
        log.warning("Detected IO failure for postcopy. Migration paused. (%s)", err)
        if self.postcopy is not None:
            self.postcopy.hold()  # requests wait for the new channel
        rp, stream = self._rp, self.stream
        if rp is not None:
            rp.shutdown()
        if stream is not None:
            stream.shutdown()
        if rp is not None:
            rp.join(5.0)
        if stream is not None:
            stream.close()  # both channels: a recovery opens two new ones
        old = self.state.status
        if old in (S.POSTCOPY_ACTIVE, S.POSTCOPY_RECOVER):
            self.state.set(old, S.POSTCOPY_PAUSED)

    def _wait_for_resume(self) -> str | None:
        """The URI of `migrate resume=true`; None once cancelled (no deadline: a paused
        migration waits for its user, but a cancel or quit always wakes it)."""
        with self._resume:
            while self._resume_uri is None and self.state.status is S.POSTCOPY_PAUSED:
                self._resume.wait()
            uri, self._resume_uri = self._resume_uri, None
        return uri if self.state.status is S.POSTCOPY_PAUSED else None

    def _postcopy_recover(self, uri: str) -> None:
        """migrate_fd_connect (resume) + postcopy_do_resume, on a new channel."""
        stream = self.stream
        assert stream is not None and self.ram is not None and self.postcopy is not None
        channel = self._connect(uri, CONNECT_TIMEOUT)  # refused: we stay paused
        try:
            preempt = self._connect_preempt(uri)  # 7.2: main, then preempt, in that order
        except BaseException:
            channel.close()
            raise
        stream.attach(channel, preempt)  # `transferred` carries on
        if not self.state.set(S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER):
            raise ConnectionAbortedError("cancelled while connecting")
        self._inbox = RecoveryInbox(RETURN_PATH_TIMEOUT)
        rp = self._start_return_path(channel, record=False)

        def why_closed() -> str:
            return rp.error or "postcopy recovery: the return path ended"

        resume_prepare(stream.write, stream.encoder, self.ram, self._inbox, why_closed)
        resume_handshake(stream.write, stream.encoder, self._inbox, why_closed)
        if not self.state.set(S.POSTCOPY_RECOVER, S.POSTCOPY_ACTIVE):
            raise ConnectionAbortedError("cancelled during the recovery handshake")
        self.error_desc = None
        stream.prefer_latency()
        stream.restart_window()
        self.postcopy.serve_with(self._serve_request)

    def _on_recovery(self, message: RpMessage) -> None:
        """From the return-path thread: RECV_BITMAP / RESUME_ACK for the handshake.
        A bitmap outside postcopy-recover is refused (ram_dirty_bitmap_reload); a stray
        RESUME_ACK does nothing, as 7.2's compare-and-swap from postcopy-recover."""
        status = self.state.status
        if status is S.POSTCOPY_RECOVER:
            self._inbox.put(message)
        elif not isinstance(message, ResumeAck):
            raise ReturnPathError(f"ram_dirty_bitmap_reload: incorrect state {status}")

    def _rp_ended(self, reader: ReturnPathReader) -> None:
        """From the return-path thread as it ends: wake whoever waits for it."""
        if reader is not self._rp:
            return
        self._inbox.close()
        self._urgent.set()
        stream = self.stream
        if reader.broken and self.state.status is S.POSTCOPY_ACTIVE and stream is not None:
            stream.shutdown()  # a send blocked on a dead peer fails now: pause

    # ------------------------------------------------------------------ endings
    def _fail_or_cancel(self) -> None:
        status = self.state.status
        if status in (S.ACTIVE, S.SETUP, S.POSTCOPY_ACTIVE, S.PRE_SWITCHOVER, S.DEVICE):
            self.state.set(status, S.FAILED)

    def _cleanup(self) -> None:
        """migration_iteration_finish + migrate_fd_cleanup.

        After the switch to postcopy the guest is never restarted here, whether the
        migration failed or was cancelled (7.2 leaves `vm_was_running` unset after the
        switch): its only valid copy runs on the destination."""
        if self.convergence is not None:
            self.convergence.close()  # the throttle ends, the compress threads too
        status = self.state.status
        if status in (S.FAILED, S.CANCELLING, S.CANCELLED):
            if self.vm_was_running and not self.entered_postcopy:
                self.guest.cont()
            elif self.guest.runstate == "finish-migrate":
                self.guest.runstate = "postmigrate"
        if self._rp is not None:
            self._rp.shutdown()
        if self.stream is not None:
            self.stream.close()
        if self._rp is not None:
            self._rp.join(5.0)
        if self._block_options:
            self._block_options = False
            remove_migrate_options(self.config)
        if self.state.status is S.CANCELLING:
            self.state.set(S.CANCELLING, S.CANCELLED)

    # ------------------------------------------------------------------ events
    def _status_changed(self, change: Any) -> None:
        if self.config.cap("events"):
            self._emit("MIGRATION", {"status": str(change.new)})

    def _pass_event(self, ram: RamSave) -> None:
        if self.config.cap("events"):
            self._emit("MIGRATION_PASS", {"pass": ram.stats.dirty_sync_count})

    def _emit_rp(self, name: str, data: dict[str, Any]) -> None:
        self._emit(name, data)


#: socket buffer during postcopy: what a requested page may queue behind
def _expected(err: Exception) -> bool:
    return isinstance(err, (OSError, RuntimeError, TimeoutError))


def _describe(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text
