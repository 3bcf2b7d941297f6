"""Codec benchmark: encode and decode 1 GiB of RAM as page records, beside a memory copy.

Not a test.  One process, no sockets: it measures the codec's page path alone.  The RAM is
half zero pages, half random pages, laid out two ways: `interleaved` (each page zero or
random at random: the worst case, runs average two pages) and `clustered` (runs of 64
pages: what a bulk pass over a real guest looks like).  Every figure is GB/s of guest RAM
covered (1 GiB / seconds), printed beside the baseline measured in the same run: a numpy
copy of the same 1 GiB into prefaulted memory.  Goal (issue 2): decoding >= 1/3 of the
copy rate.

    python benchmarks/codec.py [--size-mib 1024] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from harness.bench.codec import copy_seconds, decode_seconds
from harness.protocol import RamBlockInfo, SectionType, StreamEncoder

PAGE = 4096


def make_ram(size: int, layout: str, seed: int = 1) -> np.ndarray:
    pages = size // PAGE
    rng = np.random.default_rng(seed)
    if layout == "interleaved":
        zero = rng.random(pages) < 0.5
    else:
        zero = np.zeros(pages, dtype=bool)
        zero.reshape(-1, 64)[::2] = True
    ram = np.zeros(size, dtype=np.uint8)
    nonzero = np.flatnonzero(~zero)
    view = ram.reshape(pages, PAGE)
    for chunk in np.array_split(nonzero, max(1, nonzero.size // 4096)):
        view[chunk] = rng.integers(0, 256, (chunk.size, PAGE), dtype=np.uint8)
    return ram


def encode(ram: np.ndarray) -> tuple[bytes, float]:
    enc = StreamEncoder()
    head = enc.header() + enc.configuration("none") + enc.ram_start(2, [RamBlockInfo("ram", ram.size)])
    records = bytearray()
    t = time.perf_counter()
    enc.ram.save_pages(records, "ram", ram, range(ram.size // PAGE))
    elapsed = time.perf_counter() - t
    tail = enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof()
    stream = head + enc.section_header(SectionType.SECTION_PART, 2) + records + b"\0" * 7 + b"\x10" \
        + enc.footer(2) + tail
    return bytes(stream), elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    size = args.size_mib << 20
    gb = size / 1e9
    dst = np.zeros(size, dtype=np.uint8)
    dst.fill(1)  # prefault
    figures = []
    for layout in ("interleaved", "clustered"):
        ram = make_ram(size, layout)
        copy = min(copy_seconds(ram, dst) for _ in range(args.repeat))
        enc_times, dec_times = [], []
        for _ in range(args.repeat):
            stream, t_enc = encode(ram)
            enc_times.append(t_enc)
            dst.fill(0xAA)
            dec_times.append(decode_seconds(stream, dst))
            assert np.array_equal(dst, ram), "decoded RAM differs from the source"
            del stream
        base = gb / copy
        for name, t in (("encode", min(enc_times)), ("decode", min(dec_times))):
            rate = gb / t
            figures.append({"name": f"{name}.{layout}", "value": round(rate, 3), "unit": "GB/s",
                            "baseline": round(base, 3), "ratio": round(rate / base, 3),
                            "goal": 1 / 3 if name == "decode" else None})
    print(f"{'figure':<24}{'GB/s':>8}{'memcpy GB/s':>14}{'ratio':>8}{'goal':>8}")
    for f in figures:
        goal = f"{f['goal']:.2f}" if f["goal"] else "-"
        print(f"{f['name']:<24}{f['value']:>8.2f}{f['baseline']:>14.2f}{f['ratio']:>8.2f}{goal:>8}")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"figures": figures}, fh, indent=1)


if __name__ == "__main__":
    main()
