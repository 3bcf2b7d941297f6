"""Postcopy's checks, in QEMU 7.2's words, with real guests and real sockets.

Destination: crafted streams (written by the codec) against the postcopy state table.
Source: page requests as `migrate_handle_rp_req_pages` / `ram_save_queue_pages` check them.
A whole postcopy between the two runs in the e2e scenarios.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.protocol import (
    OpenReturnPath,
    Ping,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    PostcopyRun,
    RamBlockInfo,
    ReqPages,
    ReqPagesId,
    SectionType,
    StreamEncoder,
    xbzrle,
)
from harness.protocol.devices import GLOBALSTATE, TIMER, globalstate_values, timer_values
from source.postcopy import PostcopySource, RequestError
from source.ram_save import RamSave
from tests.pair.test_precopy_pair import MiB, _config, _incoming, _send_raw, _spec, _wait

PAGE = 4096
SIZE = 1 * MiB


def _postcopy_stream(*, discard=True, extra_before_listen=b"", pages_after=(), advise=None,
                     listen_first=False) -> bytes:
    enc = StreamEncoder()
    out = bytearray(enc.header() + enc.configuration("none"))
    out += enc.command(OpenReturnPath()) + enc.command(Ping(1))
    out += enc.command(advise or PostcopyAdvise(PAGE, PAGE))
    out += enc.ram_start(2, [RamBlockInfo("ram", SIZE)])
    records = bytearray()
    enc.ram.save_page(records, "ram", 0, bytes([7]) * PAGE)
    out += enc.ram_section(SectionType.SECTION_PART, 2, records)
    if listen_first:
        out += enc.command(PostcopyListen())
    if discard:
        out += enc.command(PostcopyRamDiscard("ram", ((PAGE, PAGE),)))
    out += extra_before_listen
    out += enc.command(Ping(2))
    blob = (enc.command(PostcopyListen())
            + enc.device(0, "timer", 0, TIMER, timer_values(), describe=False)
            + enc.device(4, "globalstate", 0, GLOBALSTATE, globalstate_values("running"),
                         describe=False)
            + enc.command(Ping(3)) + enc.command(PostcopyRun()))
    out += enc.packaged(blob) + enc.command(Ping(4))
    enc.ram.reset()
    records = bytearray()
    for addr, fill in pages_after:
        enc.ram.save_page(records, "ram", addr, bytes([fill]) * PAGE)
    out += enc.ram_section(SectionType.SECTION_PART, 2, records)
    rest = bytearray()
    for page in range(1, SIZE // PAGE):
        if page * PAGE not in {a for a, _ in pages_after}:
            enc.ram.save_zero_page(rest, "ram", page * PAGE)
    out += enc.ram_section(SectionType.SECTION_END, 2, rest) + enc.eof()
    return bytes(out)


def _load(guests, sockdir, data: bytes, postcopy_ram: bool = True, vanish: bool = False):
    dst = guests(_spec(size=SIZE, devices=("timer", "globalstate")), source=False)
    incoming = _incoming(dst, _config(postcopy_ram=postcopy_ram, return_path=True))
    path = sockdir / "pc.sock"
    incoming.migrate_incoming(f"unix:{path}")
    sock = _send_raw(path, data, close=False)
    if vanish:
        sock.close()
    try:
        _wait(incoming, {"completed", "failed", "postcopy-paused"})
    finally:
        sock.close()
    return incoming, dst


def test_a_well_formed_postcopy_stream_completes_and_places_each_page_once(guests, sockdir):
    data = _postcopy_stream(pages_after=[(PAGE, 0x11), (PAGE, 0x22), (2 * PAGE, 0x33)])
    incoming, dst = _load(guests, sockdir, data)
    assert str(incoming.state.status) == "completed", incoming.error_desc
    assert [t.new for t in incoming.state.history] == ["setup", "active", "postcopy-active",
                                                       "completed"]
    ram = dst.ram["ram"]
    assert (ram[PAGE:2 * PAGE] == 0x11).all()  # the second copy of the page was dropped
    assert incoming.postcopy.stats()["dropped-duplicates"] == 1
    assert (ram[:PAGE] == 7).all() and (ram[2 * PAGE:3 * PAGE] == 0x33).all()
    assert dst.runstate == "running"


@pytest.mark.parametrize("stream,message", [
    ({"discard": False}, "CMD_POSTCOPY_RUN in wrong postcopy state (2)"),  # QEMU 7.2's quirk
    ({"extra_before_listen": StreamEncoder.command(PostcopyListen())
          + StreamEncoder.command(PostcopyRamDiscard("ram", ((0, PAGE),)))},
     "CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state (3)"),
    ({"extra_before_listen": StreamEncoder.command(PostcopyAdvise(PAGE, PAGE))},
     "CMD_POSTCOPY_ADVISE in wrong postcopy state (2)"),
    ({"extra_before_listen": StreamEncoder.command(PostcopyRun())},
     "CMD_POSTCOPY_RUN in wrong postcopy state (2)"),
    ({"advise": PostcopyAdvise(8192, PAGE)},
     "Postcopy needs matching RAM page sizes (s=2000 d=1000)"),
    ({"advise": PostcopyAdvise(PAGE, 1024)},
     "Postcopy needs matching target page sizes (s=1024 d=4096)"),
])
def test_postcopy_state_table_in_qemus_words(guests, sockdir, stream, message):
    incoming, dst = _load(guests, sockdir, _postcopy_stream(**stream))
    assert str(incoming.state.status) == "failed"
    assert incoming.error_desc.split(": ", 1)[1] == message
    assert dst.runstate != "running"


def test_advise_without_postcopy_ram_on_the_destination(guests, sockdir):
    incoming, _ = _load(guests, sockdir, _postcopy_stream(), postcopy_ram=False)
    assert incoming.error_desc.endswith("RAM postcopy is disabled but have 16 byte advise")


def test_xbzrle_is_refused_once_listening_and_pauses_a_running_guest(guests, sockdir):
    enc = StreamEncoder()
    records = bytearray()
    enc.ram.save_xbzrle_page(records, "ram", 5 * PAGE,
                             xbzrle.encode(bytes(PAGE), b"\x01" + bytes(PAGE - 1)))
    data = _postcopy_stream()
    # put an XBZRLE record into the first postcopy PART
    part = data.index(b"\x02\x00\x00\x00\x02", data.index(b"\x08\x00\x05\x00\x00"))
    evil = data[:part + 5] + records + data[part + 5:]
    incoming, dst = _load(guests, sockdir, evil)
    assert incoming.error_desc.split(": ", 1)[1].startswith(
        "Unknown combination of migration flags: 0x40 (postcopy mode)")
    # after RUN any load error pauses (qemu_loadvm_state_main, PostcopyState RUNNING)
    assert str(incoming.state.status) == "postcopy-paused"
    assert dst.runstate == "running"
    incoming.close()


def test_a_source_vanishing_in_postcopy_pauses_the_destination_and_its_guest_runs_on(
        guests, sockdir):
    import time

    data = _postcopy_stream()
    cut = data.index(b"\x08\x00\x02\x00\x04\x00\x00\x00\x04") + 9  # just after PING 4
    dst = guests(_spec(size=SIZE, devices=("timer", "globalstate")), source=False)
    incoming = _incoming(dst, _config(postcopy_ram=True, return_path=True))
    path = sockdir / "gone.sock"
    incoming.migrate_incoming(f"unix:{path}")
    sock = _send_raw(path, data[:cut], close=False)
    deadline = time.monotonic() + 10
    while dst.runstate != "running":  # RUN arrived: the guest runs on the destination
        assert time.monotonic() < deadline, dst.runstate
        time.sleep(0.01)
    sock.close()  # ... and then the source is gone
    # QEMU 7.2 pauses (postcopy_pause_incoming) rather than lose the running guest
    assert _wait(incoming, {"completed", "failed", "postcopy-paused"}) == "postcopy-paused"
    # an EOF mid-stream, or a reset (the PONGs we never read): the source is gone either way
    assert any(why in incoming.error_desc for why in
               ("unexpected end of migration stream", "Connection reset by peer"))
    assert dst.runstate == "running"
    assert incoming.query()["status"] == "postcopy-paused"
    incoming.close()  # the paused load thread waits for migrate-recover: end it
    assert not incoming._thread.is_alive()


def _source(guests) -> PostcopySource:
    src = guests(_spec(size=SIZE), source=True)
    ram = RamSave(src.ram, src.harvest_dirty)
    return PostcopySource(ram)


@pytest.mark.parametrize("messages,error", [
    ([ReqPages(0, PAGE)], "ram_save_queue_pages: no previous block"),
    ([ReqPagesId(100, PAGE, "ram")],
     "migrate_handle_rp_req_pages: Misaligned page request, start: 64 len: 4096"),
    ([ReqPagesId(0, PAGE, "rom")], "ram_save_queue_pages: Unknown ramblock 'rom'"),
    ([ReqPagesId(SIZE, PAGE, "ram")],
     "ram_save_queue_pages request overrun start=100000 len=1000 blocklen=100000"),
])
def test_source_refuses_bad_requests_in_qemus_words(guests, messages, error):
    pc = _source(guests)
    with pytest.raises(RequestError, match=f"^{error}$"):
        for message in messages:
            pc.on_request(message)


def test_source_queues_requests_until_it_can_serve_them_then_answers_at_once(guests):
    pc = _source(guests)
    pc.on_request(ReqPagesId(10 * PAGE, PAGE, "ram"))
    pc.on_request(ReqPages(3 * PAGE, 2 * PAGE))  # the block of the request before
    assert pc.pending() and pc.requests == 2
    served: list[tuple[str, int, int]] = []

    def serve(block, start, length):
        served.append((block, start, length))
        return pc.ram.take_pages(block, start, length).size > 0

    pc.serve_with(serve)  # the switch: the queue drains in order
    assert served == [("ram", 10 * PAGE, PAGE), ("ram", 3 * PAGE, 2 * PAGE)]
    assert not pc.pending() and pc.stats()["request-to-send-us"]["count"] == 2
    pc.on_request(ReqPagesId(3 * PAGE, PAGE, "ram"))  # answered at once: already sent
    assert served[-1] == ("ram", 3 * PAGE, PAGE) and pc.already_sent == 1
    assert pc.requests == 3


def test_ram_save_takes_requested_pages_once_and_the_push_continues_after_them(guests):
    pc = _source(guests)
    ram = pc.ram
    assert ram.take_pages("ram", 10 * PAGE, 2 * PAGE).tolist() == [10, 11]
    assert ram.take_pages("ram", 11 * PAGE, 2 * PAGE).tolist() == [12]  # 11 went already
    ram.jump_to("ram", 13)
    assert ram.next_batch(1)[1].tolist() == [13]
    ram.jump_to("ram", 9)
    assert ram.next_batch(4)[1].tolist() == [9, 14, 15, 16]  # skips what requests sent


def test_discards_cover_every_page_still_to_send_one_command_per_block_at_least(guests):
    pc = _source(guests)
    bitmap = pc.ram.blocks[0].bitmap
    bitmap[:] = False
    bitmap[[3, 4, 5, 9]] = True
    [cmd] = pc.discards()
    assert cmd.block == "ram" and cmd.ranges == ((3 * PAGE, 3 * PAGE), (9 * PAGE, PAGE))
    bitmap[:] = False
    [cmd] = pc.discards()
    assert cmd.ranges == ((0, 0),)  # QEMU 7.2 needs a discard even when nothing is dirty
    bitmap[::2] = True
    assert [len(c.ranges) for c in pc.discards()] == [12] * 10 + [8]
    assert np.count_nonzero(bitmap) == 128
