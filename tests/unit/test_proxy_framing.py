"""The proxy's framing: where each frame lies, from the codec's events, whatever the chunking.

Streams made with the codec (StreamEncoder, savevm's PausedStream), the real QEMU 7.2
streams of ../shared/qemu-vectors (skipped when absent), postcopy captures in both
directions, a postcopy-recovery connection that continues a stream, and garbage.  Every
frame is checked against the bytes at its offsets, so a frame in the wrong place fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.faults.framing import (
    Frame,
    Framer,
    Framing,
    ReturnPathFramer,
    StreamFramer,
    StreamMemory,
    frame_flows,
)
from harness.protocol import (
    MigCmd,
    Pong,
    PostcopyResume,
    RamBlockInfo,
    RamFlag,
    RecvBitmap,
    RecvBitmapRequest,
    ReqPages,
    ReqPagesId,
    ReturnPathDecoder,
    SectionType,
    Shut,
    StreamEncoder,
    decode_all,
    encode_command,
    encode_rp,
    pack_received_bitmap,
)
from harness.protocol.events import RamPages
from harness.protocol.savevm import PausedStream
from harness.scenario.names import FRAME_NAMES
from tests.unit.test_ram_discard import MIXED
from tests.unit.test_roundtrip import COMPOSITE

PAGE = 4096


def frame_all(framer: Framer, data: bytes, cuts: list[int] | tuple[int, ...] = (), *,
              end: bool = True, release: bool = False) -> Framing:
    """Feed `data` cut at `cuts`, then (with `end`) the end of input; everything framed, in
    order.  With `release`, what each take framed is released, as a pump does."""
    out = Framing()
    bounds = [*sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    pos = 0
    for stop in bounds:
        chunk = data[pos:stop]
        pos = stop

        def recv(view: memoryview, chunk: bytes = chunk) -> int:
            view[:len(chunk)] = chunk
            return len(chunk)

        framer.receive_into(recv, len(chunk))
        got = framer.take()
        if release:
            framer.release(got.boundary)
        _collect(out, got)
    if end:
        framer.end_of_input()
        _collect(out, framer.take())
    return out


def _collect(out: Framing, got: Framing) -> None:
    out.frames += got.frames
    out.pages += got.pages
    out.boundary = got.boundary
    out.lost = out.lost or got.lost


def spans(framing: Framing) -> np.ndarray:
    return np.concatenate([b.spans for b in framing.pages]) if framing.pages else \
        np.zeros((0, 3), np.int64)


def be(data: bytes, at: int, n: int) -> int:
    return int.from_bytes(data[at:at + n], "big")


def check_frame(data: bytes, f: Frame) -> None:
    """The frame's bytes are what its name says they are."""
    assert 0 <= f.start <= f.payload <= f.end <= len(data), f
    kind = data[f.start]
    if f.name == "HEADER":
        assert data[f.start:f.start + 4] == b"QEVM"
    elif f.name == "CONFIGURATION":
        assert kind == SectionType.CONFIGURATION and f.payload == f.start + 1
    elif f.kind == "section":
        assert kind == SectionType[f.name]
        if f.name in ("SECTION_START", "SECTION_FULL"):
            n = data[f.start + 5]
            assert data[f.start + 6:f.start + 6 + n].decode() == f.detail
            assert f.payload == f.start + 6 + n + 8
        else:
            assert f.payload == f.start + 5
    elif f.name == "SECTION_FOOTER":
        assert kind == SectionType.SECTION_FOOTER and f.end == f.start + 5
    elif f.kind == "command":
        assert kind == SectionType.COMMAND and be(data, f.start + 1, 2) == MigCmd[f.name]
        if f.name == "PACKAGED":
            assert be(data, f.start + 3, 2) == 4 and be(data, f.start + 5, 4) == f.end - f.payload
        else:
            assert be(data, f.start + 3, 2) == f.end - f.payload
    elif f.name == "EOF":
        assert kind == SectionType.EOF and f.end == f.start + 1
    elif f.name == "VMDESCRIPTION":
        assert kind == SectionType.VMDESCRIPTION and be(data, f.start + 1, 4) == f.end - f.payload
    elif f.name == "RAM_EOS":
        assert be(data, f.start, 8) == RamFlag.EOS
    elif f.name == "RAM_MEM_SIZE":
        assert be(data, f.start, 8) & (PAGE - 1) == RamFlag.MEM_SIZE
    else:
        raise AssertionError(f"unexpected frame {f}")


def check_pages(data: bytes, framing: Framing) -> None:
    for batch in framing.pages:
        assert batch.spans is not None
        for (start, payload, end), kind in zip(batch.spans.tolist(), batch.kinds.tolist(),
                                               strict=True):
            word = be(data, start, 8)
            assert word & (PAGE - 1) & ~int(RamFlag.CONTINUE) == kind
            assert payload == start + 8 + (0 if word & RamFlag.CONTINUE else 1 + data[start + 8])
            assert end - payload == {int(RamFlag.PAGE): PAGE, int(RamFlag.ZERO): 1}.get(
                kind, end - payload)


