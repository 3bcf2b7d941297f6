"""multifd between the harness's own source and destination, in one process, real sockets.

What it proves: the non-zero pages travel on the N channels and the zero pages on main;
every channel carries one SYNC per RAM EOS on main (setup + each PART + END, facts M10) on
both sides; ram.multifd-bytes is what 7.2 counts (M15); and the destination refuses, in
one line naming the channel, an extra connection, a channel that does not come, and a
channel that dies inside a packet.  The bad channels are written with the codec itself
over real sockets, never mocked.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from destination.incoming import IncomingError, IncomingMigration
from harness.guest import BlockSpec, GuestSpec, WorkloadSpec
from harness.migration.config import MigrationConfig
from harness.protocol import Event, RamEos, RamPages, StreamDecoder
from harness.protocol.multifd import (
    HEADER_SIZE,
    ChannelDecoder,
    MultifdInit,
    MultifdPacket,
    PacketHeader,
    compressions,
)
from harness.transport import connect, listen, parse_uri
from source.migration import OutgoingMigration

MiB = 1 << 20


def _config(channels: int, compression: str = "none") -> MigrationConfig:
    config = MigrationConfig.default()
    config.set_capabilities([{"capability": "multifd", "state": True}], running=False)
    config.set_parameters({"multifd-channels": channels, "multifd-compression": compression,
                           "max-bandwidth": 0})
    return config


def _spec(workload=None) -> GuestSpec:
    return GuestSpec(machine="none", blocks=[BlockSpec("ram", 8 * MiB)], fill=0.5, seed=5,
                     workload=workload, devices=["timer", "globalstate"])


def _outgoing(guest, config, sink=None) -> OutgoingMigration:
    def connector(uri: str, timeout: float):
        channel = connect(parse_uri(uri, "source"), timeout=timeout)
        if sink is not None:
            sink.append(channel)
        return channel
    return OutgoingMigration(guest, config, connector, lambda *_: None)


def _incoming(guest, config, channel_timeout: float = 10.0) -> IncomingMigration:
    mig = IncomingMigration(guest, config, lambda uri: listen(parse_uri(uri, "destination")),
                            lambda *_: None, accept_timeout=20, idle_timeout=20)
    mig.multifd_channel_timeout = channel_timeout
    guest.runstate = "inmigrate"
    return mig


def _wait(migration, statuses: set[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while str(migration.state.status) not in statuses:
        assert time.monotonic() < deadline, f"still {migration.state.status}"
        time.sleep(0.005)
    return str(migration.state.status)


@pytest.mark.parametrize("channels, compression", [(4, "none"), (2, compressions()[-1])])
def test_multifd_pair_moves_memory_with_one_sync_per_ram_eos(guests, sockdir, channels,
                                                             compression):
    src = guests(_spec(WorkloadSpec(4 * MiB, "uniform", 0, 3)), source=True)
    dst = guests(_spec(), source=False)
    src.start()
    outgoing = _outgoing(src, _config(channels, compression))
    incoming = _incoming(dst, _config(channels, compression))
    incoming.snapshot = True
    uri = f"unix:{sockdir}/m.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    assert _wait(outgoing, {"completed", "failed"}) == "completed", outgoing.error_desc
    assert _wait(incoming, {"completed", "failed"}) == "completed", incoming.error_desc
    src_digests = src.digests()
    for name, digests in incoming.loaded_digests.items():
        assert np.array_equal(digests, src_digests[name])
    info, dinfo = outgoing.query(), incoming.query()
    sent, got = info["x-multifd"], dinfo["x-multifd"]
    syncs = {s["syncs"] for s in sent}
    assert len(syncs) == 1 and syncs.pop() >= 3  # setup, a PART or more, END
    assert sorted(r["id"] for r in got) == list(range(channels))
    assert [r["syncs"] for r in got] == [s["syncs"] for s in sent][:1] * channels
    assert incoming.multifd is not None and incoming.multifd.syncs == sent[0]["syncs"]
    pages = sum(s["pages"] for s in sent)
    assert all(s["pages"] > 0 for s in sent)  # the pages were split over every channel
    assert pages == info["ram"]["normal"] == sum(r["pages"] for r in got)
    packets = sum(s["packets"] for s in sent)
    assert info["ram"]["multifd-bytes"] == packets * HEADER_SIZE + pages * 4096
    ram = info["ram"]
    assert ram["transferred"] >= ram["multifd-bytes"] + ram["precopy-bytes"]
    assert info["ram"]["precopy-bytes"] < 2 * MiB  # zero records and framing only


@pytest.mark.parametrize("method, level", [("zlib", 9), ("zstd", 3)])
def test_wire_zero_pages_on_main_one_sync_per_eos_and_the_level_used(guests, sockdir, method,
                                                                      level):
    """On the wire: main has ZERO records and no PAGE record (M9); each channel starts
    with its MultifdInit and carries one SYNC per RAM EOS of main (M10); the level set by
    migrate-set-parameters reaches the compressor (7.2 ignores it there: M14) -- zlib's
    header says level 9 (78 da), zstd's window descriptor level 3's 2 MiB (0x58; level 1,
    the default, gives 0x48)."""
    src = guests(_spec(), source=True)
    config = _config(2, method)
    config.set_parameters({f"multifd-{method}-level": level})
    outgoing = _outgoing(src, config)
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(f"{sockdir}/z.sock")
    lsock.listen(4)
    lsock.settimeout(20)
    outgoing.migrate(f"unix:{sockdir}/z.sock")
    conns = [lsock.accept()[0] for _ in range(3)]
    got = [bytearray() for _ in conns]
    readers = [threading.Thread(target=_drain, args=(c, b), daemon=True)
               for c, b in zip(conns, got, strict=True)]
    for t in readers:
        t.start()
    assert _wait(outgoing, {"completed", "failed"}) == "completed", outgoing.error_desc
    for c in conns:
        c.shutdown(socket.SHUT_WR)
    for t in readers:
        t.join(20)
    for c in conns:
        c.close()
    lsock.close()
    decoder = StreamDecoder(ram="discard")
    decoder.receive_data(bytes(got[0]))
    decoder.receive_data(b"")
    kinds, eos = [], 0
    while isinstance(event := decoder.next_event(), Event):
        if isinstance(event, RamPages):
            kinds.extend(int(k) for k in event.kinds)
        eos += isinstance(event, RamEos)
    assert kinds and set(kinds) == {0x02}
    assert eos >= 3
    ids, first_payload = [], b""
    for data in got[1:]:
        channel = ChannelDecoder(compression=method, channels=2, blocks=None)
        channel.receive_data(bytes(data))
        init = channel.next_event()
        assert isinstance(init, MultifdInit)
        ids.append(init.channel_id)
        syncs = 0
        while isinstance(packet := channel.next_event(), MultifdPacket):
            syncs += packet.header.sync
        assert syncs == eos
        if init.channel_id == 0:
            at = 64 + HEADER_SIZE  # after the init and the SYNC of the setup section
            header = PacketHeader.unpack(bytes(data[at:at + HEADER_SIZE]))
            first_payload = bytes(data[at + HEADER_SIZE:at + HEADER_SIZE + 8])
            assert header.normal_pages > 0 and header.flags == (2 if method == "zlib" else 4)
    assert sorted(ids) == [0, 1]
    if method == "zlib":
        assert first_payload[:2] == b"\x78\xda"
    else:
        assert first_payload[:4] == b"\x28\xb5\x2f\xfd" and first_payload[5] == 0x58


def _drain(conn: socket.socket, into: bytearray) -> None:
    conn.settimeout(20)
    try:
        while chunk := conn.recv(1 << 20):
            into += chunk
    except OSError:
        pass


def _raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_destination_fails_naming_a_missing_channel(guests, sockdir):
    dst = guests(_spec(), source=False)
    incoming = _incoming(dst, _config(3), channel_timeout=0.5)
    path = f"{sockdir}/x.sock"
    incoming.migrate_incoming(f"unix:{path}")
    socks = [_raw(path) for _ in range(3)]  # main + 2 of 3
    try:
        assert _wait(incoming, {"failed"}, 10) == "failed"
        assert incoming.error_desc == (
            "multifd: 2 of 3 multifd channels arrived within 0.5 s of the main channel "
            "(multifd-channels is 3 here: is it the same on the source?)")
    finally:
        for s in socks:
            s.close()


def test_destination_fails_naming_an_extra_connection(guests, sockdir):
    """Source 3 / destination 2 (M4): 7.2 ignores the third and loses its pages."""
    src = guests(_spec(), source=True)
    dst = guests(_spec(), source=False)
    outgoing = _outgoing(src, _config(3))
    incoming = _incoming(dst, _config(2))
    uri = f"unix:{sockdir}/e.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    assert _wait(incoming, {"completed", "failed"}) == "failed"
    assert incoming.error_desc is not None and (
        "an extra incoming migration connection (number 4) with multifd-channels 2"
        in incoming.error_desc or "received channel id 2 but only 2" in incoming.error_desc)
    outgoing.cancel()
    _wait(outgoing, {"failed", "cancelled", "completed"})
    assert outgoing.join(10)


_HALF_PACKET = PacketHeader(0, 2, 2 * 4096, 7, "ram", [0, 4096]).pack() + bytes(5000)
_PREFIX = "failed to receive packet via multifd channel"


@pytest.mark.parametrize("first, second, says", [
    (MultifdInit(0).pack(), MultifdInit(1).pack() + _HALF_PACKET,  # then the channel dies
     f"{_PREFIX} 1: the channel ended inside a packet (6344 bytes of it read)"),
    (MultifdInit(0, b"\x11" * 16).pack(), MultifdInit(1).pack(),
     (f"{_PREFIX} 0: multifd: received uuid '11111111-1111-1111-1111-111111111111' and expected "
     "uuid '00000000-0000-0000-0000-000000000000' for channel 0")),
    (MultifdInit(0).pack(), MultifdInit(2).pack(),  # 7.2 takes id == N (off by one)
     (f"{_PREFIX} 1: multifd: received channel id 2 but only 2 channels are set up "
     "(multifd-channels)")),
    (MultifdInit(1).pack(), MultifdInit(1).pack(), "multifd: received id '1' already setup'"),
], ids=["dies-inside-a-packet", "another-uuid", "id-beyond-the-count", "duplicate-id"])
def test_a_bad_channel_fails_the_load_naming_it(guests, sockdir, first, second, says):
    dst = guests(_spec(), source=False)
    incoming = _incoming(dst, _config(2))
    path = f"{sockdir}/d.sock"
    incoming.migrate_incoming(f"unix:{path}")
    main, ch0, ch1 = (_raw(path) for _ in range(3))
    try:
        ch0.sendall(first)
        ch1.sendall(second)
        ch1.shutdown(socket.SHUT_WR)
        assert _wait(incoming, {"failed"}, 10) == "failed"
        assert incoming.error_desc is not None and says in incoming.error_desc
        assert incoming._thread is not None
        incoming._thread.join(10)  # the load thread ends: every channel thread with it
        assert incoming.multifd is not None and not any(
            t.is_alive() for t in (r.thread for r in incoming.multifd._receivers))
    finally:
        for s in (main, ch0, ch1):
            s.close()


def test_cancel_ends_every_channel_thread_and_closes_every_socket(guests, sockdir):
    """A slow multifd migration (1 MiB/s) cancelled mid-way: the source ends cancelled with
    the guest running again, every sender thread gone and every channel closed."""
    src = guests(_spec(), source=True)
    dst = guests(_spec(), source=False)
    src.start()
    channels: list = []
    config = _config(3)
    config.set_parameters({"max-bandwidth": 1 * MiB})
    outgoing = _outgoing(src, config, channels)
    incoming = _incoming(dst, _config(3))
    uri = f"unix:{sockdir}/c.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    deadline = time.monotonic() + 10
    while not (outgoing.stream and outgoing.stream.multifd_bytes > 0):
        assert time.monotonic() < deadline, "no multifd packet within 10 s"
        time.sleep(0.01)
    multifd = outgoing.stream.multifd
    outgoing.cancel()
    assert _wait(outgoing, {"cancelled", "failed"}, 10) == "cancelled"
    assert outgoing.join(10)
    assert src.runstate == "running"
    assert len(channels) == 4 and all(str(c.state.value) == "closed" for c in channels)
    assert not any(s.thread.is_alive() for s in multifd._senders)
    assert _wait(incoming, {"failed"}, 20) == "failed"  # main broke: the load stops


def test_exec_uri_is_refused_in_qemus_words_on_both_sides(guests, tmp_path):
    """M5: multifd needs tcp:/unix:/vsock: -- the source's migration fails, the
    destination's migrate-incoming is refused, with 7.2's text."""
    src = guests(_spec(), source=True)
    dst = guests(_spec(), source=False)
    outgoing = _outgoing(src, _config(2))
    outgoing.migrate(f"exec:cat > {tmp_path}/out.bin")
    assert _wait(outgoing, {"failed", "completed"}) == "failed"
    assert outgoing.error_desc == "multifd is not supported by current protocol"
    assert outgoing.join(10)
    incoming = _incoming(dst, _config(2))
    with pytest.raises(IncomingError, match="^multifd is not supported by current protocol$"):
        incoming.migrate_incoming(f"exec:cat {tmp_path}/out.bin")


def test_multifd_with_postcopy_pages_after_the_switch_go_on_main(guests, sockdir):
    """7.2 allows multifd with postcopy-ram (not with preempt): precopy pages go on the
    channels, every page after the switch on main (M9: a host page is placed whole), and
    every RAM EOS still has its SYNC on each channel, in postcopy too (M10).  What the
    destination guest found on each page equals the stopped source's."""
    workload = WorkloadSpec(2 * MiB, "uniform", 0, 5)
    src = guests(_spec(workload), source=True)
    dst = guests(_spec(workload), source=False)
    src.start()
    caps = [{"capability": c, "state": True} for c in ("postcopy-ram", "return-path")]
    config, dconfig = _config(2), _config(2)
    for c in (config, dconfig):
        c.set_capabilities([*caps, {"capability": "multifd", "state": True}], running=False)
    config.set_parameters({"max-bandwidth": 16 * MiB, "max-postcopy-bandwidth": 4 * MiB})
    outgoing = _outgoing(src, config)
    incoming = _incoming(dst, dconfig)
    incoming.snapshot = True
    uri = f"unix:{sockdir}/p.sock"
    incoming.migrate_incoming(uri)
    outgoing.migrate(uri)
    deadline = time.monotonic() + 20
    while not (outgoing.stream and outgoing.stream.multifd_bytes > MiB):
        assert time.monotonic() < deadline, "no precopy page on the channels"
        time.sleep(0.005)
    outgoing.start_postcopy()
    assert _wait(outgoing, {"completed", "failed"}) == "completed", outgoing.error_desc
    assert _wait(incoming, {"completed", "failed"}) == "completed", incoming.error_desc
    info = outgoing.query()
    assert info["ram"]["postcopy-bytes"] > 0  # pages went on main after the switch
    sent, got = info["x-multifd"], incoming.query()["x-multifd"]
    assert [s["syncs"] for s in sent] == [r["syncs"] for r in got] == \
        [incoming.multifd.syncs] * 2
    assert sum(s["pages"] for s in sent) == sum(r["pages"] for r in got) > 0
    expected = src.digests()
    for name, digests in incoming.loaded_digests.items():
        assert np.array_equal(digests, expected[name]), name
