"""Every record and message type round-trips, and chunking never changes the events."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.protocol import (
    EnableColo,
    OpenReturnPath,
    Ping,
    Pong,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    PostcopyResume,
    PostcopyRun,
    RamBlockInfo,
    RamPages,
    RecvBitmap,
    RecvBitmapRequest,
    ReqPages,
    ReqPagesId,
    ResumeAck,
    ReturnPathDecoder,
    SectionType,
    Shut,
    StreamDecoder,
    StreamEncoder,
    decode_all,
    encode_command,
    encode_rp,
    pack_received_bitmap,
    xbzrle,
)
from harness.protocol.devices import GLOBALSTATE, TIMER, globalstate_values
from harness.protocol.events import Event
from harness.protocol.vmstate import (
    BOOL,
    BUFFER,
    INT8,
    INT16,
    INT32,
    INT64,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    UNUSED_BUFFER,
    DeviceDescription,
    Field,
    VMStateDescription,
    from_vmdesc,
    load_state,
    save_state,
)
from harness.protocol.vmstate import (
    TIMER as TIMER_T,
)
from harness.protocol.wire import Reader

pytestmark = pytest.mark.codec  # run again on the Python page path (.ci/run)

PAGE = 4096
u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                max_size=40)

commands = st.one_of(
    st.just(OpenReturnPath()),
    st.builds(Ping, u32),
    st.builds(PostcopyAdvise, u64, u64),
    st.just(PostcopyAdvise(None, None)),
    st.just(PostcopyListen()),
    st.just(PostcopyRun()),
    st.builds(PostcopyRamDiscard, names,
              st.lists(st.tuples(u64, u64), min_size=1, max_size=12).map(tuple)),
    st.just(EnableColo()),
    st.just(PostcopyResume()),
    st.builds(RecvBitmapRequest, names),
)

rp_messages = st.one_of(
    st.builds(Shut, u32), st.builds(Pong, u32), st.builds(ResumeAck, u32),
    st.builds(ReqPagesId, u64, u32, names), st.builds(ReqPages, u64, u32),
    st.builds(RecvBitmap, names,
              st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 8))),
)


def _bare(events: list[Event]) -> list[Event]:
    return [e for e in events if type(e).__name__ not in ("EndOfStream", "StreamClosed")]


@given(st.lists(commands, max_size=8))
def test_commands_round_trip(cmds):
    data = b"".join(encode_command(c) for c in cmds) + b"\x00"
    assert _bare(decode_all(data, header=False, configuration=False)) == cmds


@given(st.lists(rp_messages, max_size=8), st.data())
def test_return_path_messages_round_trip_in_any_chunks(msgs, data):
    raw = b"".join(encode_rp(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    decoder = ReturnPathDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(raw)]):
        if a == b:
            continue  # b"" means end of input
        decoder.receive_data(raw[a:b])
        got += decoder.events()
    decoder.receive_data(b"")
    got += decoder.events()
    assert got == msgs
    assert decoder.next_event() is None


@given(st.lists(st.booleans(), min_size=1, max_size=300))
def test_received_bitmap_packs_little_endian_words(bits):
    received = np.array(bits)
    packed = pack_received_bitmap(received)
    assert len(packed) % 8 == 0
    assert RecvBitmap("b", packed).received(len(bits)).tolist() == bits
    first = int.from_bytes(packed[:8], "little")
    assert [bool(first >> i & 1) for i in range(min(64, len(bits)))] == bits[:64]


@given(st.integers(0, 0x3FFF))
def test_uleb128_small_round_trip(value):
    raw = xbzrle.uleb128_encode_small(value)
    assert len(raw) == (1 if value < 0x80 else 2)
    assert xbzrle.uleb128_decode_small(raw + b"\0", 0) == (value, len(raw))


@st.composite
def page_pairs(draw):
    """An old page and a new one that differs in some runs (or everywhere)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    old = bytearray(rng.integers(0, 256, PAGE, dtype=np.uint8).tobytes()
                    if draw(st.booleans()) else bytes(PAGE))
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 300))):
        at = draw(st.integers(0, PAGE - 1))
        span = min(draw(st.integers(1, 300)), PAGE - at)
        new[at:at + span] = bytes((b ^ 0x5A) or 1 for b in new[at:at + span])
    return bytes(old), bytes(new)