def check_stream(data: bytes, framing: Framing) -> None:
    assert framing.lost is None, framing.lost
    for frame in framing.frames:
        check_frame(data, frame)
    check_pages(data, framing)
    events = decode_all(data, skip_unknown_devices=True)
    assert spans(framing).shape[0] == sum(len(e) for e in events if isinstance(e, RamPages))


# ------------------------------------------------------------------ codec-made streams
REFERENCE = frame_all(StreamFramer(), COMPOSITE)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(COMPOSITE)), max_size=30))
def test_chunking_never_changes_the_frames(cuts):
    framing = frame_all(StreamFramer(), COMPOSITE, cuts)
    assert framing.frames == REFERENCE.frames
    assert np.array_equal(spans(framing), spans(REFERENCE))


def test_byte_by_byte_is_the_same_as_all_at_once():
    framing = frame_all(StreamFramer(), MIXED, range(len(MIXED)))
    reference = frame_all(StreamFramer(), MIXED)
    assert framing.frames == reference.frames
    assert np.array_equal(spans(framing), spans(reference))
    check_stream(MIXED, framing)


def test_every_frame_kind_of_a_postcopy_stream_at_its_offsets():
    check_stream(COMPOSITE, REFERENCE)
    names = {f.name for f in REFERENCE.frames}
    assert {"HEADER", "CONFIGURATION", "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE",
            "SECTION_START", "RAM_MEM_SIZE", "RAM_EOS", "SECTION_FOOTER", "SECTION_PART",
            "POSTCOPY_RAM_DISCARD", "PACKAGED", "POSTCOPY_LISTEN", "SECTION_FULL",
            "POSTCOPY_RUN", "SECTION_END", "EOF"} <= names
    package = next(f for f in REFERENCE.frames if f.name == "PACKAGED")
    inside = [f for f in REFERENCE.frames if f.package == package.start]
    assert [f.name for f in inside if f.kind == "command"] == ["POSTCOPY_LISTEN", "PING",
                                                               "POSTCOPY_RUN"]
    assert all(f.depth == 1 and package.payload <= f.start < f.end <= package.end
               for f in inside)
    run = next(f for f in inside if f.name == "POSTCOPY_RUN")
    assert run.end == package.end  # the package ends with RUN
    assert {int(k) for b in REFERENCE.pages for k in b.kinds} == {
        int(RamFlag.ZERO), int(RamFlag.PAGE), int(RamFlag.XBZRLE), int(RamFlag.COMPRESS_PAGE)}


def test_a_paused_precopy_stream_has_devices_eof_and_vmdescription():
    ram = np.frombuffer(np.random.default_rng(1).bytes(64 * PAGE), np.uint8).copy()
    ram[8 * PAGE:20 * PAGE] = 0
    data = PausedStream(ram={"ram": ram}).encode()
    framing = frame_all(StreamFramer(), data, range(0, len(data), 777))
    check_stream(data, framing)
    names = [f.name for f in framing.frames]
    assert names[-3:] == ["SECTION_FOOTER", "EOF", "VMDESCRIPTION"]
    assert [f.detail for f in framing.frames if f.name == "SECTION_FULL"] == ["timer",
                                                                              "globalstate"]
    assert spans(framing).shape[0] == 64


def test_the_ram_section_payload_is_its_first_record():
    part = next(f for f in REFERENCE.frames if f.name == "SECTION_PART")
    first = REFERENCE.pages[0].spans
    assert first is not None and part.payload == first[0, 0] and part.end == first[0, 2]


def test_frames_of_ram_page_are_a_frame_name():
    assert "RAM_PAGE" in FRAME_NAMES
    assert frame_flows("REQ_PAGES") == ("return-path",)
    assert frame_flows("RECV_BITMAP") == ("main", "return-path")
    assert frame_flows("RAM_PAGE") == frame_flows("PACKAGED") == ("main",)


# ------------------------------------------------------------------ postcopy recovery
def _recovery_streams() -> tuple[bytes, bytes]:
    enc = StreamEncoder()
    mem = np.frombuffer(np.random.default_rng(2).bytes(32 * PAGE), np.uint8)
    records = bytearray()
    enc.ram.save_pages(records, "ram", mem, range(16))
    first = (enc.header() + enc.configuration("none")
             + enc.ram_start(3, [RamBlockInfo("ram", mem.size)])
             + enc.ram_section(SectionType.SECTION_PART, 3, records))
    first += enc.section_header(SectionType.SECTION_PART, 3) + bytes(records[:5000])  # broken
    enc.ram.reset()  # ram_state_resume_prepare: the first page names its block again
    records = bytearray()
    enc.ram.save_pages(records, "ram", mem, range(16, 32))
    second = (encode_command(RecvBitmapRequest("ram")) + encode_command(PostcopyResume())
              + enc.ram_section(SectionType.SECTION_PART, 3, records)
              + enc.ram_section(SectionType.SECTION_END, 3, b"") + enc.eof())
    return first, second


