"""The hot page path: holes, zero pages, batch budgets, the saver's runs, the loader's runs.

Byte-level claims are checked against a plain reference (pages framed one by one), so
the fast paths (a run framed with one copy, zero pages found in the copy, batches that
take more zero pages, holes sent without reading) are shown to change nothing on the wire.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from harness.guest.leaks import leftover_segments
from harness.guest.memory import PAGE_SIZE, BlockSpec, GuestMemory
from harness.protocol import StreamDecoder
from harness.protocol.constants import RamFlag
from harness.protocol.ram import RamLoader
from harness.protocol.ram_saver import FrameBuffer, RamSaver
from harness.protocol.savevm import PausedStream
from harness.protocol.wire import Reader
from source.ram_save import BATCH_PAGES, ZERO_BATCH_FACTOR, RamSave

pytestmark = pytest.mark.codec  # run again on the Python page path (.ci/run)

PAGE = PAGE_SIZE


@pytest.fixture(autouse=True)
def no_leftovers():
    before = set(leftover_segments())
    yield
    assert set(leftover_segments()) <= before, "a test left a /dev/shm segment behind"


def _reference(mem: np.ndarray, pages: list[int], block: str = "ram") -> bytes:
    """The records of `pages`, framed one page at a time (no fast path)."""
    saver = RamSaver()
    out = bytearray()
    for page in pages:
        data = mem[page * PAGE:(page + 1) * PAGE]
        if not data.any():
            saver.save_zero_page(out, block, page * PAGE)
        else:
            saver.save_page(out, block, page * PAGE, data.tobytes())
    return bytes(out)


def _mixed_ram(pages: int, zero_every: int = 0, seed: int = 1) -> np.ndarray:
    ram = np.random.default_rng(seed).integers(0, 256, pages * PAGE, dtype=np.uint8)
    ram[:PAGE] = 0  # the first page is a zero page
    if zero_every:
        for p in range(0, pages, zero_every):
            ram[p * PAGE:(p + 1) * PAGE] = 0
    ram[7 * PAGE + 4095] = 0  # a page whose last byte only is zero is not a zero page
    ram[9 * PAGE:10 * PAGE] = 0
    ram[9 * PAGE + 4095] = 1  # nor is one whose first word only is zero
    return ram


@pytest.mark.parametrize("zero_every", [0, 3, 50])
def test_saver_runs_equal_page_by_page_records(zero_every):
    ram = _mixed_ram(600, zero_every)
    saver = RamSaver()
    out = FrameBuffer(1 << 12)  # grows as needed
    saver.save_pages(out, "ram", ram, range(1))  # names the block
    for lo in range(1, 600, 199):
        saver.save_pages(out, "ram", ram, np.arange(lo, min(lo + 199, 600)))
    assert bytes(out.view()) == _reference(ram, list(range(600)))


def test_single_requested_pages_equal_page_by_page_records():
    """The one-page path (postcopy requests): block name first, then CONTINUE; zero pages
    as ZERO records -- also a page whose first word only, or last byte only, is zero."""
    ram = _mixed_ram(16)
    pages = [0, 7, 9, 3, 3, 15, 1]
    saver = RamSaver()
    out = FrameBuffer(64)
    counts = [saver.save_pages(out, "ram", ram, np.array([page])) for page in pages]
    assert bytes(out.view()) == _reference(ram, pages)
    assert counts[0] == (1, 0) and counts[1] == (0, 1) and counts[2] == (0, 1)
    rams = RamSave({"ram": ram}, dict)
    assert rams.take_pages("ram", 5 * PAGE, PAGE).tolist() == [5]
    assert rams.take_pages("ram", 5 * PAGE, PAGE).size == 0  # taken: it went out already
    assert rams.take_pages("ram", 4 * PAGE, 3 * PAGE).tolist() == [4, 6]


def _send_all(ram_save: RamSave, limit: int = BATCH_PAGES) -> tuple[bytes, list[int]]:
    out = FrameBuffer()
    sizes = []
    while (batch := ram_save.next_batch(limit, more_zeros=True)) is not None:
        before = len(out)
        ram_save.encode(out, *batch)
        sizes.append(len(out) - before)
    return bytes(out.view()), sizes


def test_batches_take_more_zero_pages_within_the_same_bytes():
    pages = 40 * BATCH_PAGES
    ram = np.zeros(pages * PAGE, dtype=np.uint8)
    ram[-3 * BATCH_PAGES * PAGE:] = 7  # the last pages are normal pages
    saver = RamSave({"ram": ram}, dict)
    data, sizes = _send_all(saver)
    assert data == _reference(ram, list(range(pages)))
    budget = BATCH_PAGES * (PAGE + 8) + 4  # + the first record's block name
    assert max(sizes) <= budget
    # zero pages: 9 bytes each, so a batch holds ZERO_BATCH_FACTOR x more of them
    assert len(sizes) < 37 / ZERO_BATCH_FACTOR + 3 + 2
    assert saver.stats.duplicate == 37 * BATCH_PAGES and saver.stats.normal == 3 * BATCH_PAGES


def test_a_small_budget_is_kept_whatever_the_zero_pages():
    ram = _mixed_ram(2000, zero_every=2)
    saver = RamSave({"ram": ram}, dict)
    data, sizes = _send_all(saver, limit=3)
    assert data == _reference(ram, list(range(2000)))
    assert max(sizes[1:]) <= 3 * (PAGE + 8)


def test_holes_are_zero_pages_sent_without_reading_them():
    with GuestMemory.create([BlockSpec("ram", 4096 * PAGE)]) as mem:
        ram = mem.ram["ram"]
        ram[100 * PAGE:300 * PAGE] = 5
        ram[1000 * PAGE + 9] = 1
        saver = RamSave(dict(mem.ram), dict, holes=mem.holes)
        data, _ = _send_all(saver)
        # nothing was read into existence: only the written pages are backed
        assert np.flatnonzero(mem.backed_pages("ram")).tolist() == \
            [*range(100, 300), 1000]
        assert data == _reference(ram, list(range(4096)))


def test_holes_of_a_segment_come_from_any_process():
    with GuestMemory.create([BlockSpec("a", 4 * PAGE), BlockSpec("ram", 512 * PAGE)]) as mem:
        assert mem.holes("ram", 0, 512).all()
        other = GuestMemory.attach(mem.descriptor)
        pid = os.fork()
        if pid == 0:  # another process (a workload) writes two pages
            other.ram["ram"][7 * PAGE + 5] = 9
            other.ram["ram"][300 * PAGE] = 1
            os._exit(0)
        os.waitpid(pid, 0)
        other.close()
        holes = mem.holes("ram", 0, 512)
        assert holes is not None and np.flatnonzero(~holes).tolist() == [7, 300]
        assert mem.holes("ram", 7, 8) is None  # no hole in that range
        mem.populate("ram", 0, 512)
        assert mem.holes("ram", 0, 512) is None
        with pytest.raises(IndexError):
            mem.holes("ram", 0, 513)


def test_a_page_written_after_its_window_was_scanned_is_sent_again():
    """Holes are looked at once per scan window and forgotten at each bitmap sync: a
    page the guest writes meanwhile is dirty, so the next pass sends its content."""
    with GuestMemory.create([BlockSpec("ram", 1024 * PAGE)]) as mem:
        ram = mem.ram["ram"]
        dirty = np.zeros(1024, dtype=bool)

        def harvest() -> dict[str, np.ndarray]:
            out = {"ram": dirty.copy()}
            dirty[:] = False
            return out

        saver = RamSave(dict(mem.ram), harvest, holes=mem.holes)
        first = saver.next_batch(8)
        assert first is not None
        saver.encode(FrameBuffer(), *first)  # the window's holes are known now
        ram[500 * PAGE:501 * PAGE] = 3  # the guest writes a page the window saw as a hole
        dirty[500] = True
        _send_all(saver)  # the rest of the first pass (page 500 may go as a zero page)
        assert saver.bitmap_sync() == 1
        data, _ = _send_all(saver)
        header = (500 * PAGE | int(RamFlag.PAGE) | int(RamFlag.CONTINUE)).to_bytes(8, "big")
        assert data == header + bytes([3]) * PAGE


def test_loader_zero_runs_zero_pages_that_held_something():
    source = _mixed_ram(64, zero_every=2)
    for stale in (0, 9):  # a fresh destination, and one with other content everywhere
        target = np.full_like(source, stale)
        decoder = StreamDecoder(ram={"ram": target})
        decoder.receive_data(PausedStream(ram={"ram": source}).encode())
        decoder.receive_data(b"")
        decoder.events()
        assert np.array_equal(target, source)


def test_loader_runs_placed_whole_equal_records_placed_one_by_one():
    ram = _mixed_ram(300, zero_every=7)
    saver = RamSaver()
    records = bytearray()
    saver.save_pages(records, "ram", ram, range(300))
    for chunk in (len(records), 5000, 4104 * 3 + 1):
        dst = np.zeros_like(ram)
        loader = RamLoader({"ram": dst})
        buf = bytearray()
        kinds = []
        for at in range(0, len(records), chunk):
            buf += records[at:at + chunk]
            r = Reader(buf, 0, len(buf))
            events, _ = loader.load(r, 1)
            del buf[:r.pos]
            kinds += [int(k) for ev in events for k in ev.kinds]
        assert np.array_equal(dst, ram)
        assert kinds.count(int(RamFlag.ZERO)) == sum(not ram[p * PAGE:(p + 1) * PAGE].any()
                                                     for p in range(300))


def test_without_more_zeros_a_batch_is_at_most_limit_pages():
    ram = np.zeros(64 * PAGE, dtype=np.uint8)
    saver = RamSave({"ram": ram}, dict)
    while (batch := saver.next_batch(5)) is not None:
        assert batch[1].size <= 5