@given(page_pairs())
def test_xbzrle_round_trip_and_overflow_rule(pair):
    old, new = pair
    delta = xbzrle.encode(old, new)
    unlimited = xbzrle.encode(old, new, dlen=1 << 20)
    if delta is None:
        assert unlimited is not None and len(unlimited) > PAGE - 2
        return
    assert delta == unlimited
    page = bytearray(old)
    xbzrle.decode(delta, page)
    assert bytes(page) == new
    if old == new:
        assert delta == b""


# ----------------------------------------------------------------------- vmstate

INNER = VMStateDescription(
    "inner", 3,
    fields=(Field("a", UINT16), Field("b", INT64)),
    subsections=(VMStateDescription("inner/extra", 1, fields=(Field("x", UINT8),)),),
)
PLAIN = VMStateDescription("plain", 1, fields=(Field("p", UINT32), Field("q", BOOL)))
TMP = VMStateDescription("thing_tmp", 0, fields=(Field("m", UINT64), Field("e", UINT16)))
DEVICE = VMStateDescription(
    "gadget", 5, minimum_version_id=2,
    fields=(
        Field("i8", INT8), Field("i16", INT16), Field("i32", INT32), Field("i64", INT64),
        Field("u8", UINT8), Field("u16", UINT16), Field("u32", UINT32), Field("u64", UINT64),
        Field("flag", BOOL), Field("deadline", TIMER_T),
        Field("unused", UNUSED_BUFFER, size=3),
        Field("regs", UINT32, count=4),
        Field("n", UINT8), Field("items", UINT16, count_from="n"),
        Field("len", UINT32), Field("blob", BUFFER, size_from="len"),
        Field("fixed", BUFFER, size=5),
        Field("plain", struct=PLAIN, count=2),
        Field("inners", struct=INNER, count=3),
        Field("one", struct=INNER),
        Field("tmp", struct=TMP, inline=True),
        Field("late", UINT32, version_id=4),
        Field("unused", UNUSED_BUFFER, size=2),
    ),
    subsections=(
        VMStateDescription("gadget/first", 1, fields=(Field("f", INT32),)),
        VMStateDescription("gadget/second", 2, fields=(Field("s", UINT8, count=3),),
                           needed=lambda v: v["flag"]),
    ),
)


@st.composite
def gadget_values(draw):
    def i(bits, signed=False):
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        return draw(st.integers(lo, hi))

    def inner():
        v = {"a": i(16), "b": i(64, True)}
        if draw(st.booleans()):
            v["inner/extra"] = {"x": i(8)}
        return v

    n = draw(st.integers(0, 6))
    blob = draw(st.binary(max_size=40))
    flag = draw(st.booleans())
    values = {
        "i8": i(8, True), "i16": i(16, True), "i32": i(32, True), "i64": i(64, True),
        "u8": i(8), "u16": i(16), "u32": i(32), "u64": i(64), "flag": flag,
        "deadline": i(64, True), "regs": [i(32) for _ in range(4)], "n": n,
        "items": [i(16) for _ in range(n)], "len": len(blob), "blob": blob,
        "fixed": draw(st.binary(min_size=5, max_size=5)),
        "plain": [{"p": i(32), "q": draw(st.booleans())} for _ in range(2)],
        "inners": [inner() for _ in range(3)], "one": inner(),
        "tmp": {"m": i(64), "e": i(16)}, "late": i(32),
    }
    if draw(st.booleans()):
        values["gadget/first"] = {"f": i(32, True)}
    if flag:
        values["gadget/second"] = {"s": [i(8) for _ in range(3)]}
    return values


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(gadget_values())
def test_vmstate_round_trip_and_vmdesc_description(values):
    out = bytearray()
    desc = save_state(DEVICE, values, out)
    loaded = load_state(Reader(out, 0, len(out), closed=True), DEVICE, DEVICE.version_id)
    assert loaded == values | {"unused[0]": bytes(3), "unused[1]": bytes(2)}
    # the JSON description describes exactly the bytes written ...
    derived = from_vmdesc(desc)
    again = bytearray()
    assert save_state(derived, load_state(Reader(out, 0, len(out), closed=True), derived,
                                          derived.version_id), again) == desc
    assert bytes(again) == bytes(out)
    # ... in QEMU's shape: compressible arrays once, structs with subsections per index
    by_name = {}
    for f in desc["fields"]:
        by_name.setdefault(f["name"], []).append(f)
    assert by_name["regs"] == [{"name": "regs", "array_len": 4, "type": "uint32", "size": 4}]
    assert [f["index"] for f in by_name["inners"]] == [0, 1, 2]
    assert by_name["plain"][0]["array_len"] == 2
    assert by_name["tmp"][0]["vmsd_name"] == "thing_tmp"
    assert ("subsections" in desc) == ("gadget/first" in values or values["flag"])


