"""The `block` live section: QEMU 7.2's block migration records (migration/block.c).

Strategy: sans-IO, as the rest of `harness.protocol`.  A section body is a run of records,
each opened by `be64 (sector << 9) | flags` (DEVICE_BLOCK 0x01, EOS 0x02, PROGRESS 0x04,
ZERO_BLOCK 0x08); a DEVICE_BLOCK names its device (u8 length + name) and, unless ZERO_BLOCK,
carries exactly 1 MiB of data, whatever the device's size (B3).  PROGRESS carries a percent
in the sector field; EOS ends the body.  `encode_*` build records; `BlockLoader.load(reader)`
parses whole records from a `wire.Reader` (a partial record is left for more bytes, as
`ram.RamLoader` does), checks each against the devices it knows -- QEMU's words where
block.c:block_load has them ("Error unknown block device d0", "Unknown block migration flags:
0x10") -- and writes each chunk into that device's numpy array (zeros for ZERO_BLOCK), or
only checks and locates it when it has no disks (analysis, a proxy).
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

import numpy as np

from .errors import LocalProtocolError, RemoteProtocolError
from .events import Event
from .wire import NeedData, Reader, pack_be64, str8

__all__ = [
    "BLOCK_IDSTR", "BLOCK_SECTION_ID", "BLOCK_VERSION_ID", "CHUNK", "CHUNK_SECTORS", "EOS",
    "FLAG_DEVICE_BLOCK", "FLAG_EOS", "FLAG_PROGRESS", "FLAG_ZERO_BLOCK", "SECTOR",
    "BlockChunk", "BlockEos", "BlockLoader", "BlockProgress", "chunk_header",
    "encode_chunk", "encode_progress",
]

BLOCK_IDSTR = "block"  # block.c: blk_mig_init -> register_savevm_live("block", 0, 1, ...)
BLOCK_VERSION_ID = 1
BLOCK_SECTION_ID = 1  # registered after "timer" (0), before "ram" (2): B2
SECTOR_BITS = 9  # BDRV_SECTOR_BITS
SECTOR = 1 << SECTOR_BITS
CHUNK = 1 << 20  # BLK_MIG_BLOCK_SIZE
CHUNK_SECTORS = CHUNK >> SECTOR_BITS  # BDRV_SECTORS_PER_DIRTY_CHUNK
FLAG_DEVICE_BLOCK = 0x01
FLAG_EOS = 0x02
FLAG_PROGRESS = 0x04
FLAG_ZERO_BLOCK = 0x08
EOS = pack_be64(FLAG_EOS)
MAX_SECTOR = (1 << (64 - SECTOR_BITS)) - 1


@dataclass(frozen=True)
class BlockChunk(Event):
    """One DEVICE_BLOCK record: 1 MiB at `sector` of `device` (zero: no data sent)."""

    device: str
    sector: int
    zero: bool = False


@dataclass(frozen=True)
class BlockProgress(Event):
    """A PROGRESS record: the source's bulk-read percent (100 at completion)."""

    percent: int


@dataclass(frozen=True)
class BlockEos(Event):
    """The EOS record closing a block section body."""

    section_id: int


def chunk_header(device: str, sector: int, zero: bool = False) -> bytes:
    """The record header of a chunk (block.c: blk_send); 1 MiB of data follows unless zero."""
    if not 0 <= sector <= MAX_SECTOR:
        raise LocalProtocolError(f"block: sector {sector} out of range")
    flags = FLAG_DEVICE_BLOCK | (FLAG_ZERO_BLOCK if zero else 0)
    return pack_be64((sector << SECTOR_BITS) | flags) + str8(device)


def encode_chunk(device: str, sector: int, data: bytes | memoryview | None) -> bytes:
    """A whole chunk record; `data` None is a ZERO_BLOCK, otherwise exactly 1 MiB."""
    if data is None:
        return chunk_header(device, sector, zero=True)
    if len(data) != CHUNK:
        raise LocalProtocolError(f"block: a chunk carries {CHUNK} bytes, not {len(data)}")
    return chunk_header(device, sector) + bytes(data)


def encode_progress(percent: int) -> bytes:
    if not 0 <= percent <= 100:
        raise LocalProtocolError(f"block: progress {percent} is not a percent")
    return pack_be64((percent << SECTOR_BITS) | FLAG_PROGRESS)


class BlockLoader:
    """block.c: block_load, record by record.

    `disks`: device name -> writable uint8 array (the destination's drives); None keeps no
    data (analysis, proxy) and accepts any device name.  `sizes` bounds sectors without
    disks (name -> bytes), when known.  `last_progress` is the last PROGRESS percent."""

    def __init__(self, disks: dict[str, np.ndarray] | None = None,
                 sizes: dict[str, int] | None = None) -> None:
        self.disks = disks
        self.sizes = dict(sizes or {})
        if disks is not None:
            self.sizes.update({name: int(d.size) for name, d in disks.items()})
        self.need = 0
        self.last_progress: int | None = None
        self.chunks = 0
        self.zero_chunks = 0

    def load(self, r: Reader, section_id: int) -> tuple[list[Event], bool]:
        """Whole records from `r`; (events, True once EOS was read)."""
        events: list[Event] = []
        while True:
            start = r.pos
            try:
                event = self._record(r)
            except NeedData as need:
                r.pos = start
                self.need = need.needed
                return events, False
            if event is None:
                return events, True
            events.append(event)

    def _record(self, r: Reader) -> Event | None:
        start = r.offset
        word = r.be64()
        flags = word & (SECTOR - 1)
        sector = word >> SECTOR_BITS
        if flags & FLAG_DEVICE_BLOCK:
            name = r.str8().decode("latin-1")
            zero = bool(flags & FLAG_ZERO_BLOCK)
            self._check_chunk(name, sector, zero, start)
            if not zero:
                r.require(CHUNK)
                self._write(name, sector, r.buf[r.pos:r.pos + CHUNK])
                r.pos += CHUNK
                self.chunks += 1
            else:
                self._write(name, sector, None)
                self.zero_chunks += 1
            return BlockChunk(name, sector, zero, offset=start)
        if flags & FLAG_PROGRESS:
            self.last_progress = sector
            return BlockProgress(sector, offset=start)
        if not flags & FLAG_EOS:
            raise RemoteProtocolError(f"Unknown block migration flags: 0x{flags:x}",
                                      offset=start, errno=_errno.EINVAL)
        return None

    def _check_chunk(self, name: str, sector: int, zero: bool, start: int) -> None:
        if self.disks is not None and name not in self.disks:
            raise RemoteProtocolError(f"Error unknown block device {name}", offset=start,
                                      errno=_errno.EINVAL)
        size = self.sizes.get(name)
        if size is None:
            return
        total = size >> SECTOR_BITS
        # block_load writes min(total - sector, 2048) sectors: past the end it fails, and a
        # data chunk is always written whole, so one running past the end fails too (B5)
        if sector >= total or (not zero and sector + CHUNK_SECTORS > total):
            raise RemoteProtocolError(
                f"block: chunk at sector {sector} of {name} runs past its end "
                f"({total} sectors)", offset=start, errno=_errno.EIO, qemu=False)

    def _write(self, name: str, sector: int, data: bytes | bytearray | memoryview | None) -> None:
        if self.disks is None:
            return
        disk = self.disks[name]
        at = sector << SECTOR_BITS
        end = min(at + CHUNK, disk.size)
        if data is None:
            disk[at:end] = 0
        else:
            disk[at:end] = np.frombuffer(data, dtype=np.uint8, count=end - at)
