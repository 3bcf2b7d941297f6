"""postcopy-preempt on the harness destination, driven by a test client playing the source.

The client opens the two connections QEMU 7.2's source opens (main, then preempt, to the
same unix path), writes the main stream with the protocol encoder (harness.protocol) and
bare page records on the preempt channel (RamSaver: a record names its block unless the
channel's previous record was of the same block, then CONTINUE), and reads the page
requests the destination guest writes on the return path.  Each test shows one thing the
destination must do (destination/preempt.py, destination/incoming.py).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from destination.incoming import IncomingError, IncomingMigration
from harness.guest import WorkloadSpec
from harness.migration.config import (
    PREEMPT_NEEDS_MULTI_CHANNELS,
    ConfigError,
    MigrationConfig,
    preempt_uri_refusal,
)
from harness.protocol import (
    OpenReturnPath,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    PostcopyResume,
    PostcopyRun,
    RamBlockInfo,
    RecvBitmap,
    RecvBitmapRequest,
    ReqPages,
    ReqPagesId,
    ResumeAck,
    ReturnPathDecoder,
    SectionType,
    StreamEncoder,
)
from harness.protocol.devices import GLOBALSTATE, TIMER, globalstate_values, timer_values
from harness.protocol.ram_saver import RamSaver
from harness.protocol.wire import pack_be64
from harness.transport import listen, parse_uri
from tests.pair.test_precopy_pair import Events, MiB, _spec, _wait

PAGE = 4096
SIZE = 4 * MiB
PAGES = SIZE // PAGE
EOS = pack_be64(0x10)
WAIT = 20.0
pytestmark = pytest.mark.timeout(120)


def _config(**caps: bool) -> MigrationConfig:
    config = MigrationConfig.default()
    config.set_capabilities([{"capability": k, "state": v} for k, v in
                             {"events": True, "postcopy-ram": True, "return-path": True,
                              "postcopy-preempt": True, **caps}.items()], running=False)
    return config


def _until(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Client:
    """Plays a QEMU 7.2 source with postcopy-preempt: main + preempt connections."""

    def __init__(self, path: Path, content: np.ndarray) -> None:
        self.path, self.content = path, content
        self.enc = StreamEncoder()
        self.main: socket.socket | None = None
        self.preempt: socket.socket | None = None
        self.preempt_saver = RamSaver()  # last_sent_block of the preempt channel
        self.rp = ReturnPathDecoder()
        self.rp_block = ""

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                sock.connect(str(self.path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                assert time.monotonic() < deadline, "the destination does not listen"
                time.sleep(0.005)

    def open(self, main_first: bytes = b"") -> None:
        self.main = self.connect()
        self.main.sendall(main_first)

    def open_preempt(self) -> None:
        self.preempt = self.connect()
        self.preempt_saver.reset()

    def prologue(self) -> bytes:
        """Header to RUN, as a 7.2 source switching to postcopy at once sends it."""
        enc = self.enc
        out = bytearray(enc.header() + enc.configuration("none"))
        out += enc.command(OpenReturnPath()) + enc.command(PostcopyAdvise(PAGE, PAGE))
        out += enc.ram_start(2, [RamBlockInfo("ram", SIZE)])
        out += enc.command(PostcopyRamDiscard("ram", ((0, PAGE),)))
        blob = (enc.command(PostcopyListen())
                + enc.device(0, "timer", 0, TIMER, timer_values(), describe=False)
                + enc.device(4, "globalstate", 0, GLOBALSTATE, globalstate_values("running"),
                             describe=False)
                + enc.command(PostcopyRun()))
        return bytes(out + enc.packaged(blob))

    def page_record(self, page: int, data: bytes | None = None) -> bytes:
        out = bytearray()
        body = self.content[page * PAGE:(page + 1) * PAGE].tobytes() if data is None else data
        self.preempt_saver.save_page(out, "ram", page * PAGE, body)
        return bytes(out)

    def send_preempt(self, data: bytes) -> None:
        assert self.preempt is not None
        self.preempt.sendall(data)

    def push(self, pages: range | list[int], data: dict[int, bytes] | None = None) -> None:
        """ram PART sections on main carrying `pages` (the background push)."""
        assert self.main is not None
        for start in range(0, len(pages), 256):
            records = bytearray()
            for page in list(pages)[start:start + 256]:
                body = (data or {}).get(page) or \
                    self.content[page * PAGE:(page + 1) * PAGE].tobytes()
                self.enc.ram.save_page(records, "ram", page * PAGE, body)
            self.main.sendall(self.enc.ram_section(SectionType.SECTION_PART, 2, records))

    def finish(self) -> None:
        """EOS on preempt (postcopy_preempt_shutdown_file), then EOF on main."""
        self.send_preempt(EOS)
        assert self.main is not None
        self.main.sendall(self.enc.eof())

    def messages(self, timeout: float = 0.05) -> list:
        """Return-path messages that arrived within `timeout`."""
        assert self.main is not None
        self.main.settimeout(timeout)
        out = []
        with contextlib.suppress(TimeoutError, BlockingIOError):
            while data := self.main.recv(1 << 16):
                self.rp.receive_data(data)
                self.main.settimeout(0.001)
        self.main.settimeout(WAIT)  # sends are bounded, not cut short
        while (msg := self.rp.next_event()) is not None and not isinstance(msg, str):
            out.append(msg)
        return out

    def requested_pages(self, timeout: float = 0.05) -> list[int]:
        pages = []
        for msg in self.messages(timeout):
            if isinstance(msg, ReqPagesId):
                self.rp_block = msg.block
            if isinstance(msg, (ReqPagesId, ReqPages)):
                assert self.rp_block == "ram" and msg.length == PAGE
                pages.append(msg.start // PAGE)
        return pages

    def close(self) -> None:
        for sock in (self.main, self.preempt):
            if sock is not None:
                sock.close()


@pytest.fixture
def destination(guests, sockdir) -> Iterator:
    """make(workload=...) -> (incoming, guest, client, source content); all closed."""
    made: list[tuple[IncomingMigration, Client]] = []

    def make(workload: WorkloadSpec | None = None, config: MigrationConfig | None = None):
        spec = _spec(size=SIZE, devices=("timer", "globalstate"), workload=workload, seed=7)
        src = guests(spec, source=True)  # only its content: what a source would send
        dst = guests(spec, source=False)
        config = config or _config()

        def listener(uri: str):
            return listen(parse_uri(uri, "destination"), return_path=True)

        incoming = IncomingMigration(dst, config, listener, Events(), accept_timeout=WAIT)
        dst.runstate = "inmigrate"
        incoming.snapshot = True
        client = Client(sockdir / "in.sock", src.memory.ram["ram"])
        made.append((incoming, client))
        return incoming, dst, client, src

    yield make
    for incoming, client in made:
        client.close()
        incoming.close()
        thread = incoming._thread
        assert thread is None or not thread.is_alive(), "incoming thread not reaped"
        assert incoming.fast_load is None or not incoming.fast_load.running, \
            "fault-fast thread not reaped"


def _running(incoming: IncomingMigration, dst, client: Client) -> None:
    """Both connections open and the prologue sent: the guest runs here."""
    incoming.migrate_incoming(f"unix:{client.path}")
    client.open(client.prologue())
    client.open_preempt()
    _until(lambda: dst.runstate == "running", "the guest runs on the destination")
    assert str(incoming.state.status) == "postcopy-active"


def test_main_is_not_read_before_the_preempt_channel_arrives(destination):
    incoming, dst, client, _ = destination()
    incoming.migrate_incoming(f"unix:{client.path}")
    client.open(client.prologue())
    time.sleep(0.3)  # a destination that read main now would be active, even running
    assert str(incoming.state.status) == "setup"
    assert incoming.received == 0 and dst.runstate == "inmigrate"
    client.open_preempt()
    _until(lambda: dst.runstate == "running", "the guest runs once both channels are here")
    assert incoming.fast_load is not None and incoming.fast_load.running


def test_a_preempt_page_is_placed_once_and_main_does_not_place_it_again(destination):
    incoming, dst, client, _ = destination()
    _running(incoming, dst, client)
    first = bytes([0xA5]) * PAGE
    client.send_preempt(client.page_record(5, first) + client.page_record(6))  # 6: CONTINUE
    _until(lambda: dst.memory.present[5] and dst.memory.present[6], "pages 5 and 6 placed")
    assert dst.memory.ram["ram"][5 * PAGE:6 * PAGE].tobytes() == first
    # the push carries page 5 again, with other bytes: a second placement would show them
    client.push(range(PAGES), data={5: bytes([0x5A]) * PAGE})
    client.finish()
    assert _wait(incoming, {"completed", "failed"}, WAIT) == "completed", incoming.error_desc
    assert dst.memory.ram["ram"][5 * PAGE:6 * PAGE].tobytes() == first
    stats = incoming.query()["x-postcopy"]
    assert stats["preempt"]["pages"] == 2 and stats["preempt"]["eos"] is True
    assert stats["dropped-duplicates"] == 2  # pages 5 and 6 came on main too
    assert not incoming.fast_load.running  # EOS ended the thread


def test_requested_pages_come_on_preempt_and_wake_the_guest(destination):
    """The guest faults; each request is answered on the preempt channel only; the guest
    goes on; at the end every page the guest found is the source's."""
    incoming, dst, client, src = destination(WorkloadSpec(4 * MiB, "uniform", 0, 7))
    _running(incoming, dst, client)
    answered: set[int] = set()
    deadline = time.monotonic() + WAIT
    while len(answered) < 20:
        assert time.monotonic() < deadline, f"only {len(answered)} requests"
        for page in client.requested_pages():
            if page not in answered:
                client.send_preempt(client.page_record(page))
                answered.add(page)
    _until(lambda: all(dst.memory.present[p] for p in answered), "requested pages placed")
    assert dst.postcopy_stats()["requests"] >= len(answered)
    client.push(range(PAGES))
    client.finish()
    assert _wait(incoming, {"completed", "failed"}, WAIT) == "completed", incoming.error_desc
    expected = src.digests()["ram"]
    assert np.array_equal(incoming.loaded_digests["ram"], expected)
    preempt = incoming.query()["x-postcopy"]["preempt"]
    assert preempt["pages"] == len(answered) and preempt["dropped-duplicates"] == 0
    assert dst.postcopy_stats()["latencies-ns"].size >= len(answered)  # the guest woke