def test_a_connection_without_magic_continues_the_previous_stream():
    first, second = _recovery_streams()
    memory = StreamMemory()
    broken = frame_all(StreamFramer(memory), first)
    assert broken.lost is None and spans(broken).shape[0] == 16 + 1  # one whole record
    framer = StreamFramer(memory)
    framing = frame_all(framer, second, range(0, len(second), 1000))
    assert framer.continued and framing.lost is None
    names = [f.name for f in framing.frames]
    assert names[:3] == ["RECV_BITMAP", "POSTCOPY_RESUME", "SECTION_PART"]
    assert names[-1] == "EOF"
    assert framing.frames[0].start == 0  # offsets count on the new connection
    for frame in framing.frames:
        check_frame(second, frame)
    check_pages(second, framing)
    assert spans(framing).shape[0] == 16


def test_without_the_previous_stream_the_continuation_loses_framing():
    _, second = _recovery_streams()
    framing = frame_all(StreamFramer(), second, (100, 200))
    assert framing.lost == "framing lost at offset 0: Not a migration stream"
    assert framing.boundary == len(second)  # everything passes


def test_garbage_loses_framing_at_its_offset_and_passes_through():
    data = COMPOSITE[:200] + b"\x99" * 100 + COMPOSITE[200:]
    framer = StreamFramer()
    first = frame_all(framer, data, (150, 250, 400))
    assert first.lost is not None and first.lost.startswith("framing lost at offset ")
    assert "Unknown" in first.lost or "Illegal" in first.lost or "flags" in first.lost
    assert first.boundary == len(data)
    with framer.view(0, len(data)) as view:
        assert bytes(view) == data


# ------------------------------------------------------------------ the real QEMU streams
def test_real_qemu_precopy_streams(vectors: Path):
    files = sorted(p for p in (vectors / "precopy").glob("*.bin") if p.name != "pattern.bin")
    files.append(vectors / "live" / "live-pc-m16.bin")
    assert len(files) >= 10
    for path in files:
        data = path.read_bytes()
        framing = frame_all(StreamFramer(), data, range(0, len(data), 65521))
        check_stream(data, framing)
        names = [f.name for f in framing.frames]
        assert names[0] == "HEADER" and "EOF" in names, path.name
        assert ("VMDESCRIPTION" in names) == ("novmdesc" not in path.name), path.name


@pytest.mark.parametrize("name", ["real-pc-m64-postcopy-unthrottled",
                                  "real-pc-m64-postcopy-requests",
                                  "real-none-m16-postcopy-xp",
                                  "real-none-m16-precopy-returnpath",
                                  "pysrc-to-real-dst-none-m16", "real-src-to-pydst-none-m16"])
def test_postcopy_captures_both_ways(vectors: Path, name: str):
    fwd = (vectors / "postcopy" / f"{name}.fwd.bin").read_bytes()
    framing = frame_all(StreamFramer(), fwd, range(0, len(fwd), 4093))
    check_stream(fwd, framing)
    if "postcopy" in name or "pysrc" in name or "pydst" in name:
        run = [f for f in framing.frames if f.name == "POSTCOPY_RUN"]
        assert len(run) == 1 and run[0].depth == 1
        assert "POSTCOPY_LISTEN" in [f.name for f in framing.frames if f.depth == 1]
    rp = (vectors / "postcopy" / f"{name}.rp.bin").read_bytes()
    rp_framing = frame_all(ReturnPathFramer(), rp, range(0, len(rp), 5))
    decoder = ReturnPathDecoder()
    decoder.receive_data(rp)
    decoder.receive_data(b"")
    messages = decoder.events()
    assert [(f.name, f.start) for f in rp_framing.frames] == [
        (m.msg.name, m.offset) for m in messages]
    assert rp_framing.frames[-1].name == "SHUT" and rp_framing.frames[-1].end == len(rp)


# ------------------------------------------------------------------ the return path
def test_return_path_messages_whatever_the_chunking():
    bitmap = pack_received_bitmap(np.arange(100) % 3 == 0)
    messages = [Pong(1), ReqPagesId(0x7000, PAGE, "pc.ram"), ReqPages(0x9000, PAGE),
                RecvBitmap("pc.ram", bitmap), Pong(2), Shut(0)]
    data = b"".join(encode_rp(m) for m in messages)
    reference = frame_all(ReturnPathFramer(), data)
    assert [f.name for f in reference.frames] == ["PONG", "REQ_PAGES_ID", "REQ_PAGES",
                                                  "RECV_BITMAP", "PONG", "SHUT"]
    ends = np.cumsum([len(encode_rp(m)) for m in messages]).tolist()
    assert [f.end for f in reference.frames] == ends
    assert all(f.payload == f.start + 4 for f in reference.frames)
    for cuts in ([3], list(range(len(data))), [10, 11, 50, 90]):
        assert frame_all(ReturnPathFramer(), data, cuts).frames == reference.frames


