"""The decoder without guest RAM (`ram="discard"`): same checks, no pages kept, record spans.

A proxy between the peers frames the stream with this mode, so it must see exactly what
a loading decoder sees (the same events, the same errors) and say where every page record
lies, whatever the chunking.  `successor()` continues a stream on a new connection.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.protocol import (
    LocalProtocolError,
    PostcopyResume,
    RamBlockInfo,
    RamFlag,
    RamPages,
    RecvBitmapRequest,
    RemoteProtocolError,
    SectionHeader,
    SectionType,
    StreamDecoder,
    StreamEncoder,
    decode_all,
    encode_command,
    xbzrle,
)
from tests.unit.test_roundtrip import COMPOSITE

pytestmark = pytest.mark.codec  # run again on the Python page path (.ci/run)

PAGE = 4096


def mixed_stream(seed: int = 3, pages: int = 600) -> bytes:
    """Long runs and interleaved pages, zero pages, an XBZRLE and a compressed record."""
    rng = np.random.default_rng(seed)
    mem = np.zeros(pages * PAGE, np.uint8)
    kinds = rng.random(pages) < 0.5
    kinds[50:300] = True
    kinds[300:420] = False
    for p in np.flatnonzero(kinds):
        mem[p * PAGE:(p + 1) * PAGE] = rng.integers(0, 256, PAGE, dtype=np.uint8)
    enc = StreamEncoder()
    records = bytearray()
    enc.ram.save_pages(records, "ram", mem, range(pages))
    old = bytes(mem[PAGE * 60:PAGE * 61])
    new = bytearray(old)
    new[7:19] = b"hello, world"
    enc.ram.save_xbzrle_page(records, "ram", 60 * PAGE, xbzrle.encode(old, bytes(new)))
    enc.ram.save_compressed_page(records, "ram", 2 * PAGE, bytes(PAGE))
    return (enc.header() + enc.configuration("none")
            + enc.ram_start(2, [RamBlockInfo("ram", mem.size)])
            + enc.ram_section(SectionType.SECTION_PART, 2, records)
            + enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof())


MIXED = mixed_stream()


def decode_chunked(data: bytes, cuts: list[int], **options: object) -> list:
    decoder = StreamDecoder(**options)  # type: ignore[arg-type]
    events = []
    bounds = [*sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    pos = 0
    for end in bounds:
        decoder.receive_data(data[pos:end])
        events += decoder.events()
        pos = end
    decoder.receive_data(b"")
    events += decoder.events()
    return events


def pages_of(events: list) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    batches = [e for e in events if isinstance(e, RamPages)]
    spans = [b.spans for b in batches]
    return (np.concatenate([b.offsets for b in batches]),
            np.concatenate([b.kinds for b in batches]),
            np.concatenate(spans) if all(s is not None for s in spans) else None)


def check_spans(data: bytes, offsets: np.ndarray, kinds: np.ndarray, spans: np.ndarray) -> None:
    """Each span starts with its record's word, and its payload has the kind's size."""
    for (start, payload, end), kind, offset in zip(spans.tolist(), kinds.tolist(),
                                                    offsets.tolist(), strict=True):
        word = int.from_bytes(data[start:start + 8], "big")
        assert word & ~(PAGE - 1) == offset
        assert word & (PAGE - 1) & ~int(RamFlag.CONTINUE) == kind
        named = not word & RamFlag.CONTINUE
        assert payload - start == 8 + ((1 + data[start + 8]) if named else 0)
        if kind == RamFlag.PAGE:
            assert end - payload == PAGE
        elif kind == RamFlag.ZERO:
            assert end - payload == 1


def test_discarding_sees_what_loading_sees():
    for stream in (COMPOSITE, MIXED):
        loaded = decode_all(stream)
        discarded = decode_all(stream, ram="discard")
        others = [(e, e.offset) for e in loaded if not isinstance(e, RamPages)]
        assert others == [(e, e.offset) for e in discarded if not isinstance(e, RamPages)]
        offsets, kinds, _ = pages_of(loaded)
        d_offsets, d_kinds, spans = pages_of(discarded)
        assert offsets.tolist() == d_offsets.tolist() and kinds.tolist() == d_kinds.tolist()
        assert spans is not None
        check_spans(stream, d_offsets, d_kinds, spans)


def test_a_discarding_decoder_keeps_no_ram():
    decoder = StreamDecoder(ram="discard")
    decoder.receive_data(MIXED)
    decoder.receive_data(b"")
    decoder.events()
    assert decoder.ram == {}
    assert decoder.loader.block_lengths == {"ram": 600 * PAGE}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(MIXED)), max_size=40))
def test_spans_do_not_depend_on_the_chunking(cuts):
    reference = pages_of(decode_all(MIXED, ram="discard"))
    chunked = pages_of(decode_chunked(MIXED, cuts, ram="discard"))
    for a, b in zip(reference, chunked, strict=True):
        assert a is not None and b is not None
        assert np.array_equal(a, b)


def test_spans_cover_every_record_of_the_mixed_stream():
    _, kinds, spans = pages_of(decode_all(MIXED, ram="discard"))
    assert spans is not None and spans.shape == (602, 3)
    assert set(kinds.tolist()) == {int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE),
                                   int(RamFlag.COMPRESS_PAGE)}
    # within the PART section the records follow each other without a gap
    assert spans[1:, 0].tolist() == spans[:-1, 2].tolist()


def _first_record() -> int:
    """Where the first page record of the PART section starts (it names its block)."""
    part = next(e for e in decode_all(MIXED) if isinstance(e, SectionHeader)
                and e.type == SectionType.SECTION_PART)
    return part.offset + 5


@pytest.mark.parametrize("change,message", [
    ({9: b"\x03rom"}, "Can't find block rom"),
    ({4: b"\x0f"}, "Illegal RAM offset f000000"),
    ({8: b"\x88"}, "RAM_SAVE_FLAG_HOOK in flags 0x88 outside an RDMA migration"),
])
def test_discarding_refuses_what_loading_refuses(change, message):
    bad = bytearray(MIXED)
    at = _first_record()
    for delta, data in change.items():
        bad[at + delta - 1:at + delta - 1 + len(data)] = data
    offsets = []
    for options in ({}, {"ram": "discard"}):
        with pytest.raises(RemoteProtocolError, match=message) as err:
            decode_all(bytes(bad), **options)
        offsets.append(err.value.offset)
    assert offsets[0] == offsets[1] == at


def test_ram_must_be_blocks_none_or_discard():
    with pytest.raises(ValueError, match="ram='keep'"):
        StreamDecoder(ram="keep")


def test_buffered_gives_the_input_bytes_it_still_holds():
    decoder = StreamDecoder(ram="discard")
    decoder.receive_data(COMPOSITE[:100])
    decoder.events()
    with decoder.buffered(8, 17) as view:
        assert bytes(view) == COMPOSITE[8:17]
    with pytest.raises(LocalProtocolError, match=r"bytes \[90, 200\) are not held"):
        decoder.buffered(90, 200)


def test_a_successor_continues_the_stream_on_a_new_connection():
    """Postcopy recovery: the new channel starts with commands, then PART of known ids."""
    enc = StreamEncoder()
    mem = np.arange(4 * PAGE, dtype=np.uint32).view(np.uint8)[:4 * PAGE]
    first = enc.header() + enc.configuration("none") + enc.ram_start(
        5, [RamBlockInfo("ram", 4 * PAGE)])
    decoder = StreamDecoder(ram="discard")
    decoder.receive_data(first + b"\x02\x00\x00")  # the connection breaks inside a header
    decoder.events()
    records = bytearray()
    enc.ram.reset()
    enc.ram.save_pages(records, "ram", mem, range(4))
    second = (encode_command(RecvBitmapRequest("ram")) + encode_command(PostcopyResume())
              + enc.ram_section(SectionType.SECTION_PART, 5, records)
              + enc.ram_section(SectionType.SECTION_END, 5, b"") + enc.eof())
    with pytest.raises(RemoteProtocolError, match="Not a migration stream"):
        decode_all(second, ram="discard")
    successor = decoder.successor()
    successor.receive_data(second)
    successor.receive_data(b"")
    events = successor.events()
    assert [type(e).__name__ for e in events[:3]] == ["RecvBitmapRequest", "PostcopyResume",
                                                      "SectionHeader"]
    assert events[0].offset == 0
    header = events[2]
    assert isinstance(header, SectionHeader) and header.idstr == "ram"
    offsets, _, spans = pages_of(events)
    assert offsets.tolist() == [0, PAGE, 2 * PAGE, 3 * PAGE] and spans is not None
    assert decoder.offset == len(first)  # the old decoder is left as it was