def test_continue_on_preempt_is_relative_to_that_channel_only(destination):
    """Main has just named "ram"; the preempt channel has named nothing: a CONTINUE first
    on preempt is QEMU's "Ack, bad migration stream!", and the error names the channel;
    the guest runs here, so the destination pauses."""
    incoming, dst, client, _ = destination()
    _running(incoming, dst, client)
    client.push([0, 1])  # main's last block is "ram" now
    _until(lambda: dst.memory.present[1], "main's pages placed")
    client.send_preempt(pack_be64(2 * PAGE | 0x08 | 0x20) + bytes(PAGE))  # PAGE|CONTINUE
    assert _wait(incoming, {"postcopy-paused", "failed"}, WAIT) == "postcopy-paused"
    assert incoming.error_desc == "offset 0 (0x0): postcopy preempt channel: Ack, bad " \
                                  "migration stream!"
    assert not dst.memory.present[2]
    assert incoming.query()["x-postcopy"]["preempt"]["error"] == incoming.error_desc


def test_a_bad_preempt_record_pauses_and_recovery_takes_two_new_connections(destination,
                                                                           sockdir):
    incoming, dst, client, _ = destination()
    _running(incoming, dst, client)
    first = client.page_record(3)
    client.send_preempt(first)
    _until(lambda: dst.memory.present[3], "page 3 placed")
    bad = pack_be64(4 * PAGE | 0x08) + b"\x04nope" + bytes(PAGE)
    client.send_preempt(bad)
    assert _wait(incoming, {"postcopy-paused", "failed"}, WAIT) == "postcopy-paused"
    desc = incoming.error_desc
    assert desc is not None and "postcopy preempt channel: Can't find block nope" in desc
    assert desc.startswith(f"offset {len(first)} ")  # where on the preempt channel
    # migrate-recover: two new connections, main then preempt; main is not read first
    client.close()
    recover = sockdir / "recover.sock"
    incoming.migrate_recover(f"unix:{recover}")
    client.path = recover
    client.rp = ReturnPathDecoder()
    client.open(client.enc.command(RecvBitmapRequest("ram"))
                + client.enc.command(PostcopyResume()))
    time.sleep(0.3)
    assert str(incoming.state.status) == "postcopy-paused"  # waiting for the preempt channel
    client.open_preempt()
    _until(lambda: str(incoming.state.status) == "postcopy-active", "resumed")
    replies = []
    _until(lambda: replies.extend(client.messages()) or any(
        isinstance(m, ResumeAck) for m in replies), "RESUME_ACK")
    bitmap = next(m for m in replies if isinstance(m, RecvBitmap))
    assert bitmap.block == "ram" and bitmap.bitmap[0] == 0b1000  # page 3 only
    client.send_preempt(client.page_record(9))  # the new preempt channel is read
    _until(lambda: dst.memory.present[9], "page 9 placed from the new preempt channel")
    client.push(range(PAGES))
    client.finish()
    assert _wait(incoming, {"completed", "failed"}, WAIT) == "completed", incoming.error_desc
    assert incoming.query()["x-postcopy"]["preempt"]["pages"] == 2


