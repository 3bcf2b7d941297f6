"""`harness analyze` with multifd captures: the channels' pages go into RAM at the main
stream's RAM EOS markers, so a page that moved between the main stream (zero) and a channel
(non-zero) from one section to the next ends as a destination would have it; the summary
counts channels, packets, pages and SYNC packets; a bad channel names its file."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from harness.analyze import analyze_file
from harness.protocol import ProtocolError, SectionType
from harness.protocol.encoder import StreamEncoder
from harness.protocol.events import RamBlockInfo
from harness.protocol.multifd import FLAG_SYNC, PAGE_SIZE, MultifdInit, PacketHeader
from tests.conftest import REPO

PAGES = 8


def zero_record(page: int) -> bytes:
    """be64 offset | ZERO, the block's name (no CONTINUE), the fill byte (ram.c)."""
    return struct.pack(">Q", page * PAGE_SIZE | 0x02) + b"\x03ram\x00"


def packet(num: int, pages: dict[int, int], sync: bool = False) -> bytes:
    offsets = sorted(pages)
    header = PacketHeader(FLAG_SYNC if sync else 0, len(offsets), len(offsets) * PAGE_SIZE,
                          num, "ram" if offsets else "", [p * PAGE_SIZE for p in offsets])
    return header.pack() + b"".join(bytes([pages[p]]) * PAGE_SIZE for p in offsets)


def recording(tmp_path):
    """Setup, two iterations: page 2 non-zero in section 2's channel... see the asserts."""
    enc = StreamEncoder()
    main = (enc.header() + enc.ram_start(1, [RamBlockInfo("ram", PAGES * PAGE_SIZE)])
            + enc.ram_section(SectionType.SECTION_PART, 1, zero_record(2))
            + enc.ram_section(SectionType.SECTION_END, 1, zero_record(3)) + enc.eof())
    channel0 = (MultifdInit(0).pack() + packet(1, {}, sync=True)              # setup
                + packet(3, {3: 0xBB, 5: 0x55}) + packet(4, {}, sync=True)  # section 2
                + packet(6, {2: 0xCC}, sync=True))                            # section 3
    channel1 = (MultifdInit(1).pack() + packet(2, {}, sync=True)
                + packet(5, {6: 0x66}, sync=True) + packet(7, {}, sync=True)
                + packet(8, {7: 0x77}))  # after its last SYNC: applied at the end
    files = {"stream.fwd.bin": main, "stream.multifd-0.bin": channel0,
             "stream.multifd-1.bin": channel1}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path / "stream.fwd.bin", [tmp_path / "stream.multifd-0.bin",
                                          tmp_path / "stream.multifd-1.bin"]


def test_pages_land_section_by_section(tmp_path):
    stream, channels = recording(tmp_path)
    result = analyze_file(stream, multifd=channels)
    pages = result.ram["ram"].reshape(-1, PAGE_SIZE)
    # page 2: zero on main in section 2, then 0xCC from channel 0 in section 3 (wins);
    # page 3: 0xBB from channel 0 in section 2, then zero on main in section 3 (wins)
    assert [int(pages[i, 0]) for i in range(PAGES)] == [0, 0, 0xCC, 0, 0, 0x55, 0x66, 0x77]
    assert all(np.all(pages[i] == pages[i, 0]) for i in range(PAGES))
    summary = result.to_json()["multifd"]
    assert (summary["packets"], summary["pages"], summary["syncs"], summary["ram-sections"]) \
        == (8, 5, 6, 3)
    assert [(c["id"], c["syncs"], c["trailing"]) for c in summary["channels"]] == [
        (0, 3, 0), (1, 3, 0)]


def test_the_cli_picks_the_channels_up_beside_stream_fwd_bin(tmp_path):
    stream, _ = recording(tmp_path)
    out = subprocess.run([sys.executable, "-m", "harness", "analyze", str(stream)],
                         capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    assert "multifd: 2 channels, 8 packets, 5 pages, 6 SYNC packets" in out.stdout
    assert "channel 1: " in out.stdout and "compression none" in out.stdout


def test_a_bad_packet_names_the_channel_file(tmp_path):
    stream, channels = recording(tmp_path)
    data = bytearray(channels[1].read_bytes())
    data[64 + 1344 + 3] ^= 0x01  # the second packet's magic
    channels[1].write_bytes(bytes(data))
    with pytest.raises(ProtocolError) as err:
        analyze_file(stream, multifd=channels)
    assert "received packet magic 11223345 and expected magic 11223344" in str(err.value)
    assert str(channels[1]) in str(err.value)