def test_versioned_field_absent_from_older_stream():
    values = {"p": 1, "q": True}
    old = VMStateDescription("v", 2, fields=(Field("p", UINT32), Field("q", BOOL, version_id=2)))
    out = bytearray()
    save_state(old, values, out, version=1)
    assert len(out) == 4
    assert load_state(Reader(out, 0, 4, closed=True), old, 1) == {"p": 1}


# ------------------------------------------------------------------------- RAM


@st.composite
def ram_workloads(draw):
    """Blocks, then a list of page writes: (block, page, kind, content seed)."""
    sizes = draw(st.lists(st.integers(1, 24), min_size=1, max_size=3))
    blocks = [(f"blk{i}" if i else "pc.ram", n) for i, n in enumerate(sizes)]
    ops = draw(st.lists(
        st.tuples(st.integers(0, len(blocks) - 1), st.integers(0, 23),
                  st.sampled_from(["zero", "page", "xbzrle", "compress", "run"]),
                  st.integers(0, 2**32 - 1)), max_size=30))
    return blocks, ops


def _content(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    page = np.zeros(PAGE, np.uint8)
    page[rng.integers(0, PAGE, 64)] = rng.integers(1, 256, 64, dtype=np.uint8)
    return page.tobytes()


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ram_workloads(), st.data())
def test_ram_records_round_trip_into_numpy_ram(workload, data):
    blocks, ops = workload
    expected = {name: np.zeros(n * PAGE, np.uint8) for name, n in blocks}
    enc = StreamEncoder()
    stream = bytearray(enc.header() + enc.configuration("pc-i440fx-7.2"))
    stream += enc.ram_start(2, [RamBlockInfo(n, m.size) for n, m in expected.items()])
    for bi, page, kind, seed in ops:
        name, n = blocks[bi]
        page %= n
        mem = expected[name]
        addr = page * PAGE
        records = bytearray()
        if kind == "zero":
            mem[addr:addr + PAGE] = 0
            enc.ram.save_zero_page(records, name, addr)
        elif kind == "page":
            mem[addr:addr + PAGE] = np.frombuffer(_content(seed), np.uint8)
            enc.ram.save_page(records, name, addr, _content(seed))
        elif kind == "xbzrle":
            new = _content(seed)
            delta = xbzrle.encode(mem[addr:addr + PAGE].tobytes(), new)
            if delta is None:
                enc.ram.save_page(records, name, addr, new)
            else:
                enc.ram.save_xbzrle_page(records, name, addr, delta)
            mem[addr:addr + PAGE] = np.frombuffer(new, np.uint8)
        elif kind == "compress":
            mem[addr:addr + PAGE] = np.frombuffer(_content(seed), np.uint8)
            enc.ram.save_compressed_page(records, name, addr, _content(seed))
        else:  # a run of pages through save_pages (zero detection, vectorised framing)
            count = 1 + seed % n
            first = seed % (n - count + 1)
            for p in range(first, first + count):
                if (seed >> (p % 16)) & 1:
                    mem[p * PAGE:(p + 1) * PAGE] = np.frombuffer(_content(seed + p), np.uint8)
            enc.ram.save_pages(records, name, mem, range(first, first + count))
        stream += enc.ram_section(SectionType.SECTION_PART, 2, records)
    stream += enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof()
    chunk = data.draw(st.sampled_from([1 << 30, 7, 4096, 4105, 9000]))
    decoder = StreamDecoder()
    for at in range(0, len(stream), chunk):
        decoder.receive_data(bytes(stream[at:at + chunk]))
        decoder.events()
    decoder.receive_data(b"")
    decoder.events()
    for name, mem in expected.items():
        assert np.array_equal(decoder.ram[name], mem), name


