"""The real guest's image: reproducible bytes, the parameter block, and GNU as agreeing.

Strategy: the image is generated from annotated bytes, so three things must hold: the
bytes for a reference program never change silently (a pinned sha256); only the
parameter block depends on the program; and the annotations are the instructions their
bytes encode -- tests/data/realguest.S is the program's listing (checked to be current),
and GNU as + ld turn it into exactly the bytes Python emits (skipped without binutils).
Also: the heartbeat parser on a real `xp` reply and on broken ones, the fixed-point rate
words, and the Asm helper's jump relaxation and errors.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.realguest.asm import Asm, AsmError
from harness.realguest.heartbeat import Heartbeat, parse_heartbeat, parse_xp_words
from harness.realguest.image import (
    BURST_SECONDS,
    HEARTBEAT_MAGIC,
    HEARTBEAT_SIZE,
    PARAMS_GPA,
    GuestProgram,
    build_image,
    program_listing,
    write_image,
)

MiB = 1 << 20
REFERENCE = GuestProgram(memory=256 * MiB, dirty_rate=64 * MiB)
REFERENCE_SHA256 = "9537e8a95af439db51bb2f66fb0c1b397f699ae150aff6c8a6a9950a13f7ec45"
LISTING = Path(__file__).resolve().parent.parent / "data" / "realguest.S"
PARAMS = PARAMS_GPA - 0x7C00          # file offset of the parameter block
# QEMU 7.2.22's reply format for `xp /8wx 0x6000`, with the words of a real run (pc, TCG)
XP_REPLY = ("0000000000006000: 0x31484752 0x000001f5 0x00379000 0x00000002\r\n"
            "0000000000006010: 0x00010079 0x00000000 0x000003e3 0x00000000\r\n")


def params(image: bytes) -> tuple[int, ...]:
    return struct.unpack_from("<6I", image, PARAMS)


# ---------------------------------------------------------------------- the image
def test_the_reference_image_is_reproducible() -> None:
    image = build_image(REFERENCE)
    assert len(image) == 4 * 512
    assert hashlib.sha256(image).hexdigest() == REFERENCE_SHA256
    assert image[510:512] == b"\x55\xaa"


def test_the_parameter_block_holds_the_program() -> None:
    program = GuestProgram(memory=512 * MiB, dirty_rate=MiB, pattern="hotset",
                           hotset=8 * MiB)
    start, end, sweep_end, rate, cap, divisor = params(build_image(program))
    assert (start, end, sweep_end) == (0x100000, 511 * MiB, 0x100000 + 8 * MiB)
    assert (rate, cap, divisor) == (program.rate_fixed, program.budget_cap, 1193)


def test_only_the_parameter_block_depends_on_the_program() -> None:
    one = build_image(REFERENCE)
    other = build_image(GuestProgram(memory=1024 * MiB, dirty_rate=0))
    differing = [i for i in range(len(one)) if one[i] != other[i]]
    assert differing and all(PARAMS <= i < PARAMS + 24 for i in differing)


def test_write_image_pads_sparsely_to_one_mib(tmp_path: Path) -> None:
    path = write_image(REFERENCE, tmp_path / "guest.img")
    data = path.read_bytes()
    assert len(data) == MiB, "q35's AHCI needs >= 1008 sectors (F11)"
    assert data.startswith(build_image(REFERENCE))
    assert not data[4 * 512:].strip(b"\0")
    assert os.stat(path).st_blocks * 512 < 64 * 1024, "the padding is a hole"
    assert os.stat(path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("rate", [MiB, 4 * MiB, 64 * MiB, 512 * MiB, 1024 * MiB])
def test_the_paced_rate_is_the_dirty_rate_within_rounding(rate: int) -> None:
    program = GuestProgram(memory=256 * MiB, dirty_rate=rate)
    assert abs(program.paced_rate - rate) / rate < 1e-4
    burst_pages = program.budget_cap / 65536
    assert burst_pages == pytest.approx(max(rate / 4096 * BURST_SECONDS, 2), rel=1e-3)


def test_rate_zero_is_idle_and_huge_rates_saturate() -> None:
    idle = GuestProgram(memory=256 * MiB)
    assert (idle.rate_fixed, idle.budget_cap) == (0, 2 * 65536)
    flat_out = GuestProgram(memory=256 * MiB, dirty_rate=10**15)
    assert (flat_out.rate_fixed, flat_out.budget_cap) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert GuestProgram(memory=256 * MiB, dirty_rate=1).rate_fixed == 1


def test_the_range_follows_f10_and_stays_below_4g() -> None:
    assert (REFERENCE.start, REFERENCE.end, REFERENCE.pages) == (MiB, 255 * MiB, 65024)
    big = GuestProgram(memory=4096 * MiB)
    assert big.end == 2047 * MiB, "q35 keeps only 2 GiB below 4G at this size (F31)"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"memory": 3 * MiB}, "at least 4 MiB"),
    ({"memory": 256 * MiB + 1}, "multiple of 1 MiB"),
    ({"memory": 256 * MiB, "dirty_rate": -1}, ">= 0"),
    ({"memory": 256 * MiB, "pattern": "random"}, "uniform or hotset"),
    ({"memory": 256 * MiB, "pattern": "hotset"}, "exactly when"),
    ({"memory": 256 * MiB, "hotset": MiB}, "exactly when"),
    ({"memory": 256 * MiB, "pattern": "hotset", "hotset": 1000}, "whole pages"),
    ({"memory": 256 * MiB, "pattern": "hotset", "hotset": 256 * MiB}, "whole pages"),
])
def test_bad_programs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GuestProgram(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- GNU as
def test_the_checked_in_listing_is_the_reference_program() -> None:
    assert LISTING.read_text() == program_listing(REFERENCE), (
        "regenerate tests/data/realguest.S from program_listing(REFERENCE)")


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                    reason="GNU as/ld (binutils) not on PATH")
def test_gnu_as_assembles_the_listing_to_the_same_bytes(tmp_path: Path) -> None:
    obj, binary = tmp_path / "guest.o", tmp_path / "guest.bin"
    subprocess.run(["as", "--32", "-o", str(obj), str(LISTING)], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary",
                    "-e", "_start", "-o", str(binary), str(obj)], check=True,
                   capture_output=True, timeout=60)
    code = binary.read_bytes()
    image = build_image(REFERENCE)
    assert len(code) > 1024, "the listing holds the whole program"
    assert code == image[:len(code)] and not image[len(code):].strip(b"\0")


# ---------------------------------------------------------------------- Asm
def test_jumps_grow_to_near_only_when_rel8_does_not_reach() -> None:
    a = Asm(0x1000)
    a.mode(32)
    a.label("top")
    a.jump("jne", "far")
    a.jump("jmp", "top")
    for _ in range(130):
        a.ins("90", "nop")
    a.label("far")
    code = a.assemble()
    assert code[:6] == bytes([0x0F, 0x85]) + (6 + 2 + 130 - 6).to_bytes(4, "little")
    assert code[6:8] == bytes([0xEB, 0x100 - 8])


def test_asm_errors_name_the_problem() -> None:
    a = Asm(0x7C00)
    a.jump("jmp", "nowhere")
    with pytest.raises(AsmError, match="no label 'nowhere'"):
        a.assemble()
    b = Asm(0x7C00)
    b.ins("90", "nop")
    b.org(0)
    with pytest.raises(AsmError, match="already at 0x1"):
        b.assemble()
    with pytest.raises(AsmError, match="does not fit"):
        Asm(0).data(1, 256)


# ---------------------------------------------------------------------- heartbeat
def test_a_real_xp_reply_parses_to_a_heartbeat() -> None:
    beat = parse_heartbeat(parse_xp_words(XP_REPLY, 0x6000, 8))
    assert beat == Heartbeat(ticks=501, gen=2, cursor=0x379000, pages_written=65657)


@pytest.mark.parametrize(("reply", "message"), [
    (XP_REPLY.replace("6010:", "6020:"), "line at 0x6020, expected 0x6010"),
    (XP_REPLY.splitlines()[0], "has 4 words, expected 8"),
    ("Cannot access memory\r\n", "not understood"),
    (XP_REPLY * 40, "at most"),
])
def test_a_bad_xp_reply_is_refused(reply: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_xp_words(reply, 0x6000, 8)


def test_a_heartbeat_without_magic_or_with_bad_words_is_refused() -> None:
    good = struct.pack("<8I", HEARTBEAT_MAGIC, 5, 0x100000, 1, 0, 0, 0, 0)
    assert parse_heartbeat(good).cursor == 0x100000
    with pytest.raises(ValueError, match="magic 0x00000000"):
        parse_heartbeat(bytes(HEARTBEAT_SIZE))
    with pytest.raises(ValueError, match="not page-aligned"):
        parse_heartbeat(struct.pack("<8I", HEARTBEAT_MAGIC, 5, 0x100004, 1, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="gen 0"):
        parse_heartbeat(struct.pack("<8I", HEARTBEAT_MAGIC, 5, 0x100000, 0, 0, 0, 0, 0))
    with pytest.raises(ValueError, match="31 bytes"):
        parse_heartbeat(good[:31])