def test_return_path_garbage_loses_framing():
    framing = frame_all(ReturnPathFramer(), encode_rp(Pong(1)) + b"\x00\x09\x00\x00", (9,))
    assert [f.name for f in framing.frames] == ["PONG"]
    assert framing.lost == ("framing lost at offset 8: RP: Received invalid message 0x0009 "
                            "length 0x0000")
    assert framing.boundary == 12


# ------------------------------------------------------------------ what the proxy forwards
def forward_all(framer: Framer, data: bytes, cuts: list[int]) -> bytes:
    """Like the proxy's pump: receive, frame, forward up to the boundary, release."""
    out = bytearray()
    forwarded = 0
    bounds = [*sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    pos = 0
    for end in bounds:
        chunk = data[pos:end]
        pos = end

        def recv(view: memoryview, chunk: bytes = chunk) -> int:
            view[:len(chunk)] = chunk
            return len(chunk)

        framer.receive_into(recv, len(chunk))
        boundary = framer.take().boundary
        assert forwarded <= boundary <= framer.received
        with framer.view(forwarded, boundary) as view:
            out += view
        forwarded = boundary
        framer.release(forwarded)
    with framer.view(forwarded, framer.received) as view:  # the end of input
        out += view
    return bytes(out)


def _after_part_headers(data: bytes) -> list[int]:
    return [e.offset + 5 for e in decode_all(data) if getattr(e, "type", None)
            == SectionType.SECTION_PART]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(MIXED)), max_size=60), st.booleans())
def test_what_is_held_for_forwarding_survives_the_buffer_moving(cuts, at_headers):
    """A frame waiting for its end (a section header before its first record, a PACKAGED
    command before its blob) is not forwarded yet, and must still be there next time."""
    data = MIXED + COMPOSITE[8:]  # two streams' worth of sections, packages and pages
    if at_headers:
        cuts = cuts + _after_part_headers(MIXED)
    assert forward_all(StreamFramer(), data, cuts) == data


def test_a_section_header_waits_for_its_first_record():
    """The second PART's header ends a first chunk that nearly fills the decoder's
    buffer: the next receive moves the buffer while the header is still held."""
    enc = StreamEncoder()
    mem = np.frombuffer(np.random.default_rng(6).bytes(20 * PAGE), np.uint8)
    first, second = bytearray(), bytearray()
    enc.ram.save_pages(first, "ram", mem, range(14))
    enc.ram.save_pages(second, "ram", mem, range(14, 20))
    head = (enc.header() + enc.configuration("none")
            + enc.ram_start(2, [RamBlockInfo("ram", mem.size)])
            + enc.ram_section(SectionType.SECTION_PART, 2, first)
            + enc.section_header(SectionType.SECTION_PART, 2))
    data = head + enc.ram_section(SectionType.SECTION_PART, 2, second)[5:] + enc.eof()
    assert len(head) < 1 << 16  # the decoder's first buffer
    framer = StreamFramer()
    assert forward_all(framer, data, [len(head), len(head) + 8192]) == data


def test_a_packaged_command_waits_for_its_blob():
    package = next(f for f in REFERENCE.frames if f.name == "PACKAGED")
    framer = StreamFramer()

    def recv_from(chunk: bytes):
        def recv(view: memoryview) -> int:
            view[:len(chunk)] = chunk
            return len(chunk)
        return recv

    framer.receive_into(recv_from(COMPOSITE[:package.start + 20]), package.start + 20)
    assert framer.take().boundary == package.start  # the command stays with its blob
    framer.receive_into(recv_from(COMPOSITE[package.start + 20:]), len(COMPOSITE))
    framing = framer.take()
    assert framing.boundary == len(COMPOSITE)
    assert "PACKAGED" in [f.name for f in framing.frames]


def test_a_released_hold_leaves_no_timer_thread_behind():
    """x-proxy-release ends the hold's deadline timer, thread and all, before it returns
    (a cancelled timer still running made the proxy tests' teardown fail under load)."""
    import threading

    from harness.faults.outlet import Holds

    holds = Holds(lambda name, data: None, deadline=60)
    for n in range(20):
        holds.hold(f"h{n}")
        assert holds.release(f"h{n}")
        assert not [t for t in threading.enumerate() if t.name == f"proxy hold h{n}"]
    holds.close()
