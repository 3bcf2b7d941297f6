"""Decoding page records into RAM, beside a memory copy of as much (`decode into RAM / memcpy`).

Strategy: in this process, no sockets: a guest RAM of interleaved zero and random pages
(each page zero or random at random, half each -- runs average two pages, the worst
case for run detection) is encoded once as a stream of page records; then, alternately
for `repeat` rounds (rounds.py), a numpy copy of the RAM into prefaulted memory (the
baseline) and the project's `StreamDecoder` placing the records into that memory, fed in
1 MiB chunks as a socket would give them.  Each round's decode is checked byte for byte.
Figures are GB/s of guest RAM (size / seconds).  The same measure as the codec part of
benchmarks/codec.py, whose goal issue 15 raises to 0.5.
"""

from __future__ import annotations

import time

import numpy as np

from harness.protocol import RamBlockInfo, SectionType, StreamDecoder, StreamEncoder

from .figures import Figure
from .rounds import DEFAULT_ROUNDS, interleave

PAGE = 4096
CHUNK = 1 << 20
GOAL = 0.5  # issue 15: decoding at least half the memcpy rate


def interleaved_ram(size: int, seed: int = 1) -> np.ndarray:
    """`size` bytes of pages each zero or random, at random (half each)."""
    pages = size // PAGE
    rng = np.random.default_rng(seed)
    ram = np.zeros((pages, PAGE), dtype=np.uint8)
    random = np.flatnonzero(rng.random(pages) >= 0.5)
    for chunk in np.array_split(random, max(1, random.size // 4096)):
        ram[chunk] = rng.integers(0, 256, (chunk.size, PAGE), dtype=np.uint8)
    return ram.reshape(-1)


def encode(ram: np.ndarray) -> bytes:
    """A whole precopy stream of one block "ram": header, the page records, EOF."""
    enc = StreamEncoder()
    out = bytearray(enc.header() + enc.configuration("none")
                    + enc.ram_start(2, [RamBlockInfo("ram", ram.size)])
                    + enc.section_header(SectionType.SECTION_PART, 2))
    enc.ram.save_pages(out, "ram", ram, range(ram.size // PAGE))
    out += (0x10).to_bytes(8, "big") + enc.footer(2)  # RAM_SAVE_FLAG_EOS, section footer
    out += enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof()
    return bytes(out)


def decode_seconds(stream: bytes, dst: np.ndarray) -> float:
    decoder = StreamDecoder(ram={"ram": dst})
    view = memoryview(stream)
    start = time.perf_counter()
    for at in range(0, len(stream), CHUNK):
        decoder.receive_data(view[at:at + CHUNK])
        decoder.events()
    decoder.receive_data(b"")
    decoder.events()
    return time.perf_counter() - start


def copy_seconds(src: np.ndarray, dst: np.ndarray) -> float:
    start = time.perf_counter()
    np.copyto(dst, src)
    return time.perf_counter() - start


def run(size: int = 256 << 20, repeat: int = DEFAULT_ROUNDS) -> list[Figure]:
    ram = interleaved_ram(size)
    stream = encode(ram)
    dst = np.empty_like(ram)
    dst.fill(1)  # prefault

    def decoded(_: int) -> float:
        dst.fill(0xAA)
        seconds = decode_seconds(stream, dst)
        if not np.array_equal(dst, ram):
            raise RuntimeError("decode: the decoded RAM differs from the encoded one")
        return seconds

    rounds = interleave(lambda i: copy_seconds(ram, dst), decoded, repeat)
    gb = size / 1e9
    label = f"{size >> 20}MiB"
    return [Figure.of(f"codec.decode-into-ram.interleaved-{label}", gb / rounds.median("value"),
                      "GB/s", gb / rounds.median("baseline"), goal=GOAL,
                      note=f"half zero, half random pages at random, one process, no "
                           f"socket; {rounds.note()}",
                      baseline_name="numpy copy of the same RAM into prefaulted memory")]
