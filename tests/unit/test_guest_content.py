"""harness.guest.content: the page oracle, initial fill, digests and mismatch detection."""

from __future__ import annotations

import os

import numpy as np
import pytest

from harness.guest import content
from harness.guest.content import (
    expected_digests,
    initial_fill,
    mismatched_pages,
    page_contents,
    page_digests,
    write_pages,
)
from harness.guest.leaks import leftover_segments
from harness.guest.memory import PAGE_SIZE, BlockSpec, GuestMemory


@pytest.fixture(autouse=True)
def no_leftovers():
    before = set(leftover_segments())
    yield
    assert set(leftover_segments()) <= before, "a test left a /dev/shm segment behind"


def as_bytes(words: np.ndarray) -> np.ndarray:
    return words.view(np.uint8).reshape(len(words), PAGE_SIZE)


def test_content_is_a_pure_function_of_its_inputs():
    pages = np.arange(200)
    versions = np.arange(200) % 5
    a = page_contents(7, 1, pages, versions, 0.5)
    assert np.array_equal(a, page_contents(7, 1, pages, versions, 0.5))
    for other in (page_contents(8, 1, pages, versions, 0.5),
                  page_contents(7, 2, pages, versions, 0.5)):
        differs = (a != other).any(axis=1)
        nonzero = a.any(axis=1)
        assert differs[nonzero].all()  # every non-zero page depends on seed and block


@pytest.mark.parametrize("fill", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_zero_share_at_version0_follows_fill(fill):
    pages = np.arange(20000)
    nonzero = content.nonzero_at_version0(3, 0, pages, fill)
    assert abs(nonzero.mean() - fill) < 0.02
    if fill in (0.0, 1.0):
        assert nonzero.mean() == fill
    words = page_contents(3, 0, pages[:2000], 0, fill)
    assert np.array_equal(words.any(axis=1), nonzero[:2000])


def test_fill_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="fill"):
        content.nonzero_at_version0(0, 0, np.arange(3), 1.5)


def test_rewritten_pages_are_never_zero_and_carry_their_stamp():
    pages = np.arange(5000)
    versions = 1 + pages % 40
    words = page_contents(11, 3, pages, versions, 0.0)  # fill 0: base would be zero at v0
    assert words.any(axis=1).all()
    raw = as_bytes(words)
    assert np.array_equal(raw[:, 8:12].copy().view("<u4").ravel(), pages.astype(np.uint32))
    assert np.array_equal(raw[:, 12:16].copy().view("<u4").ravel(), versions.astype(np.uint32))


def test_consecutive_versions_differ_in_a_few_hundred_bytes():
    pages = np.arange(300)
    for v in (1, 2, 15, 16, 17):
        a = as_bytes(page_contents(5, 0, pages, v, 1.0))
        b = as_bytes(page_contents(5, 0, pages, v + 1, 1.0))
        changed = (a != b).sum(axis=1)
        assert changed.min() >= 200 and changed.max() <= 16 + 2 * 256
        window = (v + 1) * 256 % PAGE_SIZE
        assert (b[:, window + 16:window + 256] != a[:, window + 16:window + 256]).any(axis=1).all()


def test_write_pages_then_oracle_agrees_and_untouched_pages_stay():
    ram = np.zeros(64 * PAGE_SIZE, np.uint8)
    versions = np.zeros(64, np.int64)
    pages = np.array([1, 5, 6, 63])
    versions[pages] = [1, 2, 300, 7]
    write_pages(ram, 9, 2, pages, versions[pages], 1.0)
    assert mismatched_pages(ram, 9, 2, versions, 0.0).size == 0
    assert np.array_equal(page_digests(ram), expected_digests(9, 2, versions, 0.0))
    # with fill 1.0, the oracle wants base content at every untouched page
    assert set(mismatched_pages(ram, 9, 2, versions, 1.0)) == set(range(64)) - set(pages)


def test_initial_fill_writes_only_nonzero_pages_and_matches_the_oracle():
    blocks = [BlockSpec("pc.ram", 4096 * PAGE_SIZE), BlockSpec("pc.bios", 64 * PAGE_SIZE)]
    with GuestMemory.create(blocks) as mem:
        written = initial_fill(mem, 21, 0.25)
        allocated = os.stat(f"/dev/shm/{mem.name}").st_blocks * 512
        assert abs(written / mem.npages - 0.25) < 0.03
        assert allocated < (written + 64) * PAGE_SIZE  # zero pages were not touched
        nonzero = 0
        for index, spec in enumerate(mem.blocks):
            ram, versions = mem.ram[spec.name], mem.version[mem.page_slice(index)]
            assert mismatched_pages(ram, 21, index, versions, 0.25).size == 0
            assert mismatched_pages(ram, 21, index, versions, 0.5).size > 0
            nonzero += int(ram.reshape(-1, PAGE_SIZE).any(axis=1).sum())
        assert nonzero == written


