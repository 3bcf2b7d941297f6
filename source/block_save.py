"""Block migration on the source: QEMU 7.2's migration/block.c save side over the drives.

Strategy: one `BlockSave` per migration with the `block` capability (or `migrate` with
`blk`/`inc`).  Its section (`block`, instance 0, version 1, section id 1) goes before
RAM's in every phase (B2): setup sends just EOS (block_save_setup); each iteration sends a
PART that, while the bulk phase is active, carries 1 MiB chunks until the stream is rate
limited (block_save_iterate), each chunk preceded by a PROGRESS record whenever the percent
of chunks read changed (blk_mig_save_bulked_block); RAM sends nothing meanwhile
(ram.c: blk_mig_bulk_active).  Completion sends an END with PROGRESS 100 and EOS
(block_save_complete).  With `zero-blocks` an all-zero chunk goes as DEVICE_BLOCK|ZERO_BLOCK
without data (block.c: blk_send).
The dirty phase (block.c: blk_mig_save_dirty_block): when the guest writes its disks
(harness/guest/disk_writer.py, a drive's `write-rate`), each write marks its 1 MiB chunk;
dirty tracking starts at setup, a chunk read for sending (bulk or dirty) is unmarked
under the writer's lock, and once the bulk is over each iteration sends marked chunks;
completion (the guest stopped, so no write is in flight) sends every chunk still marked.
Differences from QEMU, on purpose: chunks go in disk order (QEMU's asynchronous reads
complete out of order, B4); `inc`
sends every chunk, as QEMU 7.2 does for a raw image without a backing file (B4), since the
harness's drives have none; the pending figure counts the whole rest of the bulk phase
(QEMU counts one chunk), so completion never starts while chunks are left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.migration.config import not_implemented
from harness.protocol import SectionType, StreamEncoder
from harness.protocol.block import (
    BLOCK_IDSTR,
    BLOCK_SECTION_ID,
    BLOCK_VERSION_ID,
    CHUNK,
    CHUNK_SECTORS,
    EOS,
    chunk_header,
    encode_progress,
)

if TYPE_CHECKING:
    from harness.guest.disk_writer import DiskWriter
    from harness.migration.config import MigrationConfig

MAX_WAIT = 0.05  # s, the longest one iteration sends chunks (as ram.c's MAX_WAIT)


class BlockSave:
    """The bulk phase over `disks` (name -> uint8 array), in registration order."""

    def __init__(self, disks: dict[str, np.ndarray], zero_blocks: bool,
                 writer: DiskWriter | None = None) -> None:
        # init_blk_migration enumerates every drive with a non-zero size
        self.devices = [(name, disk) for name, disk in disks.items() if disk.size]
        self._disks = dict(self.devices)
        self._lock = writer.lock if writer is not None else threading.Lock()
        self.dirty = writer.dirty if writer is not None else {}  # name -> chunk marks
        self.zero_blocks = zero_blocks
        self.total = sum(int(d.size) for _, d in self.devices)
        self._device = 0
        self._chunk = 0
        self.done_bytes = 0  # completed sectors x 512: query-migrate's disk transferred
        self.prev_progress = -1
        self.chunks = 0
        self.zero_chunks = 0
        self.dirty_chunks = 0  # chunks sent again in the dirty phase or at completion

    @property
    def bulk_active(self) -> bool:
        return self._device < len(self.devices)

    def pending(self) -> int:
        """The rest of the bulk and every marked chunk (block_save_pending)."""
        marked = sum(int(np.count_nonzero(d)) for d in self.dirty.values())
        return self.total - self.done_bytes + marked * CHUNK

    def query(self) -> dict[str, int]:
        """query-migrate's `disk` (B6): total, transferred, remaining; the rest 0."""
        return {"transferred": self.done_bytes, "remaining": self.total - self.done_bytes,
                "total": self.total, "duplicate": 0, "skipped": 0, "normal": 0,
                "normal-bytes": 0, "dirty-pages-rate": 0, "mbps": 0, "dirty-sync-count": 0,
                "postcopy-requests": 0, "page-size": 0, "precopy-bytes": 0,
                "downtime-bytes": 0, "postcopy-bytes": 0, "multifd-bytes": 0,
                "pages-per-second": 0, "dirty-sync-missed-zero-copy": 0}

    def info(self, active: bool) -> dict[str, dict[str, int]]:
        """query-migrate's `disk` (while active, B6) and the harness's own `x-block`."""
        return {"disk": self.query(), "x-block": self.stats()} if active \
            else {"x-block": self.stats()}

    def stats(self) -> dict[str, int]:
        return {"total": self.total, "chunks": self.chunks, "zero-chunks": self.zero_chunks,
                "dirty-chunks": self.dirty_chunks}

    # ------------------------------------------------------------------ sections
    def setup_section(self, enc: StreamEncoder) -> bytes:
        """block_save_setup: dirty tracking starts; START carrying just EOS."""
        with self._lock:
            for marks in self.dirty.values():
                marks[:] = False
        return (enc.section_header(SectionType.SECTION_START, BLOCK_SECTION_ID, BLOCK_IDSTR,
                                   0, BLOCK_VERSION_ID) + EOS + enc.footer(BLOCK_SECTION_ID))

    def iterate(self, enc: StreamEncoder, write: Callable[[bytes | memoryview], None],
                limited: Callable[[], bool]) -> None:
        """block_save_iterate: a PART with bulk chunks until `limited()` or MAX_WAIT."""
        write(enc.section_header(SectionType.SECTION_PART, BLOCK_SECTION_ID))
        started = time.monotonic()
        while not limited():
            if self.bulk_active:
                self._send_bulk_chunk(write)
            elif not self._send_dirty_chunk(write):
                break  # nothing marked
            if time.monotonic() - started > MAX_WAIT:
                break
        write(EOS + enc.footer(BLOCK_SECTION_ID))

    def part_before_ram(self, stream: Any, ram_section_id: int) -> tuple[int, bool]:
        """One iteration's PART (stream: source/stream.py's OutgoingStream), then, while
        the bulk is on, RAM's PART with nothing in it (ram.c: blk_mig_bulk_active); the
        bytes written and whether RAM must send nothing this time."""
        start = stream.total
        self.iterate(stream.encoder, stream.write, stream.rate_limited)
        ram_silent = self.bulk_active
        if ram_silent:
            stream.write(stream.encoder.ram_section(SectionType.SECTION_PART, ram_section_id,
                                                    b""))
        return stream.total - start, ram_silent

    def complete(self, enc: StreamEncoder, write: Callable[[bytes | memoryview], None]
                 ) -> None:
        """block_save_complete: END with what is left of the bulk (QEMU asserts there is
        none: with a downtime threshold above the disk's rest, the harness could get here
        first), every chunk still marked (the guest is stopped: none gets marked now), then
        PROGRESS 100 and EOS."""
        write(enc.section_header(SectionType.SECTION_END, BLOCK_SECTION_ID))
        while self.bulk_active:
            self._send_bulk_chunk(write)
        while self._send_dirty_chunk(write):
            pass
        write(encode_progress(100) + EOS + enc.footer(BLOCK_SECTION_ID))

    # ------------------------------------------------------------------ bulk
    def _send_bulk_chunk(self, write: Callable[[bytes | memoryview], None]) -> None:
        progress = self.done_bytes * 100 // self.total if self.total else 100
        if progress != self.prev_progress:
            self.prev_progress = progress
            write(encode_progress(progress))
        name, disk = self.devices[self._device]
        self.done_bytes += self._send_chunk(name, self._chunk, write)
        self._chunk += 1
        if self._chunk * CHUNK >= disk.size:
            self._device += 1
            self._chunk = 0

    def _send_dirty_chunk(self, write: Callable[[bytes | memoryview], None]) -> bool:
        """The first marked chunk, if any (blk_mig_save_dirty_block)."""
        for name, marks in self.dirty.items():
            marked = np.flatnonzero(marks)
            if marked.size:
                self._send_chunk(name, int(marked[0]), write)
                self.dirty_chunks += 1
                return True
        return False

    def _send_chunk(self, name: str, index: int,
                    write: Callable[[bytes | memoryview], None]) -> int:
        """Read chunk `index` and unmark it under the writer's lock, then send it (blk_send);
        its size."""
        at = index * CHUNK
        with self._lock:
            data = np.array(self._disks[name][at:at + CHUNK])
            if name in self.dirty:
                self.dirty[name][index] = False
        if self.zero_blocks and not data.any():
            write(chunk_header(name, index * CHUNK_SECTORS, zero=True))
            self.zero_chunks += 1
        else:
            write(chunk_header(name, index * CHUNK_SECTORS) + data.tobytes())
            self.chunks += 1
        return int(data.size)


