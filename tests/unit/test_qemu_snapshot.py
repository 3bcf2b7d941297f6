"""harness.qemu.snapshot's readers of QEMU's text: `info ramblock` and `info mtree -f`.

Strategy: the inputs are QEMU 7.2.22's own output (pc -m 256, q35 -m 3072), copied from
a real run; the parsers must give the blocks and mapped ranges that output states, and
refuse what no QEMU prints (too many blocks, a used length above the total, a name that
is no RAMBlock idstr, a line they cannot read).
"""

from __future__ import annotations

import pytest

from harness.qemu.snapshot import MAX_BLOCKS, RamBlock, SnapshotError, flat_ranges, parse_ramblocks

RAMBLOCK = """\
              Block Name    PSize              Offset               Used              Total
                  pc.ram    4 KiB  0x0000000000000000 0x0000000010000000 0x0000000010000000
    /rom@etc/acpi/tables    4 KiB  0x0000000010080000 0x0000000000020000 0x0000000000200000
                 pc.bios    4 KiB  0x0000000010000000 0x0000000000040000 0x0000000000040000
                  pc.rom    4 KiB  0x0000000010040000 0x0000000000020000 0x0000000000020000
   /rom@etc/table-loader    4 KiB  0x0000000010280000 0x0000000000001000 0x0000000000010000
      /rom@etc/acpi/rsdp    4 KiB  0x00000000102c0000 0x0000000000001000 0x0000000000001000
"""
HEADER = RAMBLOCK.splitlines()[0]

MTREE = """\
FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000c2fff (prio 0, ram): pc.ram
  00000000000c3000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c3000
  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @0000000080000000

FlatView #2
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
"""


def test_info_ramblock_gives_every_block_with_its_sizes() -> None:
    blocks = parse_ramblocks(RAMBLOCK)
    assert blocks[0] == RamBlock("pc.ram", 4096, 0, 0x10000000, 0x10000000)
    assert blocks[1] == RamBlock("/rom@etc/acpi/tables", 4096, 0x10080000, 0x20000, 0x200000)
    assert [b.name for b in blocks] == ["pc.ram", "/rom@etc/acpi/tables", "pc.bios", "pc.rom",
                                        "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"]


def test_info_ramblock_that_no_qemu_prints_is_refused() -> None:
    row = "                  b{}    4 KiB  0x0 0x0000000000001000 0x0000000000001000"
    with pytest.raises(SnapshotError, match="blocks"):
        parse_ramblocks("\n".join([HEADER, *(row.format(i) for i in range(MAX_BLOCKS + 1))]))
    with pytest.raises(SnapshotError, match="not a sane block"):
        parse_ramblocks(f"{HEADER}\n  big    4 KiB  0x0 0x0000000000002000 0x0000000000001000")
    with pytest.raises(SnapshotError, match="not a RAMBlock idstr"):
        parse_ramblocks(f"{HEADER}\n  {'x' * 300}    4 KiB  0x0 0x1000 0x1000")
    with pytest.raises(SnapshotError, match="cannot read"):
        parse_ramblocks(f"{HEADER}\n  pc.ram  4 KiB  somewhere")
    with pytest.raises(SnapshotError, match="twice"):
        parse_ramblocks(f"{HEADER}\n  a    4 KiB  0x0 0x1000 0x1000\n  a    4 KiB  0x0 0x1000 0x1000")


def test_the_flat_view_of_memory_gives_ram_and_rom_ranges_with_their_offsets() -> None:
    assert flat_ranges(MTREE) == [
        (0, 0xc3000, "pc.ram", 0),
        (0xc3000, 0x25000, "pc.ram", 0xc3000),
        (0x100000, 0x7ff00000, "pc.ram", 0x100000),
        (0xfffc0000, 0x40000, "pc.bios", 0),
        (0x100000000, 0x40000000, "pc.ram", 0x80000000),  # q35 -m 3072: above 4G (F31)
    ]
