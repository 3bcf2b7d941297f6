"""The convergence features' pure parts: the XBZRLE batch encoder and QEMU's exact bytes,
the source's page cache and batch decisions, compressed records and their parallel
inflation on the destination (page order included), and auto-converge's throttle.

No sockets and no processes: records are framed into a buffer and read back with the
codec's own `StreamDecoder`, as a destination would."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from destination.decompress import DecompressThreads
from harness.protocol import RamBlockInfo, RamPages, RemoteProtocolError, StreamDecoder, xbzrle
from harness.protocol.constants import RamFlag, SectionType
from harness.protocol.encoder import StreamEncoder
from harness.protocol.ram_saver import FrameBuffer, RamSaver
from source.compress import CompressBatch, CompressionStats, CompressThreads
from source.throttle import AutoConverge
from source.xbzrle_cache import PageCache, XbzrleBatch, XbzrleStats, distinct_slot_runs

pytestmark = pytest.mark.codec  # the saver's tests: run again on the Python page path (.ci/run)

PAGE = 4096


# ----------------------------------------------------------------- the encoder
@st.composite
def page_batches(draw):
    """k (old, new) page pairs: unchanged, a few runs, many runs, or changed everywhere."""
    k = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    old = rng.integers(0, 256, (k, PAGE), dtype=np.uint8)
    new = old.copy()
    for i in range(k):
        shape = draw(st.sampled_from(["same", "few", "many", "all", "edges"]))
        if shape == "all":
            new[i] ^= 0xA5
        elif shape == "edges":
            new[i, :draw(st.integers(1, 200))] ^= 1
            new[i, PAGE - draw(st.integers(1, 200)):] ^= 2
        elif shape != "same":
            for _ in range(draw(st.integers(1, 40 if shape == "few" else 700))):
                at = draw(st.integers(0, PAGE - 1))
                new[i, at:at + draw(st.integers(1, 300))] ^= 0x3C
    return old, new


@given(page_batches())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_batch_encoder_gives_the_page_by_page_bytes(batch):
    old, new = batch
    got = xbzrle.encode_pages(old, new)
    assert len(got) == old.shape[0]
    for i, delta in enumerate(got):
        assert delta == xbzrle.encode(old[i].tobytes(), new[i].tobytes())
        if delta is not None:  # and it decodes back to the new page
            page = bytearray(old[i].tobytes())
            xbzrle.decode(delta, page)
            assert bytes(page) == new[i].tobytes()


def _pair(changes: dict[int, bytes]) -> tuple[np.ndarray, np.ndarray]:
    old = np.zeros((1, PAGE), dtype=np.uint8)
    new = old.copy()
    for at, data in changes.items():
        new[0, at:at + len(data)] = np.frombuffer(data, np.uint8)
    return old, new


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, b""),  # unchanged: nothing to send
    ({0: b"\x01"}, b"\x00\x01\x01"),  # zero run of 0 only at the start
    ({5: b"\xaa\xbb"}, b"\x05\x02\xaa\xbb"),  # the unchanged tail is not written
    ({200: b"\x07"}, b"\xc8\x01\x01\x07"),  # 200 = uleb128 0xc8 0x01
    ({1: b"\x01", 3: b"\x02"}, b"\x01\x01\x01\x01\x01\x02"),
    ({PAGE - 1: b"\x09"}, b"\xff\x1f\x01\x09"),  # 4095 = 0xff 0x1f, no tail
])
def test_known_deltas_in_qemus_format(changes, expected):
    """migration/xbzrle.c: uleb128(zero run), uleb128(changed run), the changed bytes."""
    old, new = _pair(changes)
    assert xbzrle.encode(old[0], new[0]) == expected
    assert xbzrle.encode_pages(old, new) == [expected]


def test_overflow_follows_qemus_checks_to_the_byte():
    """Every other byte changed: 2048 runs of 1+1+1 bytes = 6144 > 4096: overflow; in a
    bigger buffer it fits.  A delta of exactly dlen bytes fits only without an unchanged
    tail (the tail's zero run needs 2 free bytes first)."""
    old = np.zeros((1, PAGE), dtype=np.uint8)
    new = old.copy()
    new[0, ::2] = 1
    assert xbzrle.encode_pages(old, new) == [None]
    assert xbzrle.encode_pages(old, new, dlen=8192)[0] == xbzrle.encode(old[0], new[0], 8192)
    whole = new.copy()
    whole[0, :] = 7  # one run of 4096: 1 + 2 + 4096 bytes > 4096
    assert xbzrle.encode_pages(old, whole) == [None]
    head = np.zeros((1, PAGE), dtype=np.uint8)
    head[0, :100] = 1  # 0x00 0x64 + 100 bytes = 102, then an unchanged tail
    for dlen, fits in ((102, False), (103, False), (104, True)):
        delta = xbzrle.encode_pages(old, head, dlen=dlen)[0]
        assert delta == xbzrle.encode(old[0], head[0], dlen)
        assert (delta is not None) == fits and (delta is None or len(delta) == 102)
    tail = np.zeros((1, PAGE), dtype=np.uint8)
    tail[0, PAGE - 100:] = 1  # 0x9c 0x1f 0x64 + 100 bytes = 103, no tail
    assert len(xbzrle.encode_pages(old, tail, dlen=103)[0]) == 103
    assert xbzrle.encode_pages(old, tail, dlen=102) == [None]


# ----------------------------------------------------------------- the page cache
def test_page_cache_is_direct_mapped_and_keeps_fresh_pages():
    """migration/page_cache.c: slot = page number mod slots; an insert does not evict a
    different page used within CACHED_PAGE_LIFETIME (2) syncs; a hit refreshes the age."""
    cache = PageCache(4 * PAGE)
    pages = np.full((1, PAGE), 3, dtype=np.uint8)
    a, b = np.array([1 * PAGE]), np.array([5 * PAGE])  # both in slot 1
    slot = cache.slot_of(a)
    assert slot.tolist() == cache.slot_of(b).tolist() == [1]
    assert cache.insert(slot, a, pages, age=1).tolist() == [True]
    assert cache.insert(slot, b, pages, age=2).tolist() == [False]  # a is fresh
    assert cache.lookup(slot, a, age=3).tolist() == [True]  # refreshed to 3
    assert cache.insert(slot, b, pages, age=4).tolist() == [False]
    assert cache.insert(slot, b, pages, age=5).tolist() == [True]  # 3 + 2 <= 5
    assert cache.lookup(slot, a, age=5).tolist() == [False]
    with pytest.raises(ValueError, match="power of two"):
        PageCache(3 * PAGE)


def test_a_batch_is_cut_where_a_slot_repeats():
    runs = distinct_slot_runs(np.array([0, 1, 2, 1, 3, 3, 0]))
    assert [(r.start, r.stop) for r in runs] == [(0, 3), (3, 5), (5, 7)]


def _stream(*payloads: bytes, block: str = "ram", size: int = 64 * PAGE) -> bytes:
    enc = StreamEncoder()
    out = bytearray(enc.header() + enc.configuration("none"))
    out += enc.ram_start(2, [RamBlockInfo(block, size)])
    for payload in payloads:
        out += enc.ram_section(SectionType.SECTION_PART, 2, payload)
    return bytes(out)


def _load(data: bytes, size: int = 64 * PAGE, inflate=None) -> tuple[np.ndarray, list]:
    ram = np.zeros(size, dtype=np.uint8)
    decoder = StreamDecoder(ram={"ram": ram})
    if inflate is not None:
        decoder.loader.inflate = inflate
    decoder.receive_data(data)
    events = decoder.events()
    return ram, [e for e in events if isinstance(e, RamPages)]


def test_xbzrle_batches_miss_then_hit_and_the_destination_follows():
    """Round 2 of a page: cache miss, normal page, cached.  Round 3: a hit, a delta the
    destination decodes onto its copy.  Unchanged: nothing is sent.  Changed
    everywhere: overflow, normal page.  Zero pages go as ZERO and are cached as zero."""
    mem = np.zeros(64 * PAGE, dtype=np.uint8)
    rng = np.random.default_rng(5)
    mem[:8 * PAGE] = rng.integers(1, 256, 8 * PAGE, dtype=np.uint8)
    cache, stats, saver = PageCache(16 * PAGE), XbzrleStats(), RamSaver()
    pages = np.arange(10)
    sent = []
    for age in (2, 3, 4):
        out = FrameBuffer()
        XbzrleBatch(cache, stats, age, last_stage=False).save(out, saver, "ram", mem, 0, pages)
        sent.append(bytes(out.view()))
        mem[3 * PAGE + 100:3 * PAGE + 108] += 1  # a small write: a delta next time
        mem[4 * PAGE:5 * PAGE] ^= 0xFF  # a rewrite: an overflow next time
    assert stats.cache_miss == 8 and stats.overflow == 2 and stats.pages == 2
    # an overflow counts a page; a delta its encoding byte, length and 1 + 1 + 8 bytes
    assert stats.bytes == 2 * PAGE + 2 * (3 + 10)
    dst, events = _load(_stream(*sent))
    kinds = np.concatenate([e.kinds for e in events])
    assert int(np.count_nonzero(kinds == RamFlag.XBZRLE)) == 2
    # the last state sent is what the source had before its last two writes
    expected = mem.copy()
    expected[3 * PAGE + 100:3 * PAGE + 108] -= 1
    expected[4 * PAGE:5 * PAGE] ^= 0xFF
    assert np.array_equal(dst, expected)


def test_the_last_stage_leaves_the_cache_alone():
    """ram.c: in the last stage a miss is not inserted and a hit does not update."""
    mem = np.full(4 * PAGE, 9, dtype=np.uint8)
    cache, stats = PageCache(4 * PAGE), XbzrleStats()
    XbzrleBatch(cache, stats, 1, last_stage=True).save(FrameBuffer(), RamSaver(), "ram", mem,
                                                       0, np.arange(4))
    assert (cache.addr == -1).all() and stats.cache_miss == 4


# ----------------------------------------------------------------- compression
def test_compress_threads_give_zlibs_bytes_in_page_order():
    rows = np.random.default_rng(2).integers(0, 8, (64, PAGE), dtype=np.uint8)
    threads = CompressThreads(3)
    try:
        assert threads.compress(rows, 6) == [zlib.compress(r.tobytes(), 6) for r in rows]
    finally:
        threads.close()


def test_compressed_records_are_be32_length_and_a_zlib_stream():
    """migration/ram.c: do_compress_ram_page / qemu_put_compression_data; the first page
    of a block goes plain (save_compress_page), zero pages as ZERO."""
    mem = np.zeros(8 * PAGE, dtype=np.uint8)
    mem[PAGE:4 * PAGE] = np.frombuffer((b"text page " * 1300)[:3 * PAGE], np.uint8)
    mem[:PAGE] = 1
    threads, stats = CompressThreads(2), CompressionStats()
    out = bytearray()
    try:
        zeros, normal = CompressBatch(threads, stats, 1).save(out, RamSaver(), "ram", mem,
                                                              np.arange(8))
    finally:
        threads.close()
    assert (zeros, normal, stats.pages) == (4, 1, 3)
    # page 0: PAGE naming the block; page 1: the first compressed record
    first = 8 + 4 + PAGE
    word = int.from_bytes(out[first:first + 8], "big")
    assert word == PAGE | RamFlag.COMPRESS_PAGE | RamFlag.CONTINUE
    length = int.from_bytes(out[first + 8:first + 12], "big")
    data = bytes(out[first + 12:first + 12 + length])
    assert data == zlib.compress(mem[PAGE:2 * PAGE].tobytes(), 1)  # QEMU's deflate, level 1
    assert stats.compressed_size == sum(4 + len(zlib.compress(mem[p * PAGE:(p + 1) * PAGE]
                                                              .tobytes(), 1))
                                        for p in (1, 2, 3))
    dst, _ = _load(_stream(bytes(out), size=8 * PAGE), size=8 * PAGE)
    assert np.array_equal(dst, mem)


def _compressed_records(pages: dict[int, bytes]) -> bytes:
    saver, out = RamSaver(), bytearray()
    for index, content in pages.items():
        saver.save_compressed_page(out, "ram", index * PAGE, content)
    return bytes(out)


def test_decompress_threads_inflate_what_inline_decoding_does():
    rng = np.random.default_rng(1)
    contents = {i: bytes(rng.integers(0, 4, PAGE, dtype=np.uint8)) for i in range(40)}
    data = _stream(_compressed_records(contents))
    threads = DecompressThreads(3)
    try:
        parallel, events = _load(data, inflate=threads.inflate)
    finally:
        threads.close()
    inline, _ = _load(data)
    assert np.array_equal(parallel, inline)
    assert parallel[:40 * PAGE].tobytes() == b"".join(contents.values())
    kinds = np.concatenate([e.kinds for e in events])
    assert set(kinds.tolist()) == {int(RamFlag.COMPRESS_PAGE)}


@pytest.mark.parametrize("compressed_last", [False, True])
def test_an_older_copy_of_a_page_never_overtakes_a_newer_one(compressed_last):
    """A compressed page and a plain copy of the same page in one chunk: the last record
    wins, though the compressed one is inflated later, by the threads."""
    saver, out = RamSaver(), bytearray()
    old, new = bytes([1]) * PAGE, bytes([2]) * PAGE
    if compressed_last:
        saver.save_page(out, "ram", 0, old)
        saver.save_compressed_page(out, "ram", 0, new)
    else:
        saver.save_compressed_page(out, "ram", 0, old)
        saver.save_page(out, "ram", 0, new)
    threads = DecompressThreads(2)
    try:
        dst, _ = _load(_stream(bytes(out)), inflate=threads.inflate)
    finally:
        threads.close()
    assert dst[:PAGE].tobytes() == new


def test_a_bad_compressed_page_fails_at_its_record():
    good = _compressed_records({0: bytes(PAGE)})
    bad = bytearray()
    bad += (2 * PAGE | RamFlag.COMPRESS_PAGE | RamFlag.CONTINUE).to_bytes(8, "big")
    bad += (5).to_bytes(4, "big") + b"junk!"
    data = _stream(good + bytes(bad))
    at = data.index(bytes(bad))
    threads = DecompressThreads(2)
    decoder = StreamDecoder(ram={"ram": np.zeros(64 * PAGE, dtype=np.uint8)})
    decoder.loader.inflate = threads.inflate
    try:
        decoder.receive_data(data)
        with pytest.raises(RemoteProtocolError, match="decompress data failed") as failed:
            decoder.events()
    finally:
        threads.close()
    assert failed.value.offset == at


# ----------------------------------------------------------------- auto-converge
def _throttle(**params):
    values = {"throttle-trigger-threshold": 50, "cpu-throttle-initial": 20,
              "cpu-throttle-increment": 10, "max-cpu-throttle": 99,
              "cpu-throttle-tailslow": False, **params}
    applied: list[int] = []
    return AutoConverge(values.__getitem__, applied.append), applied


def test_throttle_starts_on_the_second_bad_period_then_steps_up_to_the_maximum():
    """migration/ram.c: migration_trigger_throttle / mig_throttle_guest_down."""
    ac, applied = _throttle(**{"max-cpu-throttle": 45})
    ac.period(bytes_dirty=60, bytes_xfer=100)  # 60 > 50% of 100: once
    assert applied == [] and not ac.active
    ac.period(bytes_dirty=10, bytes_xfer=100)  # fine: the count is not reset
    ac.period(bytes_dirty=60, bytes_xfer=100)  # twice: cpu-throttle-initial
    assert applied == [20] and ac.percentage == 20
    for _ in range(6):
        ac.period(bytes_dirty=60, bytes_xfer=100)
    assert applied == [20, 30, 40, 45] and ac.highest == 45  # max-cpu-throttle
    ac.stop()
    assert applied[-1] == 0 and not ac.active


def test_tailslow_raises_only_what_should_bring_the_dirty_rate_to_the_threshold():
    ac, applied = _throttle(**{"cpu-throttle-tailslow": True, "cpu-throttle-increment": 30})
    for _ in range(2):
        ac.period(bytes_dirty=600, bytes_xfer=1000)
    for _ in range(2):  # threshold 500 of 600 dirtied: cpu 80 -> 66, +14 (< 30)
        ac.period(bytes_dirty=600, bytes_xfer=1000)
    assert applied == [20, 34]


@st.composite
def mixed_sections(draw):
    """Sections of records of 12 pages, a page often written twice in one section."""
    return draw(st.lists(st.lists(
        st.tuples(st.integers(0, 11), st.sampled_from(["zero", "page", "xbzrle", "compress"]),
                  st.integers(0, 2**32 - 1)), min_size=1, max_size=25), min_size=1, max_size=4))


@given(mixed_sections(), st.sampled_from([1 << 30, 7, 4100, 9000]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_deferred_inflation_keeps_every_records_order(sections, chunk):
    """Whatever the mix, the chunking and the repeats, a destination with decompress
    threads ends with the page each page's last record gave it (XBZRLE deltas apply
    onto the page as the records before them left it)."""
    expected = np.zeros(12 * PAGE, dtype=np.uint8)
    saver, payloads = RamSaver(), []
    for ops in sections:
        out = bytearray()
        for page, kind, seed in ops:
            addr = page * PAGE
            content = np.random.default_rng(seed).integers(0, 3, PAGE, dtype=np.uint8)
            if kind == "zero":
                content[:] = 0
                saver.save_zero_page(out, "ram", addr)
            elif kind == "page":
                saver.save_page(out, "ram", addr, content.tobytes())
            elif kind == "compress":
                saver.save_compressed_page(out, "ram", addr, content.tobytes())
            else:
                content = expected[addr:addr + PAGE].copy()
                content[seed % PAGE] ^= 0x40  # one byte changed: a tiny delta
                delta = xbzrle.encode(expected[addr:addr + PAGE], content)
                assert delta
                saver.save_xbzrle_page(out, "ram", addr, delta)
            expected[addr:addr + PAGE] = content
        payloads.append(bytes(out))
    data = _stream(*payloads, size=12 * PAGE)
    ram = np.zeros(12 * PAGE, dtype=np.uint8)
    decoder = StreamDecoder(ram={"ram": ram})
    threads = DecompressThreads(2)
    decoder.loader.inflate = threads.inflate
    try:
        for at in range(0, len(data), chunk):
            decoder.receive_data(data[at:at + chunk])
            decoder.events()
    finally:
        threads.close()
    assert np.array_equal(ram, expected)
