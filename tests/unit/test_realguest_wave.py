"""The wave checker on synthetic guest RAM: perfect waves pass, each fault is named.

Strategy: `wave_ram` builds what the real guest leaves in RAM -- a 16 MiB guest whose
swept pages hold (gen, pfn, gen) on either side of a cursor, page bodies random (as
SeaBIOS leaves them), pages past a hotset at the init pass's (0, pfn, 0) -- then each test
breaks one thing the way a bad migration would and reads the exact problem text.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.realguest.image import GUEST_SCRATCH, GuestProgram
from harness.realguest.wave import MAX_LISTED, check_consistent, pages_ahead, read_wave

MiB = 1 << 20
PROGRAM = GuestProgram(memory=16 * MiB, dirty_rate=4 * MiB)
HOTSET = GuestProgram(memory=16 * MiB, dirty_rate=4 * MiB, pattern="hotset", hotset=2 * MiB)


def wave_ram(program: GuestProgram, gen: int, cursor_page: int, seed: int = 1) -> np.ndarray:
    """RAM of a guest stopped at (gen, cursor): pages before the cursor hold gen."""
    ram = np.random.default_rng(seed).integers(0, 256, program.memory, dtype=np.uint8)
    words = page_words(ram, program)
    words[:, 1] = program.start // 4096 + np.arange(program.pages)
    gens = np.where(np.arange(program.swept_pages) < cursor_page, gen, gen - 1)
    words[:program.swept_pages, 0] = gens
    words[:program.swept_pages, 1023] = gens
    words[program.swept_pages:, 0] = 0
    words[program.swept_pages:, 1023] = 0
    return ram


def page_words(ram: np.ndarray, program: GuestProgram) -> np.ndarray:
    return ram[program.start:program.end].view("<u4").reshape(-1, 1024)


def gpa(program: GuestProgram, page: int) -> int:
    return program.start + page * 4096


# ---------------------------------------------------------------------- read_wave
@pytest.mark.parametrize("cursor_page", [1, 17, 1000, 3583])
def test_a_perfect_wave_passes_and_gives_its_position(cursor_page: int) -> None:
    wave = read_wave(wave_ram(PROGRAM, 397, cursor_page), PROGRAM)
    assert wave.ok, wave.problems
    assert (wave.gen, wave.cursor) == (397, gpa(PROGRAM, cursor_page))


def test_a_finished_sweep_reads_as_the_next_one_at_start() -> None:
    done = read_wave(wave_ram(PROGRAM, 5, PROGRAM.swept_pages), PROGRAM)
    fresh = read_wave(wave_ram(PROGRAM, 6, 0), PROGRAM)
    assert done.ok and fresh.ok
    assert (done.gen, done.cursor) == (fresh.gen, fresh.cursor) == (6, PROGRAM.start)


def test_the_init_pass_state_is_gen_1_at_start() -> None:
    wave = read_wave(wave_ram(PROGRAM, 1, 0), PROGRAM)
    assert wave.ok and (wave.gen, wave.cursor) == (1, PROGRAM.start)


def test_the_page_being_written_may_be_torn() -> None:
    ram = wave_ram(PROGRAM, 9, 40)
    page_words(ram, PROGRAM)[39, 1023] = 8          # head added, tail not yet
    wave = read_wave(ram, PROGRAM)
    assert wave.ok, wave.problems
    assert wave.cursor == gpa(PROGRAM, 40)


def test_the_last_page_may_be_torn_at_the_wrap() -> None:
    ram = wave_ram(PROGRAM, 9, 0)                   # all 8: sweep 8 just ended
    page_words(ram, PROGRAM)[-1, 1023] = 7
    wave = read_wave(ram, PROGRAM)
    assert wave.ok, wave.problems
    assert (wave.gen, wave.cursor) == (9, PROGRAM.start)


def test_a_torn_page_elsewhere_is_named() -> None:
    ram = wave_ram(PROGRAM, 397, 2000)
    page_words(ram, PROGRAM)[100, 1023] = 396
    assert read_wave(ram, PROGRAM).problems == (
        f"page {gpa(PROGRAM, 100):#x}: torn (head 397, tail 396)",)


def test_a_stale_page_is_named() -> None:
    ram = wave_ram(PROGRAM, 397, 2000)
    page_words(ram, PROGRAM)[500, [0, 1023]] = 396
    wave = read_wave(ram, PROGRAM)
    assert (wave.gen, wave.cursor) == (397, gpa(PROGRAM, 2000))
    assert wave.problems == (f"page {gpa(PROGRAM, 500):#x}: stale (gen 396, wave says 397)",)


def test_a_page_ahead_of_the_wave_is_named() -> None:
    ram = wave_ram(PROGRAM, 397, 2000)
    page_words(ram, PROGRAM)[3000, [0, 1023]] = 397
    assert read_wave(ram, PROGRAM).problems == (
        f"page {gpa(PROGRAM, 3000):#x}: ahead of the wave (gen 397, wave says 396)",)


def test_a_misplaced_page_names_the_pfn_it_holds() -> None:
    ram = wave_ram(PROGRAM, 12, 10)
    words = page_words(ram, PROGRAM)
    words[701] = words[702]                          # the neighbour's content landed here
    expected_pfn = PROGRAM.start // 4096 + 702
    assert read_wave(ram, PROGRAM).problems == (
        f"page {gpa(PROGRAM, 701):#x}: misplaced (holds pfn {expected_pfn:#x})",)


def test_a_zeroed_page_was_never_written() -> None:
    ram = wave_ram(PROGRAM, 12, 10)
    page_words(ram, PROGRAM)[5] = 0
    assert read_wave(ram, PROGRAM).problems == (
        f"page {gpa(PROGRAM, 5):#x}: never written (gen 0, pfn word 0x0: not a wave page)",)


def test_problems_are_capped_and_counted() -> None:
    ram = wave_ram(PROGRAM, 50, 3000)
    page_words(ram, PROGRAM)[100:125, [0, 1023]] = 48
    problems = read_wave(ram, PROGRAM).problems
    assert len(problems) == MAX_LISTED + 1
    assert problems[0] == f"page {gpa(PROGRAM, 100):#x}: stale (gen 48, wave says 50)"
    assert problems[-1] == "... and 15 more pages"


def test_a_hotset_wave_passes_with_the_rest_at_init() -> None:
    wave = read_wave(wave_ram(HOTSET, 30, 200), HOTSET)
    assert wave.ok, wave.problems
    assert HOTSET.swept_pages == 512
    assert (wave.gen, wave.cursor) == (30, gpa(HOTSET, 200))


def test_a_hotset_write_past_the_boundary_is_named() -> None:
    ram = wave_ram(HOTSET, 30, 200)
    words = page_words(ram, HOTSET)
    words[HOTSET.swept_pages, [0, 1023]] = 1         # first page past the hotset
    words[HOTSET.swept_pages + 9] = 0                # and a page lost there
    assert read_wave(ram, HOTSET).problems == (
        f"page {HOTSET.sweep_end:#x}: written beyond the hotset (gen 1, tail 1; expected 0)",
        (f"page {HOTSET.sweep_end + 9 * 4096:#x}: never written "
        "(gen 0, pfn word 0x0: not a wave page)"))


def test_ram_shorter_than_the_swept_part_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before the swept part"):
        read_wave(np.zeros(PROGRAM.sweep_end - 4096, np.uint8), PROGRAM)
    with pytest.raises(ValueError, match="1-D uint8"):
        read_wave(np.zeros(PROGRAM.memory // 4, np.uint32), PROGRAM)


def test_pages_ahead_counts_page_writes_across_a_wrap() -> None:
    wave = read_wave(wave_ram(PROGRAM, 8, 0), PROGRAM)
    assert pages_ahead(wave, 7, PROGRAM.end - 4096, PROGRAM) == 1
    assert pages_ahead(wave, 8, PROGRAM.start, PROGRAM) == 0


# ---------------------------------------------------------------------- check_consistent
def test_a_destination_ahead_of_its_source_is_consistent() -> None:
    source = wave_ram(PROGRAM, 312, 1500)
    destination = source.copy()
    page_words(destination, PROGRAM)[:, [0, 1023]] += np.uint32(48)  # 48 more sweeps
    destination[GUEST_SCRATCH[0]:GUEST_SCRATCH[1]] = 7  # heartbeat and stack move on
    assert check_consistent(source, destination, PROGRAM) == []


def test_one_stale_page_in_the_destination_is_caught() -> None:
    source = wave_ram(PROGRAM, 312, 1500)
    destination = source.copy()
    words = page_words(destination, PROGRAM)
    words[:, [0, 1023]] += np.uint32(3)
    words[2222, [0, 1023]] -= np.uint32(1)
    assert check_consistent(source, destination, PROGRAM) == [
        f"destination page {gpa(PROGRAM, 2222):#x}: stale (gen 313, wave says 314)"]


def test_one_changed_byte_outside_the_gen_words_is_caught() -> None:
    source = wave_ram(PROGRAM, 312, 1500)
    destination = source.copy()
    destination[gpa(PROGRAM, 77) + 1000] ^= 0x40     # a page body byte
    destination[0x9000] ^= 1                         # low memory, outside the range
    changed = int(destination[gpa(PROGRAM, 77) + 1000 - 1000 % 4:][:4].view("<u4")[0])
    was = int(source[gpa(PROGRAM, 77) + 1000 - 1000 % 4:][:4].view("<u4")[0])
    problems = check_consistent(source, destination, PROGRAM)
    assert len(problems) == 2
    assert problems[0].startswith("page 0x9000: differs at byte 0x0 ")
    assert problems[1] == (f"page {gpa(PROGRAM, 77):#x}: differs at byte 0x3e8 (source "
                           f"{was:#010x}, destination {changed:#010x})")


def test_a_destination_behind_its_source_is_caught() -> None:
    source = wave_ram(PROGRAM, 312, 1500)
    destination = wave_ram(PROGRAM, 312, 1400)
    problems = check_consistent(source, destination, PROGRAM)
    assert problems == [
        (f"destination wave (gen 312, cursor {gpa(PROGRAM, 1400):#x}) is behind the source's "
        f"(gen 312, cursor {gpa(PROGRAM, 1500):#x})")]


def test_sizes_that_differ_are_named() -> None:
    source = wave_ram(PROGRAM, 3, 3)
    problems = check_consistent(source, source[:-4096].copy(), PROGRAM)
    assert problems == [(f"RAM sizes differ: source {PROGRAM.memory} bytes, destination "
                        f"{PROGRAM.memory - 4096} (the common part is compared)")]
