"""The postcopy captures decode into the sequences of qemu-7.2-interop.md section 4."""

from __future__ import annotations

import pytest

from harness.protocol import (
    Command,
    DeviceState,
    EndOfStream,
    OpenReturnPath,
    PackagedEnd,
    PackagedStart,
    Ping,
    Pong,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    PostcopyRun,
    RamPages,
    ReqPages,
    ReqPagesId,
    ReturnPathDecoder,
    Shut,
    VmDescription,
    decode_all,
)
from harness.protocol.commands import Packaged

pytestmark = pytest.mark.codec  # run again on the Python page path (.ci/run)


def _skeleton(events):
    """Commands, package brackets, full devices, EOF; RAM sections left out."""
    out = []
    for e in events:
        if isinstance(e, Command):
            out.append(e)
        elif isinstance(e, (PackagedStart, PackagedEnd)):
            out.append(type(e).__name__)
        elif isinstance(e, DeviceState):
            out.append("device:" + e.idstr)
        elif isinstance(e, (EndOfStream, VmDescription)):
            out.append(type(e).__name__)
    return out


def _fwd(vectors, name):
    return decode_all((vectors / "postcopy" / f"{name}.fwd.bin").read_bytes(),
                      skip_unknown_devices=True)


def _rp(vectors, name):
    decoder = ReturnPathDecoder()
    decoder.receive_data((vectors / "postcopy" / f"{name}.rp.bin").read_bytes())
    decoder.receive_data(b"")
    return decoder.events()


PC_BLOCKS = ["pc.ram", "/rom@etc/acpi/tables", "pc.bios", "pc.rom", "/rom@etc/table-loader",
             "/rom@etc/acpi/rsdp"]


@pytest.mark.parametrize("name", ["real-pc-m64-postcopy-requests",
                                  "real-pc-m64-postcopy-unthrottled"])
def test_real_pc_postcopy_forward_sequence(vectors, name):
    sk = _skeleton(_fwd(vectors, name))
    assert sk[:3] == [OpenReturnPath(), Ping(1), PostcopyAdvise(4096, 4096)]
    discards = [c for c in sk if isinstance(c, PostcopyRamDiscard)]
    assert [d.block for d in discards] == PC_BLOCKS  # one command per RAM block
    assert all(d.ranges for d in discards)
    rom = {d.block: d.ranges for d in discards}
    assert rom["pc.bios"] == ((0, 0x40000),)  # ROM blocks: (0, whole size)
    i = sk.index(Ping(2))
    assert isinstance(sk[i + 1], Packaged) and sk[i + 2] == "PackagedStart"
    assert sk[i + 3] == PostcopyListen()
    inner = sk[i + 3:sk.index("PackagedEnd")]
    assert inner[-2:] == [Ping(3), PostcopyRun()]
    assert inner[1] == "device:timer" and inner[-3] == "device:globalstate"
    assert len([x for x in inner if str(x).startswith("device:")]) == 30
    assert sk[sk.index("PackagedEnd") + 1:] == [Ping(4), "EndOfStream"]  # no vmdesc


def test_real_pc_postcopy_requests_return_path(vectors):
    rp = _rp(vectors, "real-pc-m64-postcopy-requests")
    assert rp[:4] == [Pong(1), Pong(2), Pong(4), Pong(3)]
    assert rp[4] == ReqPagesId(0, 0x1000, "pc.ram")
    assert rp[5:12] == [ReqPages(a, 0x1000) for a in
                        (0xFF000, 0xFD000, 0xE8000, 0xF6000, 0xFC000, 0xFB000, 0xF5000)]
    assert rp[12:] == [Shut(0)]


def test_real_pc_postcopy_requested_pages_are_sent(vectors):
    events = _fwd(vectors, "real-pc-m64-postcopy-requests")
    run_at = next(e.offset for e in events if isinstance(e, PostcopyRun))
    sent = set()
    for e in events:
        if isinstance(e, RamPages) and e.block == "pc.ram" and e.offset > run_at:
            sent.update(e.offsets.tolist())
    for msg in _rp(vectors, "real-pc-m64-postcopy-requests"):
        if isinstance(msg, (ReqPagesId, ReqPages)):
            assert msg.start in sent


def test_unthrottled_return_path_has_only_pongs_and_shut(vectors):
    assert _rp(vectors, "real-pc-m64-postcopy-unthrottled") == [
        Pong(1), Pong(2), Pong(4), Pong(3), Shut(0)]


@pytest.mark.parametrize("name,ping4", [("real-none-m16-postcopy-xp", True),
                                        ("real-src-to-pydst-none-m16", True),
                                        ("pysrc-to-real-dst-none-m16", False)])
def test_none_postcopy_forward_sequence(vectors, name, ping4):
    sk = _skeleton(_fwd(vectors, name))
    expected = [OpenReturnPath(), Ping(1), PostcopyAdvise(4096, 4096),
                PostcopyRamDiscard("ram", sk[3].ranges), Ping(2), sk[5], "PackagedStart",
                PostcopyListen(), "device:timer", "device:globalstate", Ping(3), PostcopyRun(),
                "PackagedEnd"] + ([Ping(4)] if ping4 else []) + ["EndOfStream"]
    assert sk == expected
    assert isinstance(sk[5], Packaged)


def test_none_postcopy_return_paths(vectors):
    assert _rp(vectors, "real-none-m16-postcopy-xp") == [
        Pong(1), Pong(2), Pong(3), Pong(4), ReqPagesId(0x800000, 0x1000, "ram"), Shut(0)]
    assert _rp(vectors, "pysrc-to-real-dst-none-m16") == [
        Pong(1), Pong(2), Pong(3), ReqPagesId(0x11000, 0x1000, "ram"), ReqPages(0x13000, 0x1000),
        ReqPages(0x800000, 0x1000), ReqPages(0x10000, 0x1000), Shut(0)]
    assert _rp(vectors, "real-src-to-pydst-none-m16") == [
        Pong(1), Pong(2), Pong(3), ReqPagesId(0xF01000, 0x1000, "ram"), Pong(4),
        ReqPages(0xF03000, 0x1000), ReqPages(0x700000, 0x1000), Shut(0)]


def test_precopy_with_return_path(vectors):
    sk = _skeleton(_fwd(vectors, "real-none-m16-precopy-returnpath"))
    assert sk == [OpenReturnPath(), Ping(1), "device:timer", "device:globalstate",
                  "EndOfStream", "VmDescription"]
    assert _rp(vectors, "real-none-m16-precopy-returnpath") == [Pong(1), Shut(0)]


def test_real_source_answers_requests_with_loader_pages(vectors):
    """real-src-to-pydst: the pages asked for carry the loader pattern at 0xf00000."""
    from tests.conftest import pattern_bytes

    data = (vectors / "postcopy" / "real-src-to-pydst-none-m16.fwd.bin").read_bytes()
    from harness.protocol import StreamDecoder

    decoder = StreamDecoder()
    decoder.receive_data(data)
    decoder.receive_data(b"")
    decoder.events()
    ram = decoder.ram["ram"]
    assert bytes(ram[0xF00000:0xF04000]) == pattern_bytes()
