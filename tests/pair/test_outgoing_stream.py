"""The outgoing stream's owner (source/stream.py): its invariants, over real socket pairs.

A push and requested pages share the stream from two threads; whatever the interleaving,
the bytes must decode as QEMU 7.2 decodes them, every page must go out exactly once, a
waiting request must get the channel before the push's next batch, and with
postcopy-preempt a requested page must travel on its own channel as bare records that
name their block, closed by EOS.
"""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from harness.migration.config import MigrationConfig
from harness.protocol import RamPages, StreamEncoder
from harness.protocol.decoder import decode_all
from harness.protocol.ram import RamLoader
from harness.protocol.wire import Reader
from harness.transport.channel import SocketChannel
from source.ram_save import RamSave
from source.stream import OutgoingStream

PAGE = 4096
PAGES = 2048
SECTION = 2
DEADLINE = 20.0


class _Drain:
    """Reads the far end of a socket pair into memory until EOF (bounded in time)."""

    def __init__(self) -> None:
        near, self.far = socket.socketpair()
        self.channel = SocketChannel(near, "test")
        self.data = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.far.settimeout(DEADLINE)
        while chunk := self.far.recv(1 << 20):
            self.data += chunk

    def finish(self) -> bytes:
        self.channel.close()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the reader did not see EOF in time"
        self.far.close()
        return bytes(self.data)


def _guest() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    mem = rng.integers(1, 256, PAGES * PAGE, dtype=np.uint8)
    mem[5 * PAGE:6 * PAGE] = 0  # a zero page among the normal ones
    return {"ram": mem}


def _stream(preempt: bool) -> tuple[OutgoingStream, RamSave, _Drain, _Drain | None]:
    config = MigrationConfig.default()
    config.parameters["max-postcopy-bandwidth"] = 0
    main = _Drain()
    stream = OutgoingStream(main.channel, config, SECTION, threading.Event())
    side = _Drain() if preempt else None
    stream.attach(main.channel, side.channel if side else None)
    ram = RamSave(_guest(), dict)
    ram.bitmap_sync()
    enc = StreamEncoder()
    stream.write(enc.header() + enc.ram_start(SECTION, ram.block_list()))
    stream.rate.postcopy = True
    stream.restart_window()
    return stream, ram, main, side


def _pages_on_main(data: bytes) -> list[int]:
    events = decode_all(data, configuration=False)
    return [int(o) // PAGE for ev in events if isinstance(ev, RamPages) for o in ev.offsets]


def _pages_on_preempt(data: bytes) -> tuple[list[int], bool]:
    loader = RamLoader({"ram": np.zeros(PAGES * PAGE, dtype=np.uint8)})
    events, eos = loader.load(Reader(data, 0, len(data), closed=True), SECTION)
    pages = [int(o) // PAGE for ev in events if isinstance(ev, RamPages) for o in ev.offsets]
    return pages, eos


def _push_all(stream: OutgoingStream, ram: RamSave) -> None:
    while ram.remaining():
        stream.push(ram)


@pytest.mark.parametrize("preempt", [False, True], ids=["shared-main", "preempt"])
def test_every_page_goes_once_and_the_stream_decodes(preempt: bool) -> None:
    """Requests from another thread during the push: each page once, all decodable."""
    stream, ram, main, side = _stream(preempt)
    wanted = list(range(PAGES - 1, 0, -97))
    served: list[bool] = []

    def requests() -> None:
        for page in wanted:
            served.append(stream.send_urgent(ram, "ram", page * PAGE, PAGE))

    asker = threading.Thread(target=requests)
    asker.start()
    _push_all(stream, ram)
    asker.join(DEADLINE)
    assert not asker.is_alive()
    stream.end_postcopy()
    assert stream.send_urgent(ram, "ram", 0, PAGE) is False  # nothing after the end
    on_main = _pages_on_main(main.finish())
    on_preempt, eos = _pages_on_preempt(side.finish()) if side else ([], False)
    everything = on_main + on_preempt
    assert sorted(everything) == list(range(PAGES)), "a page was lost or sent twice"
    assert sum(served) == len(set(on_preempt)) if preempt else not on_preempt
    assert eos is preempt
    if preempt:
        assert any(served) and set(on_preempt) <= set(wanted)


def test_preempt_records_name_their_block_and_carry_no_section() -> None:
    """7.2 resets last_sent_block when it switches channel: every request's first
    record names the block; the channel holds records only, then EOS."""
    stream, ram, main, side = _stream(preempt=True)
    assert side is not None
    for page in (9, 3, 1000):
        assert stream.send_urgent(ram, "ram", page * PAGE, PAGE)
    assert not stream.send_urgent(ram, "ram", 9 * PAGE, PAGE)  # already sent
    stream.end_postcopy()
    main.finish()
    data = side.finish()
    record = 8 + 1 + len("ram") + PAGE
    assert len(data) == 3 * record + 8
    for i, page in enumerate((9, 3, 1000)):
        at = i * record
        word = int.from_bytes(data[at:at + 8], "big")
        assert word == page * PAGE | 0x08  # PAGE, not CONTINUE
        assert data[at + 8:at + 12] == b"\x03ram"
        assert data[at + 12:at + record] == bytes(ram.block("ram").mem[page * PAGE:(page + 1) * PAGE])
    assert int.from_bytes(data[-8:], "big") == 0x10  # EOS
    assert stream.preempt_total == len(data)


def test_a_waiting_request_gets_the_main_channel_before_the_next_push_batch() -> None:
    """The hand-over: while a ticket is out, the pusher sends no batch; once it is
    returned (and the condition notified), the push goes on."""
    stream, ram, main, _ = _stream(preempt=False)
    before = stream.total
    with stream._tickets_lock:
        stream._tickets += 1  # a request is on its way to the lock
    pusher = threading.Thread(target=stream.push, args=(ram,))
    pusher.start()
    pusher.join(0.3)
    header = 1 + 4  # the PART's section header
    assert stream.total - before == header, "the push sent a batch past a waiting request"
    with stream._cond:
        with stream._tickets_lock:
            stream._tickets -= 1
        stream._cond.notify_all()
    pusher.join(DEADLINE)
    assert not pusher.is_alive()
    assert stream.total - before > header + PAGE  # at least one batch after the hand-over
    stream.end_postcopy()
    main.finish()


def test_the_rate_window_budget_rounds_up_within_a_page() -> None:
    """qemu_file_rate_limit per page: a window overshoots its budget by less than a page."""
    stream, ram, main, _ = _stream(preempt=False)
    stream.rate.config.parameters["max-postcopy-bandwidth"] = 10 * 10 * PAGE  # 10 pages/window
    stream.restart_window()
    assert stream.rate.budget_pages(stream.total, 32) == 11
    assert not stream.rate_limited()
    stream.push(ram)
    sent = stream.total - stream.rate.bytes_at_start
    assert 10 * PAGE < sent < 12 * PAGE + 200
    assert stream.rate_limited()
    stream.end_postcopy()
    main.finish()