INCOMPATIBLE = "Command options are incompatible with current migration capabilities"


def apply_migrate_options(config: MigrationConfig, blk: bool, inc: bool) -> bool:
    """migration.c: migrate_prepare's `blk`/`inc`: set `block` (and for `inc` the
    `block-incremental` parameter) for this migration only; True when they were set (the
    cleanup then turns both off again, as migrate_fd_cleanup does).  Refused when the
    capability or the parameter is set already (B1)."""
    if (blk or inc or config.cap("block")) and config.cap("postcopy-ram"):
        raise ValueError(not_implemented("block migration with postcopy-ram"))
    if not (blk or inc):
        return False
    if config.cap("block") or config.param("block-incremental"):
        raise ValueError(INCOMPATIBLE)
    config.capabilities = {**config.capabilities, "block": True}
    if inc:
        config.parameters = {**config.parameters, "block-incremental": True}
    return True


def remove_migrate_options(config: MigrationConfig) -> None:
    """migrate_fd_cleanup with must_remove_block_options."""
    config.capabilities = {**config.capabilities, "block": False}
    config.parameters = {**config.parameters, "block-incremental": False}


def block_save_of(config: MigrationConfig, guest: object) -> BlockSave | None:
    """The migration's BlockSave when `block` is on (the guest's `drives`, possibly none)."""
    if not config.cap("block"):
        return None
    return BlockSave(dict(getattr(guest, "drives", None) or {}), config.cap("zero-blocks"),
                     getattr(guest, "disk_writer", None))
