"""harness.protocol.multifd: QEMU 7.2's multifd framing, checks and compression streams
(facts M6-M8, M11-M13 of reference/qemu-7.2-production-features.md)."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.protocol.multifd import (
    HEADER_SIZE,
    INIT_SIZE,
    NEED_DATA,
    ChannelDecoder,
    MultifdError,
    MultifdInit,
    PacketHeader,
    PageCompressor,
    compressions,
)

BLOCKS = {"ram": 1 << 20}


def _channel(method: str, packets: list[list[bytes]], channel_id: int = 0) -> bytes:
    """A channel as a 7.2 source writes it: init, packets, then an empty SYNC packet
    that carries the previous packet's stale ramblock and size (facts M8)."""
    compressor = PageCompressor(method)
    wire, size = MultifdInit(channel_id).pack(), 0
    for num, pages in enumerate(packets):
        payload = compressor.compress(pages)
        size = len(payload) if method != "none" else len(pages) * 4096
        offsets = [(num * 16 + i) * 4096 for i in range(len(pages))]
        wire += PacketHeader(compressor.flag, len(pages), size, num, "ram", offsets).pack()
        wire += payload
    return wire + PacketHeader(compressor.flag | 1, 0, size, len(packets), "ram").pack()


def _events(decoder: ChannelDecoder, wire: bytes, cuts: list[int]) -> list[object]:
    events: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        decoder.receive_data(wire[start:end])
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)
    return events


@pytest.mark.parametrize("method", compressions())
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_channel_round_trips_in_any_chunking(method: str, data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    packets = [[rng.randbytes(4096) if data.draw(st.booleans()) else bytes(4096)
                for _ in range(data.draw(st.integers(1, 16)))]
               for _ in range(data.draw(st.integers(1, 4)))]
    wire = _channel(method, packets, channel_id=3)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=8))))
    events = _events(ChannelDecoder(compression=method, channels=4, blocks=BLOCKS), wire, cuts)
    assert isinstance(events[0], MultifdInit) and events[0].channel_id == 3
    assert [e.pages for e in events[1:-1]] == [b"".join(p) for p in packets]  # type: ignore[attr-defined]
    last = events[-1].header  # type: ignore[attr-defined]
    assert last.sync and last.normal_pages == 0 and last.payload_size == 0


def test_layout_sizes_and_wire_bytes() -> None:
    header = PacketHeader(0, 3, 3 * 4096, 7, "pc.ram", (0, 4096, 8192))
    assert len(MultifdInit(1).pack()) == INIT_SIZE == 64
    assert len(header.pack()) == HEADER_SIZE == 1344
    assert header.pack()[:8] == bytes.fromhex("1122334400000001")
    assert header.wire_bytes == 1344 + 3 * 4096
    assert PacketHeader.unpack(header.pack()) == header


def test_compression_streams_start_as_qemus() -> None:
    """M12: zlib at 7.2's default level 1 opens with 78 01; M13: a zstd frame magic."""
    page = os.urandom(4096)
    assert PageCompressor("zlib", 1).compress([page])[:2] == b"\x78\x01"
    assert PageCompressor("zlib", 1).compress([page])[-4:] == b"\x00\x00\xff\xff"
    if "zstd" in compressions():
        assert PageCompressor("zstd", 1).compress([page])[:4] == bytes.fromhex("28b52ffd")


def _header_bytes(**fields: object) -> bytes:
    base: dict[str, object] = {"flags": 0, "normal_pages": 1, "next_packet_size": 4096,
                               "packet_num": 1, "ramblock": "ram", "offsets": [0]}
    base.update(fields)
    return PacketHeader(**base).pack()  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "message"), [
    ({"magic": 0x5145564d}, "multifd: received packet magic 5145564d and expected magic 11223344"),
    ({"version": 2}, "multifd: received packet version 2 and expected version 1"),
    ({"pages_alloc": 129}, "multifd: received packet with size 129 and expected a size of 128"),
    ({"pages_alloc": 2, "normal_pages": 3, "offsets": [0, 4096, 8192]},
     "multifd: received packet with 3 pages and expected maximum pages are 2"),
    ({"ramblock": "pc.ram"}, "multifd: unknown ram block pc.ram"),
    ({"offsets": [1 << 20]}, "multifd: offset too long 1048576 (max 0x100000)"),
    ({"flags": 0x2}, "multifd 5: flags received 2 flags expected 0"),
])
def test_header_checks_in_qemus_words(fields: dict[str, object], message: str) -> None:
    with pytest.raises(MultifdError) as caught:
        PacketHeader.parse(_header_bytes(**fields), blocks=BLOCKS, channel=5)
    assert caught.value.message == message


def test_empty_packet_stale_fields_are_not_checked() -> None:
    """M8: an empty SYNC packet repeats an old ramblock/size; 7.2 checks neither."""
    raw = _header_bytes(flags=1, normal_pages=0, ramblock="gone", offsets=[1 << 40])
    header = PacketHeader.parse(raw, blocks=BLOCKS, channel=0)
    assert header.sync and header.payload_size == 0
    # nor the compression bit: 7.2's empty SYNC of a zlib channel has flags 0x1 only
    assert PacketHeader.parse(raw, blocks=BLOCKS, channel=0, compression="zlib").sync


def test_init_checks() -> None:
    good = MultifdInit(1).pack()
    assert MultifdInit.parse(good, channels=2).channel_id == 1
    with pytest.raises(MultifdError, match="received packet magic 5145564d expected 11223344"):
        MultifdInit.parse(b"QEVM" + good[4:], channels=2)
    with pytest.raises(MultifdError, match=r"received uuid '00000000-0000-0000-0000-000000000000' "
                       r"and expected uuid '11111111-1111-1111-1111-111111111111' for channel 1"):
        MultifdInit.parse(good, channels=2, uuid=b"\x11" * 16)
    with pytest.raises(MultifdError, match="channel id 2 but only 2 channels"):
        MultifdInit.parse(MultifdInit(2).pack(), channels=2)


def test_short_compressed_payload_fails_and_decoder_stays_failed() -> None:
    compressor = PageCompressor("zlib")
    payload = compressor.compress([os.urandom(4096)])
    wire = (MultifdInit(0).pack()
            + PacketHeader(0x2, 2, len(payload), 1, "ram", [0, 4096]).pack() + payload)
    decoder = ChannelDecoder(compression="zlib", channels=1, blocks=BLOCKS)
    decoder.receive_data(wire)
    assert isinstance(decoder.next_event(), MultifdInit)
    with pytest.raises(MultifdError, match="multifd 0: packet size received 4096 size expected 8192"):
        decoder.next_event()
    with pytest.raises(MultifdError):
        decoder.receive_data(b"x")
