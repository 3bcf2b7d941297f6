"""The `ram` section: block list, page records, XBZRLE and compressed pages, into numpy RAM.

Strategy: pages never become Python objects.  `RamLoader` keeps the blocks (each a numpy
array of the destination's RAM), the block list of MEM_SIZE (`migration/ram.c:
ram_load_precopy` is the model, checks and messages included) and the per-record checks
(block from the stream, XBZRLE, compressed pages); the records themselves are walked once,
by `ram_walk.walk`, with the sink of the loader's mode: place (precopy), place once
(postcopy: the present bitmap), discard (a proxy with no guest RAM: `ram_discard`).  The
bulk of a stream -- CONTINUE page and zero records -- goes through the compiled
`harness._recv` when built, else through its numpy twin in `ram_walk`.
Saving, the mirror, is in `ram_saver`.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from . import xbzrle
from .errors import RemoteProtocolError
from .events import RamBlockInfo, RamMemSize, RamPages
from .ram_discard import DiscardSink
from .ram_records import (
    COMPRESS,
    CONTINUE,
    FULL_PAGE,
    PAGE,
    ZERO,
    compressed_length,
    xbzrle_error,
    xbzrle_length,
)
from .ram_walk import PlaceOnceSink, PlaceSink, Sink, default_native, walk
from .wire import Reader

_DEFAULT: object = object()  # RamLoader(native=...) not given: harness/native.py decides


def new_ram(size: int) -> np.ndarray:
    """Zeroed RAM of `size` bytes (calloc'd: untouched pages cost nothing)."""
    return np.zeros(size, dtype=np.uint8)


@dataclass
class _Block:
    idstr: str
    mem: np.ndarray | None  # None in discard mode: the block is known, its RAM is not kept
    used_length: int

    def __post_init__(self) -> None:
        mem = self.mem
        self.view: memoryview | None = None if mem is None else mem.data.cast("B")
        aligned = mem is not None and self.used_length % PAGE == 0 and mem.flags.c_contiguous
        self.pages = mem[: self.used_length].reshape(-1, PAGE) if aligned else None  # type: ignore[index]


class RamLoader:
    """Loads the RAM payloads of a stream into numpy arrays, one per RAMBlock.

    `blocks` maps idstr -> uint8 array of the destination's RAM; when None, blocks are
    created from the stream's MEM_SIZE list (analysis).  `page_sizes` gives a block's page
    size where it differs from the host page size (hugepages: the stream carries it only
    then, and only with postcopy-ram).  `ignore_shared` is the x-ignore-shared capability.
    `discard`: keep no RAM at all (blocks come from the stream, pages are checked and
    skipped, and each `RamPages` says where its records lie in `spans`).  `native`: the
    compiled `harness._recv` to walk with, or None for the Python twin; by default what
    harness/native.py picks.
    """

    def __init__(self, blocks: dict[str, np.ndarray] | None = None, *,
                 postcopy_ram: bool = False, ignore_shared: bool = False,
                 page_sizes: dict[str, int] | None = None, host_page_size: int = PAGE,
                 allow_compressed: bool = True, discard: bool = False,
                 native: ModuleType | None | object = _DEFAULT) -> None:
        if discard and blocks:
            raise ValueError("a discarding RAM loader keeps no RAM: give it no blocks")
        self.discard = discard
        self.create_blocks = blocks is None
        self._blocks: dict[str, _Block] = {}
        for name, mem in (blocks or {}).items():
            self._blocks[name] = _Block(name, mem, mem.size)
        self.postcopy_ram = postcopy_ram
        self.ignore_shared = ignore_shared
        self.page_sizes = dict(page_sizes or {})
        self.host_page_size = host_page_size
        self.allow_compressed = allow_compressed
        self.postcopy_mode = False  # set once the destination listens (ram_load_postcopy)
        #: per block, one byte per page: 1 = the page is here.  When given, pages loaded
        #: mark it; in postcopy mode a page already present is never written again (QEMU
        #: places each page once) and is counted in `duplicates` instead.
        self.present: dict[str, np.ndarray] | None = None
        self.duplicates = 0
        #: postcopy: called with (block, page indices) right after pages are placed
        self.on_place: Callable[[str, np.ndarray], None] | None = None
        #: decompress-threads (destination/decompress.py): when set, compressed pages are
        #: deferred and inflated together through it (zlib streams -> pages, b"" if bad)
        self.inflate: Callable[[list[bytes]], list[bytes]] | None = None
        self.last_block: _Block | None = None  # mis->last_recv_block, kept across sections
        #: a destination's resizable blocks: (idstr, announced length) -> the block's RAM
        #: at that length, None when it is not resizable (then "Size mismatch"); raises a
        #: RemoteProtocolError when the length is beyond its maximum
        self.resize: Callable[[str, int], np.ndarray | None] | None = None
        self.need = 0  # absolute offset the buffer must reach for the next record
        self.max_block_size = 1 << 40  # blocks created from a stream (analysis)
        self.native: ModuleType | None = (default_native() if native is _DEFAULT
                                          else native)  # type: ignore[assignment]

    @property
    def ram(self) -> dict[str, np.ndarray]:
        return {name: b.mem for name, b in self._blocks.items() if b.mem is not None}

    @property
    def block_lengths(self) -> dict[str, int]:
        """idstr -> used_length of every block known (given, or from the stream)."""
        return {name: b.used_length for name, b in self._blocks.items()}

    def fork(self) -> RamLoader:
        """A loader for the same stream continued on a new connection (postcopy recovery):
        the same blocks (and RAM), modes and last block, its own table from now on."""
        new = copy.copy(self)
        new._blocks = dict(self._blocks)
        new.need = 0
        return new

    # ------------------------------------------------------------------ MEM_SIZE
    def load_mem_size(self, r: Reader, section_id: int, total: int, start: int) -> RamMemSize:
        """The block list after RAM_SAVE_FLAG_MEM_SIZE (read whole, or NeedData)."""
        infos = []
        remaining = total
        while remaining > 0:
            name = r.str8().decode("latin-1")
            length = r.be64()
            page_size = addr = None
            known = self._blocks.get(name)
            local_ps = self.page_sizes.get(name, self.host_page_size)
            if self.postcopy_ram and local_ps != self.host_page_size:
                page_size = r.be64()
                if page_size != local_ps:
                    raise RemoteProtocolError(
                        f"Mismatched RAM page size {name} (local) {local_ps} != {page_size}")
            if self.ignore_shared:
                addr = r.be64()
            if known is None and not self.create_blocks:
                raise RemoteProtocolError(
                    f'Unknown ramblock "{name}", cannot accept migration')
            if known is not None and length != known.used_length and self.resize:
                mem = self.resize(name, length)  # qemu_ram_resize: a resizable block
                if mem is not None:
                    known = self._blocks[name] = _Block(name, mem, length)
            if known is not None and length != known.used_length:
                raise RemoteProtocolError(
                    f"Size mismatch: {name}: 0x{length:x} != 0x{known.used_length:x}: "
                    f"Invalid argument")
            if length > remaining:
                raise RemoteProtocolError(
                    f"RAM block list overruns MEM_SIZE: block '{name}' of 0x{length:x} "
                    f"with 0x{remaining:x} left", qemu=False)
            infos.append(RamBlockInfo(name, length, page_size, addr))
            remaining -= length
        for info in infos:
            if info.idstr not in self._blocks:
                mem = None if self.discard else self._allocate(info)
                self._blocks[info.idstr] = _Block(info.idstr, mem, info.used_length)
        return RamMemSize(section_id, total, tuple(infos), offset=start)

    def _allocate(self, info: RamBlockInfo) -> np.ndarray:
        if info.used_length > self.max_block_size:
            raise RemoteProtocolError(
                f"RAM block '{info.idstr}' of 0x{info.used_length:x} bytes is larger than "
                f"this decoder's limit of 0x{self.max_block_size:x}", qemu=False)
        try:
            return new_ram(info.used_length)
        except MemoryError:
            raise RemoteProtocolError(
                f"RAM block '{info.idstr}' of 0x{info.used_length:x} bytes cannot be "
                f"allocated") from None

    # ------------------------------------------------------------------ records
    def load(self, r: Reader, section_id: int) -> tuple[list[RamMemSize | RamPages], bool]:
        """Parse records until EOS (returns True) or until the buffer runs out (False).

        `r.pos` ends after the last complete record; a NeedData inside a record rewinds
        to its start, so nothing is applied twice.  One walk (`ram_walk.walk`) with the
        sink of the mode: discard (a proxy), place once (postcopy), place (precopy).
        """
        if self.discard:
            sink: Sink = DiscardSink(self, self.native)
        elif self.postcopy_mode:
            sink = PlaceOnceSink(self, self.native)
        else:
            sink = PlaceSink(self, self.native)
        return walk(self, r, section_id, sink)

    def _block_from_stream(self, r: Reader, flags: int, addr: int) -> _Block:
        """migration/ram.c: ram_block_from_stream + host_from_ram_block_offset."""
        if flags & CONTINUE:
            block = self.last_block
            if block is None:
                raise RemoteProtocolError("Ack, bad migration stream!")
        else:
            name = r.str8().decode("latin-1")
            found = self._blocks.get(name)
            if found is None:
                raise RemoteProtocolError(f"Can't find block {name}").with_context(
                    f"Illegal RAM offset {addr:x}")
            block = found
        if addr >= block.used_length:
            raise RemoteProtocolError(f"Illegal RAM offset {addr:x}")
        return block

    def _load_page(self, r: Reader, bmv: memoryview, kind: int, flags: int, addr: int,
                   block: _Block) -> None:
        view = block.view
        assert view is not None  # placing pages needs RAM (not a discarding loader)
        if kind == ZERO:
            fill = r.u8()
            view[addr:addr + PAGE] = bytes((fill,)) * PAGE  # QEMU 7.2 honours the fill byte
        elif kind == FULL_PAGE:
            r.require(PAGE)
            view[addr:addr + PAGE] = bmv[r.pos:r.pos + PAGE]
            r.pos += PAGE
        elif kind == COMPRESS:
            self._load_compressed(r, addr, view)
        else:
            self._load_xbzrle(r, addr, view)

    def _compressed_data(self, r: Reader) -> bytes:
        return r.take(compressed_length(r, self.allow_compressed))

    def _load_compressed(self, r: Reader, addr: int, view: memoryview) -> None:
        data = self._compressed_data(r)
        try:
            page = zlib.decompress(data)
        except zlib.error:
            page = b""
        if len(page) != PAGE:
            raise RemoteProtocolError("decompress data failed")
        view[addr:addr + PAGE] = page

    def _load_xbzrle(self, r: Reader, addr: int, view: memoryview) -> None:
        """migration/ram.c: load_xbzrle."""
        data = r.take(xbzrle_length(r, addr))
        try:
            xbzrle.decode(data, view[addr:addr + PAGE])
        except xbzrle.XbzrleError:
            raise xbzrle_error("decode error", addr) from None
