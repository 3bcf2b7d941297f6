"""Write the example streams in examples/streams/ with the harness's own encoder.

    python examples/make_streams.py            # (re)write them
    python examples/make_streams.py --check    # exit 1 if a shipped file differs

- none-m16-pattern.bin: a paused `-M none -m 16` guest with a 16 KiB pattern at 0x10000;
  byte for byte what QEMU 7.2 writes for `-device loader,file=pattern.bin,addr=0x10000`.
- postcopy-none-m16.fwd.bin / .rp.bin: both directions of a postcopy migration of the same
  guest (a precopy pass over the first half, discard, PACKAGED listen/devices/run, the
  requested page first, then the rest) and its return path (PONGs, one page request, SHUT).
- xbzrle-compress.bin: a precopy stream whose second pass uses XBZRLE deltas and zlib
  pages, which QEMU's own analyze-migration.py cannot read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from harness.protocol import (
    OpenReturnPath,
    Ping,
    Pong,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRun,
    RamBlockInfo,
    ReqPagesId,
    SectionType,
    Shut,
    StreamEncoder,
    discard_commands,
    encode_rp,
    xbzrle,
)
from harness.protocol.devices import GLOBALSTATE, TIMER, globalstate_values, timer_values
from harness.protocol.savevm import PausedStream

HERE = Path(__file__).resolve().parent / "streams"
PAGE = 4096
RAM_SIZE = 16 << 20


def pattern() -> bytes:
    data = bytearray()
    for i in range(3):
        data.extend(((i * 7 + j) & 0xFF) for j in range(PAGE))
    return bytes(data + bytes(PAGE - 1) + b"\x01")


def guest_ram() -> np.ndarray:
    ram = np.zeros(RAM_SIZE, dtype=np.uint8)
    ram[0x10000:0x14000] = np.frombuffer(pattern(), np.uint8)
    ram[0x800000:0x801000] = np.frombuffer(pattern()[PAGE:2 * PAGE], np.uint8)
    return ram


def precopy_example() -> bytes:
    ram = np.zeros(RAM_SIZE, dtype=np.uint8)
    ram[0x10000:0x14000] = np.frombuffer(pattern(), np.uint8)
    return PausedStream(ram={"ram": ram}).encode()


def postcopy_example() -> tuple[bytes, bytes]:
    ram = guest_ram()
    enc = StreamEncoder()
    out = bytearray(enc.header() + enc.configuration("none"))
    out += enc.command(OpenReturnPath()) + enc.command(Ping(1)) + enc.command(PostcopyAdvise())
    out += enc.ram_start(2, [RamBlockInfo("ram", RAM_SIZE)])
    half = RAM_SIZE // PAGE // 2
    records = bytearray()
    enc.ram.save_pages(records, "ram", ram, range(half))
    out += enc.ram_section(SectionType.SECTION_PART, 2, records)
    for cmd in discard_commands("ram", [(half * PAGE, RAM_SIZE - half * PAGE)]):
        out += enc.command(cmd)
    out += enc.command(Ping(2))
    blob = (enc.command(PostcopyListen())
            + enc.device(0, "timer", 0, TIMER, timer_values(), describe=False)
            + enc.device(4, "globalstate", 0, GLOBALSTATE, globalstate_values("running"),
                         describe=False)
            + enc.command(Ping(3)) + enc.command(PostcopyRun()))
    out += enc.packaged(blob) + enc.command(Ping(4))
    enc.ram.reset()  # QEMU forgets the last block at postcopy start
    requested = 0x800000 // PAGE
    records = bytearray()
    enc.ram.save_pages(records, "ram", ram, [requested])
    out += enc.ram_section(SectionType.SECTION_PART, 2, records)
    records = bytearray()
    rest = [p for p in range(half, RAM_SIZE // PAGE) if p != requested]
    enc.ram.save_pages(records, "ram", ram, rest)
    out += enc.ram_section(SectionType.SECTION_END, 2, records) + enc.eof()
    rp = b"".join(encode_rp(m) for m in (
        Pong(1), Pong(2), Pong(3), Pong(4), ReqPagesId(0x800000, PAGE, "ram"), Shut(0)))
    return bytes(out), rp


def xbzrle_compress_example() -> bytes:
    ram = guest_ram()
    enc = StreamEncoder()
    out = bytearray(enc.header() + enc.configuration("none"))
    out += enc.ram_start(2, [RamBlockInfo("ram", RAM_SIZE)])
    records = bytearray()
    enc.ram.save_pages(records, "ram", ram, range(RAM_SIZE // PAGE))
    out += enc.ram_section(SectionType.SECTION_PART, 2, records)
    records = bytearray()
    for page in (0x10, 0x11, 0x12):  # the guest rewrote a few bytes of three pages
        addr = page * PAGE
        old = ram[addr:addr + PAGE].tobytes()
        ram[addr + 100:addr + 108] = np.frombuffer(b"rewrite!", np.uint8)
        enc.ram.save_xbzrle_page(records, "ram", addr, xbzrle.encode(old, ram[addr:addr + PAGE]))
    ram[0x20000:0x21000] = np.frombuffer((b"text page " * 410)[:PAGE], np.uint8)
    enc.ram.save_compressed_page(records, "ram", 0x20000, ram[0x20000:0x21000].tobytes())
    out += enc.ram_section(SectionType.SECTION_END, 2, records)
    out += enc.device(0, "timer", 0, TIMER, timer_values())
    out += enc.device(4, "globalstate", 0, GLOBALSTATE, globalstate_values("running"))
    return bytes(out + enc.eof() + enc.vmdesc())


def examples() -> dict[str, bytes]:
    fwd, rp = postcopy_example()
    return {"none-m16-pattern.bin": precopy_example(), "postcopy-none-m16.fwd.bin": fwd,
            "postcopy-none-m16.rp.bin": rp, "xbzrle-compress.bin": xbzrle_compress_example()}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, data in examples().items():
        path = HERE / name
        if check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
        else:
            HERE.mkdir(exist_ok=True)
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    for name in stale:
        print(f"{HERE / name} differs from what the encoder writes", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
