"""The proxy's multifd framer: a channel packed with the codec, fed in any chunking, gives
the same frames (MULTIFD_INIT, then one MULTIFD_PACKET per packet, header | payload) and
never forwards part of a packet; bad input loses the framing with the codec's words.  And a
scenario naming a multifd channel that will not exist is refused in one line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.faults.multifd import MULTIFD, MULTIFD_UNKNOWN, MultifdFramer
from harness.protocol.multifd import (
    FLAG_SYNC,
    HEADER_SIZE,
    INIT_SIZE,
    PAGE_SIZE,
    MultifdInit,
    PacketHeader,
    PageCompressor,
)
from harness.scenario import ScenarioError, parse_scenario
from tests.unit.test_proxy_framing import frame_all


def packed_channel(channel_id: int = 1, method: str = "none") -> tuple[bytes, list[tuple]]:
    """A channel as QEMU 7.2 sends it: init, a packet of 3 pages, a SYNC riding on 1 page,
    the empty packet that follows it with the same number and stale fields (facts M8/M11),
    an empty SYNC.  Also each frame's (name, start, payload, end)."""
    compressor = PageCompressor(method)
    out = bytearray(MultifdInit(channel_id).pack())
    frames = [("MULTIFD_INIT", 0, INIT_SIZE, INIT_SIZE)]
    packets = [(0, 3, 7), (FLAG_SYNC, 1, 9), (0, 0, 9), (FLAG_SYNC, 0, 12)]
    for flags, pages, num in packets:
        raw = [bytes([num + i]) * PAGE_SIZE for i in range(pages)]
        payload = compressor.compress(raw) if pages else b""
        header = PacketHeader(flags | compressor.flag, pages, len(payload) or 524288, num,
                              "ram" if pages else "", [i * PAGE_SIZE for i in range(pages)])
        start = len(out)
        out += header.pack() + payload
        frames.append(("MULTIFD_PACKET", start, start + HEADER_SIZE, len(out)))
    return bytes(out), frames


def shape(framer: MultifdFramer, data: bytes, cuts: list[int]) -> list[tuple]:
    got = frame_all(framer, data, cuts, release=True)
    return [(f.name, f.start, f.payload, f.end) for f in got.frames]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 8000), max_size=12), st.sampled_from(["none", "zlib"]))
def test_any_chunking_gives_the_same_frames(cuts: list[int], method: str):
    data, frames = packed_channel(1, method)
    framer = MultifdFramer(channels=2)
    assert shape(framer, data, cuts) == frames
    assert framer.flow == "multifd-1" and framer.channel_id == 1
    assert framer.counters() == {"packets": 4, "pages": 4, "syncs": 2,
                                 "payload-bytes": frames[2][3] - frames[2][2]
                                 + frames[1][3] - frames[1][2]}
    assert framer.lost is None


def test_no_part_of_a_packet_is_released_before_it_is_whole():
    data, frames = packed_channel(0)
    framer = MultifdFramer(channels=2)
    first_packet_end = frames[1][3]
    got = frame_all(framer, data[:first_packet_end - 1], end=False)
    assert got.boundary == frames[1][1] == INIT_SIZE  # the init only
    assert framer.flow == "multifd-0"
    fresh = MultifdFramer(channels=2)
    assert frame_all(fresh, data[:INIT_SIZE - 1], end=False).boundary == 0
    assert fresh.flow == MULTIFD and fresh.channel_id is None


def test_an_id_beyond_the_channel_count_or_a_bad_magic_loses_the_framing():
    data, _ = packed_channel(3)
    framer = MultifdFramer(channels=2)
    got = frame_all(framer, data)
    assert framer.flow == MULTIFD_UNKNOWN
    assert got.lost is not None and "channel id 3" in got.lost and "offset 0" in got.lost
    data, frames = packed_channel(0)
    bad = bytearray(data)
    bad[frames[2][1]] ^= 0xFF  # the second packet's magic
    framer = MultifdFramer(channels=2)
    got = frame_all(framer, bytes(bad))
    assert [f.name for f in got.frames] == ["MULTIFD_INIT", "MULTIFD_PACKET"]
    assert got.lost == (f"framing lost at offset {frames[2][1]}: multifd: received packet "
                        f"magic ee223344 and expected magic 11223344")


SCENARIO = """name: m
guest: {{memory: 16MiB}}
source: {{kind: qemu}}
destination: {{kind: qemu}}
{settings}
steps:
  - on: {{frame: MULTIFD_PACKET, channel: multifd-1}}
    fault: {{kind: net.corrupt, channel: {channel}, frame: MULTIFD_PACKET, where: header}}
"""


@pytest.mark.parametrize(("settings", "channel", "says"), [
    ("capabilities: {multifd: true}", "multifd-1", None),
    ("capabilities: {multifd: true}\nparameters: {multifd-channels: 1}", "multifd-0",
     ("steps[0].on.channel: multifd-1 names no channel: multifd-channels is 1, so the "
      "ids are 0 to 0")),
    ("", "multifd-1",
     "steps[0].on.channel: multifd-1 needs capabilities: {multifd: true}"),
    ("capabilities: {multifd: true}", "main",
     "MULTIFD_PACKET travels on a multifd channel only"),
])
def test_a_multifd_channel_is_refused_in_one_line_where_there_is_none(settings, channel, says):
    text = SCENARIO.format(settings=settings, channel=channel)
    if says is None:
        assert parse_scenario(text, file="f.yaml").multifd_channels() == 2
        return
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, file="f.yaml")
    first = str(err.value).splitlines()[0]
    assert first.startswith("f.yaml:") and says in first, str(err.value)
