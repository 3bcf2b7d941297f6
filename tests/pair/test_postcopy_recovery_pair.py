"""Postcopy recovery, migrate-pause and cancel during postcopy, source and destination in
one process over real sockets.

The wire between them goes through `Relay`, a few lines of socket code this test owns:
cutting it is a network break (both peers see their socket end).  A relay may also cut
itself on the first bytes of a recovery (a second break during the handshake) or hold
them (a recovery that never answers).  Memory is compared as the other postcopy tests
compare it: what the destination guest found on each page at its first access (its
arrival digests) against the stopped source's digests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from destination.incoming import IncomingError, IncomingMigration
from harness.guest import WorkloadSpec
from harness.migration.config import MIGRATION_ACTIVE
from harness.migration.status import (
    MIGRATE_PAUSE_REFUSED,
    MIGRATE_RECOVER_REFUSED,
    MIGRATE_RESUME_REFUSED,
    MigrationStatus,
)
from harness.protocol import (
    OpenReturnPath,
    Ping,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    RamBlockInfo,
    StreamEncoder,
)
from harness.protocol.devices import GLOBALSTATE, TIMER, globalstate_values, timer_values
from source.migration import RETURN_PATH_TIMEOUT, MigrationError, OutgoingMigration
from tests.pair.test_precopy_pair import (
    Events,
    MiB,
    _config,
    _incoming,
    _outgoing,
    _send_raw,
    _spec,
    _wait,
)

S = MigrationStatus
SIZE = 8 * MiB
SEED = 11
RECV_BITMAP_CMD = b"\x08\x00\x0a"  # MIG_CMD_RECV_BITMAP: the first bytes of a recovery
WAIT = 30.0


class Relay:
    """A cuttable wire: accepts on `path`, connects to `target`, copies both ways.

    `cut_on`: cut (instead of forwarding) when the source's bytes contain it.
    `hold`: swallow the source's bytes (the destination never hears of them)."""

    def __init__(self, path: Path, target: Path, *, cut_on: bytes | None = None,
                 hold: bool = False) -> None:
        self.path, self.target = path, target
        self.cut_on, self.hold = cut_on, hold
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(1)
        self.socks: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.connected = threading.Event()
        self.was_cut = threading.Event()
        self.threads[0].start()

    @property
    def uri(self) -> str:
        return f"unix:{self.path}"

    def _accept(self) -> None:
        try:
            down, _ = self.server.accept()
        except OSError:
            return  # closed before anyone came
        up = socket.socket(socket.AF_UNIX)
        up.connect(str(self.target))
        self.socks += [down, up]
        for args in ((down, up, True), (up, down, False)):
            thread = threading.Thread(target=self._pump, args=args, daemon=True)
            self.threads.append(thread)
            thread.start()
        self.connected.set()

    def _pump(self, src: socket.socket, dst: socket.socket, forward: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if forward and self.cut_on is not None and self.cut_on in data:
                    self.cut()
                    return
                if not (forward and self.hold):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """The network breaks: both peers see their connection end."""
        self.was_cut.set()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        self.server.close()
        for thread in self.threads:
            thread.join(5.0)
        for sock in self.socks:
            sock.close()
        assert not any(t.is_alive() for t in self.threads), "relay thread not reaped"


class Pair:
    """A postcopy migration between a source and a destination guest, both with a
    workload, switched to postcopy at once and pushing slowly in the background."""

    def __init__(self, guests, sockdir: Path, relays: list[Relay]) -> None:
        self.sockdir, self.relays = sockdir, relays
        workload = WorkloadSpec(4 * MiB, "uniform", 0, SEED)
        self.src = guests(_spec(size=SIZE, workload=workload, seed=SEED), source=True)
        self.dst = guests(_spec(size=SIZE, workload=workload, seed=SEED), source=False)
        self.src.start()
        config = _config(postcopy_ram=True, return_path=True)
        config.set_parameters({"max-bandwidth": 8 * MiB, "max-postcopy-bandwidth": MiB},
                              running=False)
        self.out_events, self.in_events = Events(), Events()
        self.outgoing: OutgoingMigration = _outgoing(self.src, config, self.out_events)
        self.incoming: IncomingMigration = _incoming(
            self.dst, _config(postcopy_ram=True, return_path=True), self.in_events)
        self.incoming.snapshot = True

    def relay(self, name: str, target: Path, **kw) -> Relay:
        relay = Relay(self.sockdir / name, target, **kw)
        self.relays.append(relay)
        return relay

    def start(self) -> Relay:
        """migrate through a relay; returns once the guest runs on the destination."""
        path = self.sockdir / "in.sock"
        self.incoming.migrate_incoming(f"unix:{path}")
        relay = self.relay("wire.sock", path)
        self.outgoing.migrate(relay.uri)
        self.outgoing.start_postcopy()
        assert _wait(self.outgoing, {"postcopy-active", "failed"}, WAIT) == "postcopy-active"
        _until(lambda: self.dst.runstate == "running", "the guest runs on the destination")
        return relay

    def both(self, status: str) -> None:
        for migration in (self.outgoing, self.incoming):
            assert _wait(migration, {status, "failed", "completed"}, WAIT) == status, \
                migration.error_desc

    def recover(self, uri: str, via: Relay | None = None) -> None:
        self.incoming.migrate_recover(uri)
        self.outgoing.resume(via.uri if via is not None else uri)

    def finish(self) -> None:
        """Both complete; every page the destination guest found equals the source's."""
        self.both("completed")
        assert self.dst.runstate == "running" and self.src.runstate == "postmigrate"
        expected = self.src.digests()
        for name, digests in self.incoming.loaded_digests.items():
            assert np.array_equal(digests, expected[name]), f"block {name} differs"
        assert self.dst.memory.present.all()  # every page arrived
        # no page was placed over a write of the destination guest (each page is placed
        # once): every page it wrote still holds what it wrote last, per the oracle
        self.dst.stop()
        written = np.flatnonzero(self.dst.memory.version[self.dst.memory.page_slice(0)])
        assert written.size > 0
        bad = self.dst.mismatched_pages()["ram"]
        assert not np.isin(bad, written).any(), np.intersect1d(bad, written)[:8]

    def close(self) -> None:
        self.outgoing.cancel()
        self.outgoing.join(10.0)
        self.incoming.close()
        assert self.outgoing.join(0.1), "migration thread not reaped"
        thread = self.incoming._thread
        assert thread is None or not thread.is_alive(), "incoming thread not reaped"


def _until(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _statuses(events: Events) -> list[str]:
    return [d["status"] for n, d in events.items if n == "MIGRATION"]


@pytest.fixture
def pair(guests, sockdir) -> Iterator[Pair]:
    relays: list[Relay] = []
    made = Pair(guests, sockdir, relays)
    try:
        yield made
    finally:
        try:
            made.close()
        finally:
            for relay in relays:
                relay.close()


def _blocked_on_a_missing_page(pair: Pair) -> int:
    """The guest runs, blocked on a page that does not come while paused.  (A page the
    destination had read before the break may still be placed just after the pause --
    the guest moves on to its next missing page then -- so the page it stays blocked on
    for 0.3 s is the one that does not come.)"""
    dst = pair.dst

    def stays_blocked() -> bool:
        page = dst.postcopy_stats_waiting()
        time.sleep(0.3)
        return page >= 0 and dst.postcopy_stats_waiting() == page
    _until(stays_blocked, "the guest stays blocked on one missing page for 0.3 s")
    page = dst.postcopy_stats_waiting()
    assert not dst.memory.present[page]
    assert dst.runstate == "running" and dst.workload is not None and dst.workload.alive
    return page


def test_a_break_pauses_both_and_a_recovery_completes_with_identical_memory(pair):
    wire = pair.start()
    time.sleep(0.3)  # some requests served on the first channel
    before = pair.outgoing.postcopy.requests
    wire.cut()
    pair.both("postcopy-paused")
    blocked = _blocked_on_a_missing_page(pair)
    # query-migrate works while paused, on both sides, and says why
    out, inc = pair.outgoing.query(), pair.incoming.query()
    assert out["status"] == inc["status"] == "postcopy-paused"
    assert out["ram"]["postcopy-requests"] == pair.outgoing.postcopy.requests >= before
    assert "error-desc" in out and "error-desc" in inc
    assert pair.src.runstate == "finish-migrate"  # stopped: it runs on the destination
    pair.recover(f"unix:{pair.sockdir}/again.sock")
    pair.finish()
    assert pair.dst.memory.present[blocked]
    assert pair.outgoing.query()["ram"]["postcopy-requests"] >= before
    assert _statuses(pair.out_events) == ["setup", "active", "postcopy-active",
                                          "postcopy-paused", "postcopy-recover",
                                          "postcopy-active", "completed"]
    assert _statuses(pair.in_events) == ["setup", "active", "postcopy-active",
                                         "postcopy-paused", "setup", "postcopy-recover",
                                         "postcopy-active", "completed"]  # setup: 7.2's
    # qemu_start_incoming_migration announces it for migrate-recover too
    assert "error-desc" not in pair.outgoing.query()


def test_a_second_break_during_recovery_pauses_again_and_a_third_try_completes(pair):
    wire = pair.start()
    wire.cut()
    pair.both("postcopy-paused")
    target = pair.sockdir / "r1.sock"
    flaky = pair.relay("flaky.sock", target, cut_on=RECV_BITMAP_CMD)
    pair.recover(f"unix:{target}", via=flaky)
    assert flaky.was_cut.wait(WAIT)
    _until(lambda: S.POSTCOPY_RECOVER in [t.new for t in pair.outgoing.state.history],
           "the source tried")
    pair.both("postcopy-paused")
    assert pair.dst.runstate == "running"
    # a refused connection leaves the source paused, without a transition
    paused_at = len(pair.outgoing.state.history)
    pair.outgoing.resume(f"unix:{pair.sockdir}/nobody.sock")
    _until(lambda: "nobody.sock" in (pair.outgoing.error_desc or ""), "the connect fails")
    assert str(pair.outgoing.state.status) == "postcopy-paused"
    assert len(pair.outgoing.state.history) == paused_at
    pair.recover(f"unix:{pair.sockdir}/r2.sock")
    pair.finish()
    for events in (pair.out_events, pair.in_events):
        seen = _statuses(events)
        assert seen.count("postcopy-recover") == 2 and seen.count("postcopy-paused") == 2
        assert seen[-3:] == ["postcopy-recover", "postcopy-active", "completed"]
    # the destination too went back from postcopy-recover to postcopy-paused
    assert "postcopy-recover,postcopy-paused" in ",".join(_statuses(pair.in_events))


def test_migrate_pause_on_the_source_then_recover_over_tcp_port_0(pair):
    pair.start()
    pair.outgoing.pause()
    pair.both("postcopy-paused")
    pair.incoming.migrate_recover("tcp:127.0.0.1:0")
    [address] = pair.incoming.query()["socket-address"]
    assert address["type"] == "inet" and int(address["port"]) > 0  # the actual port
    pair.outgoing.resume(f"tcp:127.0.0.1:{address['port']}")
    pair.finish()


def test_migrate_pause_on_the_destination_then_recover(pair):
    pair.start()
    pair.incoming.pause()
    pair.both("postcopy-paused")
    _blocked_on_a_missing_page(pair)
    pair.recover(f"unix:{pair.sockdir}/back.sock")
    pair.finish()


def test_a_second_migrate_recover_replaces_the_first_listener(pair):
    wire = pair.start()
    wire.cut()
    pair.both("postcopy-paused")
    first = pair.sockdir / "first.sock"
    pair.incoming.migrate_recover(f"unix:{first}")
    assert first.exists()
    pair.recover(f"unix:{pair.sockdir}/second.sock")
    pair.finish()
    assert not first.exists()  # released (7.2: migration_incoming_transport_cleanup)


def test_cancel_in_postcopy_active_does_not_restart_the_source_guest(pair):
    pair.start()
    pair.outgoing.cancel()
    assert _wait(pair.outgoing, {"cancelled", "failed"}, WAIT) == "cancelled"
    assert _wait(pair.incoming, {"postcopy-paused", "failed"}, WAIT) == "postcopy-paused"
    assert pair.src.runstate == "postmigrate"  # not restarted: it runs on the destination
    assert pair.dst.runstate == "running"
    assert _statuses(pair.out_events)[-3:] == ["postcopy-active", "cancelling", "cancelled"]
    with pytest.raises(MigrationError, match=f"^{MIGRATE_RESUME_REFUSED}$"):
        pair.outgoing.resume(f"unix:{pair.sockdir}/late.sock")


def test_cancel_in_postcopy_paused_ends_cancelled_and_the_destination_stays_paused(pair):
    wire = pair.start()
    wire.cut()
    pair.both("postcopy-paused")
    pair.outgoing.cancel()
    assert _wait(pair.outgoing, {"cancelled", "failed"}, WAIT) == "cancelled"
    assert pair.src.runstate == "postmigrate"
    assert _statuses(pair.out_events)[-3:] == ["postcopy-paused", "cancelling", "cancelled"]
    time.sleep(0.2)
    assert str(pair.incoming.state.status) == "postcopy-paused"
    assert pair.dst.runstate == "running"


def test_cancel_in_postcopy_recover_wakes_the_handshake(pair):
    wire = pair.start()
    wire.cut()
    pair.both("postcopy-paused")
    target = pair.sockdir / "deaf.sock"
    deaf = pair.relay("deaf.sock.relay", target, hold=True)  # RECV_BITMAP never arrives
    pair.recover(f"unix:{target}", via=deaf)
    assert _wait(pair.outgoing, {"postcopy-recover"}, WAIT) == "postcopy-recover"
    assert _wait(pair.incoming, {"postcopy-recover"}, WAIT) == "postcopy-recover"
    out, inc = pair.outgoing.query(), pair.incoming.query()  # query-migrate works here too
    assert out["status"] == inc["status"] == "postcopy-recover"
    assert out["ram"]["total"] == SIZE and inc["ram"]["transferred"] > 0
    started = time.monotonic()
    pair.outgoing.cancel()
    handshake = RETURN_PATH_TIMEOUT  # what the recovery would wait for RECV_BITMAP
    assert _wait(pair.outgoing, {"cancelled", "failed"}, handshake / 2) == "cancelled"
    assert time.monotonic() - started < handshake / 2  # woken, not the handshake's deadline
    assert pair.src.runstate == "postmigrate"


def test_wrong_state_commands_are_refused_in_qemus_words(pair, sockdir):
    with pytest.raises(MigrationError, match=f"^{MIGRATE_PAUSE_REFUSED}$"):
        pair.outgoing.pause()  # none
    with pytest.raises(MigrationError, match=f"^{MIGRATE_RESUME_REFUSED}$"):
        pair.outgoing.resume(f"unix:{sockdir}/x.sock")
    with pytest.raises(IncomingError, match=f"^{MIGRATE_RECOVER_REFUSED}$"):
        pair.incoming.migrate_recover(f"unix:{sockdir}/x.sock")
    with pytest.raises(IncomingError, match=f"^{MIGRATE_PAUSE_REFUSED}$"):
        pair.incoming.pause()
    wire = pair.start()
    with pytest.raises(MigrationError, match=f"^{MIGRATE_RESUME_REFUSED}$"):
        pair.outgoing.resume(f"unix:{sockdir}/x.sock")  # postcopy-active
    with pytest.raises(IncomingError, match=f"^{MIGRATE_RECOVER_REFUSED}$"):
        pair.incoming.migrate_recover(f"unix:{sockdir}/x.sock")  # postcopy-active
    wire.cut()
    pair.both("postcopy-paused")
    with pytest.raises(MigrationError, match=f"^{MIGRATE_PAUSE_REFUSED}$"):
        pair.outgoing.pause()  # 7.2: postcopy-active only
    with pytest.raises(IncomingError, match=f"^{MIGRATE_PAUSE_REFUSED}$"):
        pair.incoming.pause()
    with pytest.raises(MigrationError, match=f"^{MIGRATION_ACTIVE}$"):
        pair.outgoing.migrate(f"unix:{sockdir}/x.sock")  # a new one: still running
    with pytest.raises(MigrationError, match="^Parameter 'uri' expects"):
        pair.outgoing.resume("carrier-pigeon:home")
    assert str(pair.outgoing.state.status) == "postcopy-paused"


def test_a_break_while_listening_before_run_fails_the_destination(guests, sockdir):
    """qemu_loadvm_state_main pauses only once RUNNING: before RUN the guest never ran
    here, so a break is an ordinary failure."""
    enc = StreamEncoder()
    size = MiB
    out = bytearray(enc.header() + enc.configuration("none"))
    out += enc.command(OpenReturnPath()) + enc.command(PostcopyAdvise(4096, 4096))
    out += enc.ram_start(2, [RamBlockInfo("ram", size)])
    out += enc.command(PostcopyRamDiscard("ram", ((0, 4096),)))
    blob = (enc.command(PostcopyListen())
            + enc.device(0, "timer", 0, TIMER, timer_values(), describe=False)
            + enc.device(4, "globalstate", 0, GLOBALSTATE, globalstate_values("running"),
                         describe=False)
            + enc.command(Ping(3)))  # no RUN: the destination stays LISTENING
    out += enc.packaged(blob)
    dst = guests(_spec(size=size, devices=("timer", "globalstate")), source=False)
    events = Events()
    incoming = _incoming(dst, _config(postcopy_ram=True, return_path=True), events)
    path = sockdir / "listen.sock"
    incoming.migrate_incoming(f"unix:{path}")
    sock = _send_raw(path, bytes(out), close=False)
    try:
        _until(lambda: str(incoming.state.status) == "postcopy-active", "LISTEN")
        sock.shutdown(socket.SHUT_RDWR)
        assert _wait(incoming, {"failed", "postcopy-paused"}) == "failed"
    finally:
        sock.close()
    assert dst.runstate != "running"
    assert _statuses(events) == ["setup", "active", "postcopy-active", "failed"]