def test_long_runs_take_the_vectorised_path_and_stay_exact():
    rng = np.random.default_rng(5)
    mem = np.zeros(4096 * PAGE, np.uint8)
    kinds = rng.random(4096) < 0.5
    kinds[100:1500] = True  # a long non-zero run
    kinds[2000:3500] = False  # a long zero run
    for p in np.flatnonzero(kinds):
        mem[p * PAGE:(p + 1) * PAGE] = rng.integers(0, 256, PAGE, dtype=np.uint8)
    enc = StreamEncoder()
    records = bytearray()
    zeros, normal = enc.ram.save_pages(records, "ram", mem, range(4096))
    assert (zeros, normal) == (int((~kinds).sum()), int(kinds.sum()))
    stream = (enc.header() + enc.configuration("none")
              + enc.ram_start(2, [RamBlockInfo("ram", mem.size)])
              + enc.ram_section(SectionType.SECTION_PART, 2, records)
              + enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof())
    decoder = StreamDecoder(ram={"ram": np.full(mem.size, 0xAA, np.uint8)})
    decoder.receive_data(stream)
    decoder.receive_data(b"")
    events = decoder.events()
    assert np.array_equal(decoder.ram["ram"], mem)
    offsets = np.concatenate([e.offsets for e in events if isinstance(e, RamPages)])
    assert offsets.tolist() == [p * PAGE for p in range(4096)]


# ------------------------------------------------------------- chunk invariance


def composite_stream() -> bytes:
    """Header, configuration, RAM of every record kind, commands, a PACKAGED blob with
    devices, EOF and trailer: most of what the decoder knows, in about 20 KiB."""
    enc = StreamEncoder()
    mem = np.zeros(8 * PAGE, np.uint8)
    mem[PAGE:2 * PAGE] = np.frombuffer(_content(1), np.uint8)
    out = bytearray(enc.header() + enc.configuration("none"))
    out += encode_command(OpenReturnPath()) + encode_command(Ping(1))
    out += encode_command(PostcopyAdvise(4096, 4096))
    out += enc.ram_start(2, [RamBlockInfo("ram", mem.size)])
    records = bytearray()
    enc.ram.save_pages(records, "ram", mem, range(8))
    new = bytearray(_content(1))
    new[10:20] = b"0123456789"
    delta = xbzrle.encode(_content(1), bytes(new))
    enc.ram.save_xbzrle_page(records, "ram", PAGE, delta)
    enc.ram.save_compressed_page(records, "ram", 3 * PAGE, bytes(PAGE // 2) + _content(2)[:PAGE // 2])
    out += enc.ram_section(SectionType.SECTION_PART, 2, records)
    out += encode_command(PostcopyRamDiscard("ram", ((0, PAGE), (5 * PAGE, 3 * PAGE))))
    out += encode_command(Ping(2))
    blob = (encode_command(PostcopyListen())
            + enc.device(0, "timer", 0, TIMER, {"cpu_ticks_offset": 5, "cpu_clock_offset": -1},
                         describe=False)
            + enc.device(4, "globalstate", 0, GLOBALSTATE, globalstate_values("running"),
                         describe=False)
            + encode_command(Ping(3)) + encode_command(PostcopyRun()))
    out += enc.packaged(blob) + encode_command(Ping(4))
    records = bytearray()
    enc.ram.save_zero_page(records, "ram", 6 * PAGE)
    out += enc.ram_section(SectionType.SECTION_END, 2, records) + enc.eof()
    return bytes(out)


COMPOSITE = composite_stream()


def _normalised(events):
    out = []
    for e in events:
        if isinstance(e, RamPages):
            if out and out[-1][0] == "pages" and out[-1][1] == e.block:
                out[-1] = ("pages", e.block, out[-1][2] + e.offsets.tolist(),
                           out[-1][3] + e.kinds.tolist())
            else:
                out.append(("pages", e.block, e.offsets.tolist(), e.kinds.tolist()))
        else:
            out.append((e, e.offset))
    return out


REFERENCE = _normalised(decode_all(COMPOSITE))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(COMPOSITE)), max_size=30))
def test_chunking_never_changes_the_events(cuts):
    decoder = StreamDecoder()
    events = []
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(COMPOSITE)]):
        if a == b:
            continue  # b"" means end of input
        decoder.receive_data(COMPOSITE[a:b])
        events += decoder.events()
    decoder.receive_data(b"")
    events += decoder.events()
    assert _normalised(events) == REFERENCE
    assert decoder.next_event() is None