def test_eof_on_preempt_before_eos_pauses_naming_the_channel(destination):
    incoming, dst, client, _ = destination()
    _running(incoming, dst, client)
    assert client.preempt is not None
    client.preempt.close()
    client.preempt = None
    assert _wait(incoming, {"postcopy-paused", "failed"}, WAIT) == "postcopy-paused"
    assert incoming.error_desc == "postcopy preempt channel: EOF before EOS (after 0 bytes)"


def test_capability_checks_in_qemus_words():
    config = MigrationConfig.default()
    for caps, words in (
            ({"postcopy-preempt": True}, "Postcopy preempt requires postcopy-ram"),
            ({"postcopy-preempt": True, "postcopy-ram": True, "compress": True},
             "Postcopy preempt not compatible with compress")):
        with pytest.raises(ConfigError, match=f"^{words}$"):
            config.set_capabilities([{"capability": k, "state": v} for k, v in caps.items()],
                                    running=False)
    caps = {"postcopy-preempt": True, "postcopy-ram": True}
    for uri in ("exec:cat", "fd:mig", "file:/tmp/x"):
        assert preempt_uri_refusal(caps, uri) == PREEMPT_NEEDS_MULTI_CHANNELS
    for uri in ("tcp:127.0.0.1:0", "unix:/tmp/s", "vsock:3:4"):
        assert preempt_uri_refusal(caps, uri) is None
    assert preempt_uri_refusal({"postcopy-ram": True}, "exec:cat") is None


def test_migrate_incoming_on_exec_with_preempt_is_refused(destination):
    incoming, _, _, _ = destination()
    with pytest.raises(IncomingError, match=PREEMPT_NEEDS_MULTI_CHANNELS.replace(".", r"\.")):
        incoming.migrate_incoming("exec:cat /dev/null")
    assert str(incoming.state.status) == "none"


def test_a_two_channel_listener_accepts_in_order_then_stops_listening(sockdir):
    path = sockdir / "two.sock"
    listener = listen(f"unix:{path}", channels=2)
    socks = []
    try:
        for tag in (b"main", b"preempt"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            sock.sendall(tag)
            socks.append(sock)
        accepted = [listener.accept(timeout=WAIT) for _ in range(2)]
        assert [ch.read_exact(len(tag), timeout=WAIT) for ch, tag in
                zip(accepted, (b"main", b"preempt"))] == [b"main", b"preempt"]
        assert not path.exists()  # the last accept stopped listening
        with socket.socket(socket.AF_UNIX) as late, pytest.raises(OSError):
            late.connect(str(path))
        for ch in accepted:
            ch.close()
    finally:
        listener.close()
        for sock in socks:
            sock.close()