def test_initial_content_array_equals_a_filled_guest_block():
    with GuestMemory.create([BlockSpec("ram", 512 * PAGE_SIZE)]) as mem:
        initial_fill(mem, 12, 0.4)
        assert np.array_equal(content.initial_content_array(512 * PAGE_SIZE, 12, 0.4),
                              mem.ram["ram"])
    with pytest.raises(ValueError, match="multiple of 4096"):
        content.initial_content_array(100, 0, 0.5)


def test_initial_fill_of_a_full_block_prefaults_and_matches():
    with GuestMemory.create([BlockSpec("ram", 32 << 20)]) as mem:
        assert initial_fill(mem, 4, 1.0) == mem.npages
        assert mismatched_pages(mem.ram["ram"], 4, 0, mem.version, 1.0).size == 0


@pytest.mark.parametrize("offset", [0, 1, 7, 8, 2047, 4095])
def test_a_single_flipped_byte_changes_exactly_that_digest(offset):
    rng = np.random.default_rng(offset)
    ram = np.frombuffer(rng.bytes(16 * PAGE_SIZE), np.uint8).copy()
    before = page_digests(ram)
    page = int(rng.integers(0, 16))
    bit = 1 << int(rng.integers(0, 8))
    ram[page * PAGE_SIZE + offset] ^= bit
    after = page_digests(ram)
    assert np.flatnonzero(before != after).tolist() == [page]
    assert mismatched_pages(ram, 0, 0, np.zeros(16, np.int64), 1.0).size == 16  # random != oracle


def test_digests_of_distinct_pages_do_not_collide():
    pages = np.arange(50000)
    ram = np.ascontiguousarray(page_contents(1, 0, pages, 1 + pages % 3, 1.0)).view(np.uint8)
    digests = page_digests(ram.ravel())
    assert np.unique(digests).size == pages.size
    assert page_digests(np.zeros(2 * PAGE_SIZE, np.uint8))[0] == page_digests(
        np.zeros(PAGE_SIZE, np.uint8))[0]


def test_mismatch_pinpoints_a_corrupted_page():
    versions = np.zeros(128, np.int64)
    versions[::3] = 4
    ram = np.zeros(128 * PAGE_SIZE, np.uint8)
    pages = np.arange(128)
    write_pages(ram, 2, 0, pages, versions, 0.6)
    assert mismatched_pages(ram, 2, 0, versions, 0.6).size == 0
    ram[77 * PAGE_SIZE + 1000] ^= 0x10
    assert mismatched_pages(ram, 2, 0, versions, 0.6).tolist() == [77]
    versions[12] += 1  # a page one version behind the oracle is stale
    assert mismatched_pages(ram, 2, 0, versions, 0.6).tolist() == [12, 77]


def test_holes_count_as_zero_pages_and_are_not_read():
    with GuestMemory.create([BlockSpec("ram", 1024 * PAGE_SIZE)]) as mem:
        initial_fill(mem, 8, 0.05)
        ram, versions = mem.ram["ram"], mem.version
        backed = mem.backed_pages("ram")
        assert 0 < backed.sum() < 200
        digests = page_digests(ram, backed)
        assert mismatched_pages(ram, 8, 0, versions, 0.05, backed).size == 0
        assert mismatched_pages(ram, 8, 0, versions, 0.5, backed).size > 0
        assert np.array_equal(mem.backed_pages("ram"), backed)  # holes stayed holes
        assert np.array_equal(digests, page_digests(ram))  # reading them agrees
        assert np.array_equal(digests, expected_digests(8, 0, versions, 0.05))


def test_chunking_does_not_change_results(monkeypatch):
    pages = np.arange(300)
    versions = pages % 4
    ram = np.zeros(300 * PAGE_SIZE, np.uint8)
    write_pages(ram, 6, 1, pages, versions, 0.7)
    reference = (page_digests(ram), expected_digests(6, 1, versions, 0.7))
    monkeypatch.setattr(content, "CHUNK_PAGES", 7)
    ram2 = np.zeros_like(ram)
    write_pages(ram2, 6, 1, pages, versions, 0.7)
    assert np.array_equal(ram, ram2)
    assert np.array_equal(page_digests(ram), reference[0])
    assert np.array_equal(expected_digests(6, 1, versions, 0.7), reference[1])
    assert mismatched_pages(ram, 6, 1, versions, 0.7).size == 0
    with GuestMemory.create([BlockSpec("ram", 300 * PAGE_SIZE)]) as mem:
        initial_fill(mem, 6, 0.7)
        assert mismatched_pages(mem.ram["ram"], 6, 0, mem.version, 0.7).size == 0


def test_vectorised_paths_handle_a_quarter_gib():
    """Speed sanity without a timing assert: 256 MiB filled, digested and checked."""
    with GuestMemory.create([BlockSpec("ram", 256 << 20)]) as mem:
        written = initial_fill(mem, 13, 0.5)
        digests = page_digests(mem.ram["ram"])
        assert np.array_equal(digests, expected_digests(13, 0, mem.version, 0.5))
        assert (digests != page_digests(np.zeros(PAGE_SIZE, np.uint8))[0]).sum() == written
