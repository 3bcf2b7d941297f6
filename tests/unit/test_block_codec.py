"""The `block` section codec (harness.protocol.block) inside the main stream decoder: the
order QEMU 7.2 sends (B2-B4), chunks written where they belong, and bad records refused
with QEMU's words, whatever the chunking of the input."""

from __future__ import annotations

import numpy as np
import pytest

from harness.protocol import RemoteProtocolError, SectionType, StreamEncoder
from harness.protocol.block import (
    CHUNK,
    CHUNK_SECTORS,
    EOS,
    BlockChunk,
    BlockProgress,
    chunk_header,
    encode_chunk,
    encode_progress,
)
from harness.protocol.decoder import StreamDecoder
from harness.protocol.events import RamBlockInfo

S = SectionType


def _stream(records: bytes, *, ram_mb: int = 1) -> bytes:
    """header, config, START block, START ram, PART block(records), END block, END ram, EOF."""
    enc = StreamEncoder()
    out = enc.header() + enc.configuration("none")
    out += enc.section_header(S.SECTION_START, 1, "block", 0, 1) + EOS + enc.footer(1)
    out += enc.ram_start(2, [RamBlockInfo("ram", ram_mb << 20)])
    out += enc.section_header(S.SECTION_PART, 1) + records + EOS + enc.footer(1)
    out += enc.ram_section(S.SECTION_PART, 2, b"")
    out += enc.section_header(S.SECTION_END, 1) + encode_progress(100) + EOS + enc.footer(1)
    out += enc.ram_section(S.SECTION_END, 2, b"")
    return out + enc.eof()


def _decode(data: bytes, step: int, **options):  # type: ignore[no-untyped-def]
    dec = StreamDecoder(**options)
    events = []
    for at in range(0, len(data), step):
        dec.receive_data(data[at:at + step])
        events += dec.events()
    dec.receive_data(b"")
    return events + dec.events()


@pytest.mark.parametrize("step", [7, 1 << 16, 1 << 22])
def test_chunks_land_where_sent(step: int) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, CHUNK, dtype=np.uint8)
    disk = np.full(3 * CHUNK, 0xAA, dtype=np.uint8)
    records = (encode_progress(0) + encode_chunk("d0", 2 * CHUNK_SECTORS, data.tobytes())
               + encode_chunk("d0", 0, None) + encode_progress(66))
    events = _decode(_stream(records), step, disks={"d0": disk})
    blocks = [e for e in events if isinstance(e, (BlockChunk, BlockProgress))]
    assert blocks == [BlockProgress(0), BlockChunk("d0", 4096), BlockChunk("d0", 0, True),
                      BlockProgress(66), BlockProgress(100)]
    assert np.array_equal(disk[2 * CHUNK:], data)
    assert not disk[:CHUNK].any() and (disk[CHUNK:2 * CHUNK] == 0xAA).all()


@pytest.mark.parametrize(("records", "disks", "words"), [
    (encode_chunk("d1", 0, None), {"d0": 2}, "Error unknown block device d1"),
    (encode_progress(0)[:7] + b"\x10", {"d0": 2}, "Unknown block migration flags: 0x10"),
    (chunk_header("d0", 2 * CHUNK_SECTORS, zero=True), {"d0": 2}, "runs past its end"),
    (chunk_header("d0", CHUNK_SECTORS + 1) + bytes(CHUNK), {"d0": 2}, "runs past its end"),
], ids=["unknown-device", "unknown-flags", "zero-past-end", "data-past-end"])
def test_bad_records_refused(records: bytes, disks: dict[str, int], words: str) -> None:
    arrays = {n: np.zeros(size * CHUNK, dtype=np.uint8) for n, size in disks.items()}
    with pytest.raises(RemoteProtocolError) as info:
        _decode(_stream(records), 1 << 20, disks=arrays)
    text = str(info.value)
    assert words in text and "error while loading state section id 1(block)" in text


def test_truncated_chunk_is_an_end_of_stream() -> None:
    data = _stream(chunk_header("d0", 0) + bytes(CHUNK))
    cut = data.index(chunk_header("d0", 0)) + 1000
    with pytest.raises(RemoteProtocolError, match="unexpected end"):
        _decode(data[:cut], 1 << 20)
