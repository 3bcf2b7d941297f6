"""Source and destination logic joined in one process over real sockets (the pair tier).

`OutgoingMigration` and `IncomingMigration` with real guests (shared memory), real
transports and real streams; what would need separate processes (the runner, the control
plane) is left out.  Bad streams are written by the codec itself or cut by a small
protocol-aware relay, never mocked.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from destination.incoming import IncomingMigration
from harness.guest import BlockSpec, GuestSpec, WorkloadSpec
from harness.migration.config import MIGRATION_ACTIVE, ConfigError, MigrationConfig
from harness.protocol.savevm import PausedStream
from harness.transport import connect, listen, parse_uri
from source.migration import MigrationError, OutgoingMigration

MiB = 1 << 20


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []

    def __call__(self, name: str, data: dict) -> None:
        self.items.append((name, data))


def _spec(size=8 * MiB, fill=0.5, devices=("timer", "globalstate", "cpu"), workload=None,
          seed=3) -> GuestSpec:
    return GuestSpec(machine="none", blocks=[BlockSpec("ram", size)], fill=fill, seed=seed,
                     workload=workload, devices=list(devices))


def _config(**caps: bool) -> MigrationConfig:
    config = MigrationConfig.default()
    config.set_capabilities([{"capability": "events", "state": True}]
                            + [{"capability": k.replace("_", "-"), "state": v}
                               for k, v in caps.items()], running=False)
    return config


def _outgoing(guest, config, events=None) -> OutgoingMigration:
    def connector(uri: str, timeout: float):
        rp = config.cap("return-path")
        return connect(parse_uri(uri, "source"), timeout=timeout, return_path=rp)
    return OutgoingMigration(guest, config, connector, events or Events())


def _incoming(guest, config, events=None) -> IncomingMigration:
    def listener(uri: str):
        return listen(parse_uri(uri, "destination"), return_path=config.cap("return-path"))
    mig = IncomingMigration(guest, config, listener, events or Events(), accept_timeout=30)
    guest.runstate = "inmigrate"
    return mig


def _wait(migration, statuses: set[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while str(migration.state.status) not in statuses:
        assert time.monotonic() < deadline, f"still {migration.state.status}"
        time.sleep(0.005)
    return str(migration.state.status)


def test_precopy_moves_memory_and_device_state(guests, sockdir):
    src = guests(_spec(workload=WorkloadSpec(8 * MiB, "uniform", 0, 3)), source=True)
    dst = guests(_spec(), source=False)
    src.start()
    out_events, in_events = Events(), Events()
    outgoing = _outgoing(src, _config(), out_events)
    incoming = _incoming(dst, _config(), in_events)
    incoming.snapshot = True
    uri = f"unix:{sockdir}/m.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    assert _wait(outgoing, {"completed", "failed"}) == "completed", outgoing.error_desc
    assert _wait(incoming, {"completed", "failed"}) == "completed", incoming.error_desc
    assert src.runstate == "postmigrate" and dst.runstate == "running"
    src_digests = src.digests()
    for name, digests in incoming.loaded_digests.items():
        assert np.array_equal(digests, src_digests[name])
    assert all(v.size == 0 for v in src.mismatched_pages().values())
    saved = {d.idstr: d.values for d in src.save_devices()}
    assert dst.device("cpu").save(dst) == saved["cpu"]  # the registers made the trip
    assert [d["status"] for n, d in out_events.items if n == "MIGRATION"] == [
        "setup", "active", "completed"]
    assert [d["pass"] for n, d in out_events.items if n == "MIGRATION_PASS"][:2] == [1, 2]
    info = outgoing.query()
    assert info["ram"]["total"] == 8 * MiB and info["ram"]["remaining"] == 0
    assert info["downtime"] <= info["total-time"]


def test_return_path_gets_pong_and_shut(guests, sockdir):
    src = guests(_spec(size=4 * MiB), source=True)
    dst = guests(_spec(size=4 * MiB), source=False)
    outgoing = _outgoing(src, _config(return_path=True))
    incoming = _incoming(dst, _config(return_path=True))
    uri = f"unix:{sockdir}/rp.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    assert _wait(outgoing, {"completed", "failed"}) == "completed", outgoing.error_desc
    assert outgoing._rp is not None
    assert outgoing._rp.pongs == [1] and outgoing._rp.shut == 0


def _send_raw(uri_path: Path, data: bytes, close: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.connect(str(uri_path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    sock.sendall(data)
    if close:
        sock.close()
    return sock


def _incoming_from_bytes(guests, sockdir, data: bytes, spec=None) -> IncomingMigration:
    dst = guests(spec or _spec(size=16 * MiB, devices=("timer", "globalstate")), source=False)
    incoming = _incoming(dst, _config())
    path = sockdir / "raw.sock"
    incoming.migrate_incoming(f"unix:{path}")
    _send_raw(path, data)
    _wait(incoming, {"completed", "failed"})
    return incoming


def _stream() -> bytes:
    ram = np.zeros(16 * MiB, dtype=np.uint8)
    ram[0x10000:0x11000] = 7
    return PausedStream(ram={"ram": ram}).encode()


def test_malformed_stream_fails_with_qemus_words_and_offset(guests, sockdir):
    data = bytearray(_stream())
    at = data.index(b"\x04\x00\x00\x00\x00\x05timer") + 11 + 8 + 24
    data[at] = 0x7F
    incoming = _incoming_from_bytes(guests, sockdir, bytes(data))
    assert str(incoming.state.status) == "failed"
    assert incoming.error_desc == f"offset {at} (0x{at:x}): Missing section footer for timer"
    assert incoming.guest.runstate == "inmigrate"  # a half-loaded guest never runs


def test_source_vanishing_mid_stream_fails_the_destination(guests, sockdir):
    data = _stream()
    cut = len(data) // 2
    incoming = _incoming_from_bytes(guests, sockdir, data[:cut])
    assert str(incoming.state.status) == "failed"
    assert "unexpected end of migration stream" in incoming.error_desc
    assert incoming.guest.runstate == "inmigrate"


def test_machine_and_block_size_checks(guests, sockdir):
    other = PausedStream(machine="pc-i440fx-7.2",
                         ram={"ram": np.zeros(16 * MiB, np.uint8)}).encode()
    incoming = _incoming_from_bytes(guests, sockdir, other)
    assert incoming.error_desc.endswith(
        "Machine type received is 'pc-i440fx-7.2' and local is 'none'")
    small = _spec(size=8 * MiB, devices=("timer", "globalstate"))
    (sockdir / "raw.sock").unlink(missing_ok=True)
    incoming = _incoming_from_bytes(guests, sockdir, _stream(), spec=small)
    assert "Size mismatch: ram: 0x1000000 != 0x800000: Invalid argument" in incoming.error_desc


def test_migrate_refusals_in_qemus_words(guests, sockdir):
    src = guests(_spec(devices=("timer", "globalstate", "blocker")), source=True)
    outgoing = _outgoing(src, _config())
    with pytest.raises(MigrationError, match="^State blocked by non-migratable device 'blocker'$"):
        outgoing.migrate(f"unix:{sockdir}/x.sock")
    plain = guests(_spec(), source=True)
    outgoing = _outgoing(plain, _config())
    with pytest.raises(MigrationError, match="^Parameter 'uri' expects a valid migration"):
        outgoing.migrate("carrier-pigeon:home")
    with pytest.raises(MigrationError, match="RDMA is not supported"):
        outgoing.migrate("rdma:127.0.0.1:4444")
    assert str(outgoing.state.status) == "none"


def test_second_migrate_and_capabilities_refused_while_running(guests, sockdir):
    src = guests(_spec(size=32 * MiB, fill=1.0), source=True)
    config = _config()
    config.set_parameters({"max-bandwidth": 8 * MiB}, running=False)  # slow: stays active
    outgoing = _outgoing(src, config)
    dst = guests(_spec(size=32 * MiB), source=False)
    incoming = _incoming(dst, _config())
    uri = f"unix:{sockdir}/slow.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    _wait(outgoing, {"active"})
    with pytest.raises(MigrationError, match=f"^{MIGRATION_ACTIVE}$"):
        outgoing.migrate(uri)
    with pytest.raises(ConfigError, match=f"^{MIGRATION_ACTIVE}$"):
        config.set_capabilities([{"capability": "xbzrle", "state": True}], running=True)
    config.set_parameters({"max-bandwidth": 1 << 30}, running=True)  # live, as in QEMU
    assert _wait(outgoing, {"completed", "failed"}) == "completed"


def test_connect_failure_fails_and_guest_keeps_running(guests, sockdir):
    src = guests(_spec(workload=WorkloadSpec(4 * MiB, "uniform", 0, 1)), source=True)
    src.start()
    outgoing = _outgoing(src, _config())
    outgoing.migrate(f"unix:{sockdir}/nobody.sock")
    assert _wait(outgoing, {"failed", "completed"}) == "failed"
    assert "Failed to connect" in outgoing.query()["error-desc"]
    assert src.runstate == "running"


class _Sink(threading.Thread):
    """A destination that reads the stream until a byte pattern, then stops reading."""

    def __init__(self, path: Path, stop_at: bytes) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(1)
        self.stop_at = stop_at
        self.seen = threading.Event()
        self.conn: socket.socket | None = None

    def run(self) -> None:
        conn, _ = self.server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.conn = conn
        tail = b""
        while not self.seen.is_set():
            data = conn.recv(65536)
            if not data:
                return
            if self.stop_at in tail + data:
                self.seen.set()
            tail = data[-len(self.stop_at):]

    def close(self) -> None:
        if self.conn:
            self.conn.close()
        self.server.close()


def test_cancel_during_a_pass_resumes_nothing_it_did_not_stop(guests, sockdir):
    src = guests(_spec(size=32 * MiB, fill=1.0,
                       workload=WorkloadSpec(4 * MiB, "uniform", 0, 2)), source=True)
    src.start()
    path = sockdir / "sink.sock"
    sink = _Sink(path, b"\x02\x00\x00\x00\x02")  # the first PART section: stop reading
    sink.start()
    try:
        outgoing = _outgoing(src, _config())
        outgoing.migrate(f"unix:{path}")
        assert sink.seen.wait(10)
        _wait(outgoing, {"active"})
        time.sleep(0.2)  # blocked in sendall now
        outgoing.cancel()
        assert _wait(outgoing, {"cancelled", "failed"}) == "cancelled"
        assert src.runstate == "running"
    finally:
        sink.close()


def test_cancel_during_completion_restarts_the_stopped_guest(guests, sockdir):
    src = guests(_spec(size=32 * MiB, fill=1.0,
                       workload=WorkloadSpec(4 * MiB, "uniform", 0, 2)), source=True)
    src.start()
    config = _config()
    config.set_parameters({"downtime-limit": 2000 * 1000}, running=False)  # complete at once
    path = sockdir / "end.sock"
    sink = _Sink(path, b"\x03\x00\x00\x00\x02")  # the END section: stop reading
    sink.start()
    try:
        outgoing = _outgoing(src, config)
        outgoing.migrate(f"unix:{path}")
        assert sink.seen.wait(10)
        deadline = time.monotonic() + 5
        while src.runstate != "finish-migrate":  # stopped for the completion, blocked
            assert time.monotonic() < deadline
            time.sleep(0.01)
        outgoing.cancel()
        assert _wait(outgoing, {"cancelled", "failed"}) == "cancelled"
        assert src.runstate == "running"  # vm_was_running: restarted
        src.stop()  # pages are comparable with their versions only with no write in flight
        assert all(v.size == 0 for v in src.mismatched_pages().values())
    finally:
        sink.close()


def test_cancel_before_connecting_ends_cancelled(guests):
    src = guests(_spec(), source=True)
    gate = threading.Event()
    config = _config()

    def connector(uri: str, timeout: float):
        gate.wait(10)  # a connect that takes its time
        raise ConnectionRefusedError("never reached")

    outgoing = OutgoingMigration(src, config, connector, Events())
    outgoing.migrate("tcp:127.0.0.1:9")
    assert str(outgoing.state.status) == "setup"
    outgoing.cancel()
    gate.set()
    assert _wait(outgoing, {"cancelled", "failed"}) == "cancelled"
    assert [t.new for t in outgoing.state.history][-2:] == ["cancelling", "cancelled"]