def test_composite_stream_has_every_record_kind():
    names = {type(e).__name__ for e in decode_all(COMPOSITE)}
    assert {"Configuration", "RamMemSize", "RamPages", "RamEos", "OpenReturnPath", "Ping",
            "PostcopyAdvise", "PostcopyRamDiscard", "Packaged", "PackagedStart",
            "PostcopyListen", "DeviceState", "PostcopyRun", "PackagedEnd",
            "EndOfStream"} <= names
    kinds = set()
    for e in decode_all(COMPOSITE):
        if isinstance(e, RamPages):
            kinds |= set(e.kinds.tolist())
    assert kinds == {0x02, 0x08, 0x40, 0x100}


def test_one_byte_chunks_equal_whole():
    decoder = StreamDecoder()
    events = []
    for i in range(len(COMPOSITE)):
        decoder.receive_data(COMPOSITE[i:i + 1])
        events += decoder.events()
    decoder.receive_data(b"")
    events += decoder.events()
    assert _normalised(events) == REFERENCE


def test_compressed_page_is_real_zlib():
    records = bytearray()
    from harness.protocol.ram_saver import RamSaver

    RamSaver().save_compressed_page(records, "ram", 0, bytes(PAGE))
    length = int.from_bytes(records[12:16], "big")
    assert zlib.decompress(bytes(records[16:16 + length])) == bytes(PAGE)


def test_device_description_version_is_the_vmsd_version():
    assert DeviceDescription("timer", 0, TIMER).version_id == 2


def test_xbzrle_overflows_on_a_page_that_changed_everywhere():
    old = bytes(PAGE)
    new = bytes((i % 2) for i in range(PAGE))  # 2048 one-byte runs: far more than a page
    assert xbzrle.encode(old, new) is None
    assert xbzrle.encode(old, bytes(255 for _ in range(PAGE))) is None


def _records_stream(build) -> bytes:
    enc = StreamEncoder()
    records = bytearray()
    build(enc.ram, records)
    return (enc.header() + enc.configuration("none")
            + enc.ram_start(2, [RamBlockInfo("ram", 16 * PAGE)])
            + enc.ram_section(SectionType.SECTION_PART, 2, records)
            + enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof())


def test_the_last_record_of_a_page_wins_within_one_section():
    """Zero pages are applied in bulk; a later record of the same page must still win,
    and a delta must see the zeroing that came before it."""
    data1, data2 = _content(11), _content(12)

    def build(saver, out):
        saver.save_zero_page(out, "ram", 0)          # names the block
        for p in range(1, 6):
            saver.save_zero_page(out, "ram", p * PAGE)  # CONTINUE zero pages (deferred)
        saver.save_page(out, "ram", 2 * PAGE, data1)  # zero then data: data wins
        saver.save_page(out, "ram", 7 * PAGE, data1)
        saver.save_zero_page(out, "ram", 7 * PAGE)    # data then zero: zero wins
        saver.save_zero_page(out, "ram", 3 * PAGE)
        saver.save_xbzrle_page(out, "ram", 3 * PAGE, xbzrle.encode(bytes(PAGE), data2))

    decoder = StreamDecoder(ram={"ram": np.full(16 * PAGE, 0x77, np.uint8)})
    decoder.receive_data(_records_stream(build))
    decoder.receive_data(b"")
    events = decoder.events()
    ram = decoder.ram["ram"].reshape(16, PAGE)
    assert ram[2].tobytes() == data1
    assert not ram[7].any() and not ram[1].any() and not ram[5].any()
    assert ram[3].tobytes() == data2  # the delta applied onto the zeroed page
    assert (ram[8:] == 0x77).all()  # untouched pages keep their content
    kinds = np.concatenate([e.kinds for e in events if isinstance(e, RamPages)])
    assert set(kinds.tolist()) <= {0x02, 0x08, 0x40}
