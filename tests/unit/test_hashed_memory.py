"""The memory oracle across hosts (harness/realguest/hashed.py): the same data through the
local byte-comparing path and through per-host digests gives the same verdicts and the
same messages -- identical, consistent and source-intact -- with a corrupted page too;
and the summary's wire form is exact and refuses what is malformed.

Strategy: each case builds both sides' RAM blocks (a synthetic real-guest wave from
test_realguest_wave, plus ROM-like blocks), runs the invariants once with the arrays
(source_memory / page_digests, as a local run does) and once with `summarize`d sides sent
through `summary_message` / `summary_from_message` (as a remote run does), the page
fetch answering from the arrays, and compares every invariant's `ok` and `detail`.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.guest.content import page_digests
from harness.invariants import check_all
from harness.invariants.base import Evidence, Expectations
from harness.realguest.hashed import (
    DIGEST,
    MemorySummary,
    page_hashes,
    summarize,
    summary_from_message,
    summary_message,
)
from harness.realguest.image import GuestProgram
from harness.runner.result import PeerOutcome
from tests.unit.test_realguest_wave import gpa, page_words, wave_ram

MiB = 1 << 20
PROGRAM = GuestProgram(memory=16 * MiB, dirty_rate=MiB)
MEMORY_CHECKS = ("memory-identical", "memory-consistent", "memory-source-intact")


def _blocks(ram: np.ndarray, rom_byte: int = 7) -> dict[str, np.ndarray]:
    rom = np.full(64 * 1024, rom_byte, dtype=np.uint8)
    return {"pc.ram": ram, "pc.bios": rom, "/rom@etc/acpi/rsdp": np.zeros(4096, np.uint8)}


def _wire(summary: MemorySummary) -> MemorySummary:
    value, blob = summary_message(summary)
    return summary_from_message(value, blob)


def _verdicts(expect: str, src: dict[str, np.ndarray], dst: dict[str, np.ndarray] | None,
              hashed: bool) -> dict[str, tuple[bool, str]]:
    ev = Evidence(Expectations(memory=expect), PeerOutcome(kind="qemu"),
                  PeerOutcome(kind="qemu"))
    ev.program = PROGRAM
    fetched: list[int] = []
    if hashed:
        ev.source_summary = _wire(summarize(src, PROGRAM))
        ev.source_digests = ev.source_summary.hashes
        if dst is not None:
            ev.destination_summary = _wire(summarize(dst, PROGRAM))
            ev.destination_digests = ev.destination_summary.hashes

        def fetch(side: str, block: str, pages: list[int]) -> dict[int, bytes]:
            fetched.extend(pages)
            data = (src if side == "source" else dst)[block]  # type: ignore[index]
            return {p: data[p * 4096:(p + 1) * 4096].tobytes() for p in pages}
        ev.page_fetch = fetch
    else:
        ev.source_memory = src
        ev.source_digests = {n: page_digests(b) for n, b in src.items()}
        if dst is not None:
            ev.destination_memory = dst
            ev.destination_digests = {n: page_digests(b) for n, b in dst.items()}
    out = {r.name: (r.ok, r.detail) for r in check_all(ev) if r.name in MEMORY_CHECKS}
    assert len(fetched) <= 2 * 11  # only the pages a message quotes ever cross
    return out


def _same(expect: str, src: dict[str, np.ndarray],
          dst: dict[str, np.ndarray] | None) -> dict[str, tuple[bool, str]]:
    local = _verdicts(expect, src, dst, hashed=False)
    assert _verdicts(expect, src, dst, hashed=True) == local
    return local


def test_identical_memory_gives_the_same_pass_both_ways():
    ram = wave_ram(PROGRAM, 5, 100)
    [(ok, detail)] = _same("identical", _blocks(ram), _blocks(ram.copy())).values()
    assert ok and detail.startswith("all ")


def test_a_corrupted_page_is_named_alike_both_ways():
    ram = wave_ram(PROGRAM, 5, 100)
    dst = ram.copy()
    dst[gpa(PROGRAM, 40) + 100] ^= 0xFF
    dst_blocks = _blocks(dst, rom_byte=8)
    [(ok, detail)] = _same("identical", _blocks(ram), dst_blocks).values()
    assert not ok
    assert f"pc.ram: 1 pages differ (first at {gpa(PROGRAM, 40):#x})" in detail
    assert "pc.bios: 16 pages differ" in detail


def test_a_consistent_destination_ahead_of_its_source_passes_alike():
    src = wave_ram(PROGRAM, 5, 100)
    dst = wave_ram(PROGRAM, 6, 7)  # ran on: a later sweep, same page bodies
    [(ok, detail)] = _same("consistent", _blocks(src), _blocks(dst)).values()
    assert ok and "unbroken wave on both sides" in detail


def test_consistent_names_a_torn_stale_and_a_changed_page_alike():
    src = wave_ram(PROGRAM, 5, 100)
    dst = wave_ram(PROGRAM, 6, 7)
    words = page_words(dst, PROGRAM)
    words[50, 0] -= 1                     # stale in the destination
    words[60, 9] ^= 0x1234                # a body word changed in transit
    for page in range(200, 215):          # more than MAX_LISTED: the count follows
        words[page, 20] += 1
    dst[0x9000] ^= 1                      # below the range, not the scratch page
    [(ok, detail)] = _same("consistent", _blocks(src), _blocks(dst)).values()
    assert not ok
    assert f"destination page {gpa(PROGRAM, 50):#x}: stale" in detail
    assert f"page {gpa(PROGRAM, 60):#x}: differs at byte 0x24" in detail
    assert "more pages" in detail


def test_the_scratch_page_and_gen_words_are_ignored_alike():
    src = wave_ram(PROGRAM, 5, 100)
    dst = wave_ram(PROGRAM, 6, 7)
    dst[0x6000:0x6020] = 0xAB             # the guest's heartbeat page (GUEST_SCRATCH)
    [(ok, _)] = _same("consistent", _blocks(src), _blocks(dst)).values()
    assert ok


def test_a_source_wave_with_a_stale_page_is_not_intact_alike():
    src = wave_ram(PROGRAM, 5, 100)
    page_words(src, PROGRAM)[30, 0] = 1
    [(ok, detail)] = _same("source-intact", _blocks(src), None).values()
    assert not ok and f"page {gpa(PROGRAM, 30):#x}: stale" in detail
    [(ok, detail)] = _same("source-intact", _blocks(wave_ram(PROGRAM, 3, 9)), None).values()
    assert ok and "sweep 3" in detail


def test_page_hashes_are_blake2b_128_per_page():
    import hashlib

    data = np.arange(3 * 4096 + 10, dtype=np.uint32).astype(np.uint8)
    hashes = page_hashes(data)
    assert hashes.size == 4  # the partial last page is hashed as it is
    assert hashes[1].tobytes() == hashlib.blake2b(data[4096:8192].tobytes(),
                                                  digest_size=DIGEST).digest()
    assert hashes[3].tobytes() == hashlib.blake2b(data[3 * 4096:].tobytes(),
                                                  digest_size=DIGEST).digest()


def test_a_summary_is_a_256th_of_the_ram_and_survives_the_wire():
    summary = summarize(_blocks(wave_ram(PROGRAM, 2, 3)), PROGRAM)
    value, blob = summary_message(summary)
    total = sum(summary.sizes.values())
    assert len(blob) == summary.wire_bytes <= total // 256 * 2
    back = summary_from_message(value, blob)
    assert back.main == "pc.ram" and back.wave == summary.wave
    assert all((back.hashes[n] == h).all() for n, h in summary.hashes.items())


@pytest.mark.parametrize("damage, message", [
    (lambda v, b: (v, b[:-1]), "bytes of digests"),
    (lambda v, b: ({**v, "blocks": [{**v["blocks"][0], "pages": 3}, *v["blocks"][1:]]}, b),
     "pages"),
    (lambda v, b: ({**v, "main": "nope"}, b), "main block"),
    (lambda v, b: ({**v, "blocks": [{"name": "", "size": 0, "pages": 0}]}, b), "block name"),
    (lambda v, b: ({**v, "blocks": "x"}, b), "no block list"),
])
def test_a_malformed_summary_is_refused(damage, message):
    value, blob = summary_message(summarize(_blocks(wave_ram(PROGRAM, 2, 3)), PROGRAM))
    with pytest.raises(ValueError, match=message):
        summary_from_message(*damage(value, blob))
