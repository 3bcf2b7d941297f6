"""The `ram` section: block list, page records, XBZRLE and compressed pages, into numpy RAM.

Strategy: pages never become Python objects.  `RamLoader` parses records straight out of
the decoder's buffer into each block's numpy array (`migration/ram.c: ram_load_precopy`
is the model, checks and messages included) and reports batches as `RamPages` events
holding numpy arrays.  Runs of same-kind CONTINUE records of consecutive pages (the
common case: a bulk pass) are recognised from the second record on -- when the next and
the last buffered headers say so, the whole buffer is checked with one comparison -- and
placed with one numpy copy; a run of zero pages writes only the pages that are not zero
already (QEMU's `buffer_is_zero` test: reading is cheaper than writing); everything else
goes through a tight per-record loop.  A loader in discard mode (a proxy, which has
no guest RAM) validates and locates records without storing them (`ram_discard`).
Saving, the mirror, is in `ram_saver`.
"""

from __future__ import annotations

import copy
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import xbzrle
from .constants import (
    COMPRESS_BOUND_PAGE,
    ENCODING_FLAG_XBZRLE,
    RAM_PAGE_CONT,
    RAM_PAGE_FLAGS,
    RAM_ZERO_CONT,
    TARGET_PAGE_SIZE,
    RamFlag,
)
from .errors import RemoteProtocolError
from .events import RamBlockInfo, RamMemSize, RamPages
from .ram_discard import load_discarding
from .wire import NeedData, Reader, Truncated, unpack_be64

PAGE = TARGET_PAGE_SIZE
_FLAG_MASK = PAGE - 1
_CONTINUE = int(RamFlag.CONTINUE)  # plain ints: IntFlag operators are slow on the hot path
_KIND_MASK = _FLAG_MASK & ~_CONTINUE
_HOOK = int(RamFlag.HOOK)
_ADDR_MASK = ~_FLAG_MASK & 0xFFFF_FFFF_FFFF_FFFF
_PAGE_CONT = RAM_PAGE_CONT
_ZERO_CONT = RAM_ZERO_CONT
_ZERO_PAGE = bytes(PAGE)
_RUN_TRIGGER = 1  # same-kind records in a row before trying a vectorised run
_RUN_START = 64  # records a run is first checked for when it is not all of the buffer
_RUN_MAX = 1 << 14
_DEFERRED_ZERO = int(RamFlag.FULL)  # internal: a zero page not written yet (FULL is never sent)
_DEFERRED_COMPRESSED = int(RamFlag.COMPRESS_PAGE | RamFlag.FULL)  # internal: not inflated yet


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
    skipped, and each `RamPages` says where its records lie in `spans`).
    """

    def __init__(self, blocks: dict[str, np.ndarray] | None = None, *,
                 postcopy_ram: bool = False, ignore_shared: bool = False,
                 page_sizes: dict[str, int] | None = None, host_page_size: int = PAGE,
                 allow_compressed: bool = True, discard: bool = False) -> None:
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
        to its start, so nothing is applied twice.  The loop keeps the current block's
        view and length in locals: this is the per-page hot path.
        """
        if self.discard:
            return load_discarding(self, r, section_id)
        if self.postcopy_mode:
            return self._load_placing(r, section_id)
        events: list[RamMemSize | RamPages] = []
        buf = r.buf
        end = r.end
        base = r.base
        pos = r.pos
        batch = _Batch(section_id, base, pos, self.inflate)
        block = self.last_block
        if block is not None:
            batch.block = block
        view, used, pages = _locals(block)
        oapp, kapp = batch.appenders()
        unpack = unpack_be64
        eos = False
        run = 0
        prev = -1
        with memoryview(buf) as bmv:
            try:
                while True:
                    if pos + 8 > end:
                        raise _short(r, pos, 8)
                    (word,) = unpack(buf, pos)
                    flags = word & _FLAG_MASK
                    if flags == prev:
                        run += 1
                        if run >= _RUN_TRIGGER and pages is not None:
                            assert block is not None
                            n = self._run(buf, pos, end, flags, block, batch)
                            if n:
                                pos += n * (PAGE + 8 if flags == _PAGE_CONT else 9)
                                oapp, kapp = batch.appenders()
                                run = 0
                                continue
                            run = -4 * _RUN_TRIGGER  # not a run here: back off
                    else:
                        prev = flags
                        run = 0
                    # the fast paths: CONTINUE records inside the current block
                    if flags == _PAGE_CONT:
                        addr = word ^ flags
                        if addr < used:
                            npos = pos + 8 + PAGE
                            if npos > end:
                                raise _short(r, pos, 8 + PAGE)
                            view[addr:addr + PAGE] = bmv[pos + 8:npos]  # type: ignore[index]
                            oapp(addr)
                            kapp(8)
                            pos = npos
                            continue
                    elif flags == _ZERO_CONT:
                        addr = word ^ flags
                        if addr < used:
                            if pos + 9 > end:
                                raise _short(r, pos, 9)
                            if not buf[pos + 8]:
                                oapp(addr)  # zeroed with numpy when the batch is flushed
                                kapp(_DEFERRED_ZERO)
                                pos += 9
                                continue
                    # everything else, with QEMU's checks
                    addr = word ^ flags
                    r.pos = pos + 8
                    if flags & RAM_PAGE_FLAGS:
                        found = self._block_from_stream(r, flags, addr)
                        if found is not block:
                            block = self.last_block = found
                            batch.switch(found, events, pos)
                            oapp, kapp = batch.appenders()
                            view, used, pages = _locals(block)
                    kind = flags & _KIND_MASK
                    if kind == RamFlag.MEM_SIZE:
                        batch.flush(events, pos)
                        oapp, kapp = batch.appenders()
                        events.append(self.load_mem_size(r, section_id, addr, base + pos))
                    elif kind == RamFlag.EOS:
                        pos = r.pos
                        eos = True
                        break
                    elif kind in (RamFlag.ZERO, RamFlag.PAGE, RamFlag.XBZRLE,
                                  RamFlag.COMPRESS_PAGE):
                        assert block is not None
                        if kind == RamFlag.XBZRLE:  # a delta needs the page as it is now
                            batch.apply_zeros()
                            oapp, kapp = batch.appenders()
                        if kind == RamFlag.COMPRESS_PAGE and self.inflate is not None:
                            batch.compressed.append((self._compressed_data(r), base + pos))
                            kind = _DEFERRED_COMPRESSED
                        else:
                            self._load_page(r, bmv, kind, flags, addr, block)
                        oapp(addr)
                        kapp(kind)
                    else:
                        raise self._bad_flags(flags, pos, base)
                    pos = r.pos
            except NeedData as need:
                self.need = need.needed  # pos is still the start of the partial record
            except RemoteProtocolError as err:
                batch.apply_zeros()  # what came before the bad record stays applied
                r.pos = pos
                raise err.at(base + pos)
            finally:
                self.last_block = block
        batch.flush(events, pos)
        r.pos = pos
        if self.present is not None:
            self._mark_present(events)
        return events, eos

    def _mark_present(self, events: list[RamMemSize | RamPages]) -> None:
        assert self.present is not None
        for ev in events:
            if isinstance(ev, RamPages):
                self.present[ev.block][(ev.offsets >> np.uint64(12)).astype(np.intp)] = 1

    def _load_placing(self, r: Reader, section_id: int
                      ) -> tuple[list[RamMemSize | RamPages], bool]:
        """migration/ram.c: ram_load_postcopy: each page placed once, then marked present
        (after its content: whoever sees the mark sees the page).  Runs of consecutive
        pages are placed with numpy, so the stream ahead of a requested page drains fast."""
        events: list[RamMemSize | RamPages] = []
        pos = r.pos
        batch = _Batch(section_id, r.base, pos)
        block = self.last_block
        if block is not None:
            batch.block = block
        oapp, kapp = batch.appenders()
        eos = False
        prev, run = -1, 0
        assert self.present is not None
        with memoryview(r.buf) as bmv:
            try:
                while True:
                    if pos + 8 > r.end:
                        raise _short(r, pos, 8)
                    (word,) = unpack_be64(r.buf, pos)
                    flags = word & _FLAG_MASK
                    if flags == prev:
                        run += 1
                        if run >= 2 and block is not None and block.pages is not None and \
                                flags in (_PAGE_CONT, _ZERO_CONT):
                            n = self._place_run(r.buf, pos, r.end, flags, block, batch)
                            if n:
                                pos += n * (PAGE + 8 if flags == _PAGE_CONT else 9)
                                oapp, kapp = batch.appenders()
                                run = 0
                                continue
                    else:
                        prev, run = flags, 0
                    addr = word ^ flags
                    r.pos = pos + 8
                    kind = flags & _KIND_MASK
                    if kind == RamFlag.EOS:
                        pos = r.pos
                        eos = True
                        break
                    if kind not in (RamFlag.ZERO, RamFlag.PAGE, RamFlag.COMPRESS_PAGE):
                        raise RemoteProtocolError(
                            f"Unknown combination of migration flags: 0x{flags:x} "
                            f"(postcopy mode)")
                    found = self._block_from_stream(r, flags, addr)
                    if found is not block:
                        block = self.last_block = found
                        batch.switch(found, events, pos)
                        oapp, kapp = batch.appenders()
                    present = self.present[block.idstr]
                    page = addr // PAGE
                    if present[page]:
                        _skip_payload(r, kind)
                        self.duplicates += 1
                    else:
                        self._load_page(r, bmv, kind, flags, addr, block)
                        present[page] = 1
                        if self.on_place is not None:
                            self.on_place(block.idstr, np.array([page]))
                        oapp(addr)
                        kapp(kind)
                    pos = r.pos
            except NeedData as need:
                self.need = need.needed
            except RemoteProtocolError as err:
                r.pos = pos
                raise err.at(r.base + pos)
            finally:
                self.last_block = block
        batch.flush(events, pos)
        r.pos = pos
        return events, eos

    def _place_run(self, buf: bytes | bytearray, pos: int, end: int, flags: int,
                   block: _Block, batch: _Batch) -> int:
        """Place a run of same-kind CONTINUE records of consecutive pages, skipping those
        already present; returns the records consumed."""
        page = flags == _PAGE_CONT
        stride = PAGE + 8 if page else 9
        k = min(_RUN_MAX, (end - pos) // stride)
        if k < 2:
            return 0
        words = np.ndarray((k,), dtype=">u8", buffer=buf, offset=pos,
                           strides=(stride,)).astype(np.uint64)
        first = int(words[0])
        ok = words == np.arange(first, first + k * PAGE, PAGE, dtype=np.uint64)
        if not page:
            ok &= np.ndarray((k,), dtype=np.uint8, buffer=buf, offset=pos + 8,
                             strides=(9,)) == 0
        n = k if ok.all() else int(np.argmin(ok))
        index = (first - flags) // PAGE
        if n < 2 or (index + n) * PAGE > block.used_length:
            return 0
        assert self.present is not None and block.pages is not None
        present = self.present[block.idstr]
        missing = np.flatnonzero(present[index:index + n] == 0)
        targets = missing + index
        if page:
            src = np.ndarray((n, PAGE), dtype=np.uint8, buffer=buf, offset=pos + 8,
                             strides=(stride, 1))
            block.pages[targets] = src[missing]
        else:
            block.pages[targets] = 0
        present[targets] = 1  # after the content
        self.duplicates += n - missing.size
        if missing.size:
            if self.on_place is not None:
                self.on_place(block.idstr, targets)
            batch.add_many(targets.astype(np.uint64) * np.uint64(PAGE),
                           RamFlag.PAGE if page else RamFlag.ZERO)
        return n

    def _run(self, buf: bytes | bytearray, pos: int, end: int, flags: int, block: _Block,
             batch: _Batch) -> int:
        """Place a run of same-kind CONTINUE records of consecutive pages with numpy.

        One comparison checks flags and offsets at once (the words must step by a page);
        the run is extended by doubling while it holds.  Returns the records placed.
        """
        page = flags == _PAGE_CONT
        stride = PAGE + 8 if page else 9
        assert block.pages is not None
        k = min(_RUN_MAX, (end - pos) // stride)
        if k < 2:
            return 0
        (first,) = unpack_be64(buf, pos)
        if unpack_be64(buf, pos + stride)[0] != first + PAGE:
            return 0  # not a run (random order): cheap to tell, no numpy
        if unpack_be64(buf, pos + (k - 1) * stride)[0] != first + (k - 1) * PAGE:
            k = min(k, _RUN_START)  # not all of it: find where it ends by doubling
        done = 0
        while True:
            at = pos + done * stride
            k = min(k, (end - at) // stride)
            if k < 2:
                break
            words = np.ndarray((k,), dtype=">u8", buffer=buf, offset=at,
                               strides=(stride,)).astype(np.uint64)
            first = int(words[0])
            ok = words == np.arange(first, first + k * PAGE, PAGE, dtype=np.uint64)
            if not page:
                ok &= np.ndarray((k,), dtype=np.uint8, buffer=buf, offset=at + 8,
                                 strides=(9,)) == 0
            n = k if ok.all() else int(np.argmin(ok))
            last = first - flags + (n - 1) * PAGE
            if n < 2 or last >= block.used_length:
                break
            index = (first - flags) // PAGE
            if page:
                block.pages[index:index + n] = np.ndarray(
                    (n, PAGE), dtype=np.uint8, buffer=buf, offset=at + 8, strides=(stride, 1))
            else:
                _zero_fill(block.pages[index:index + n])
            batch.add_many(np.arange(first - flags, last + 1, PAGE, dtype=np.uint64),
                           RamFlag.PAGE if page else RamFlag.ZERO)
            done += n
            if n < k:
                break
            k = min(k * 2, _RUN_MAX)
        return done

    def _block_from_stream(self, r: Reader, flags: int, addr: int) -> _Block:
        """migration/ram.c: ram_block_from_stream + host_from_ram_block_offset."""
        if flags & _CONTINUE:
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
        if self.postcopy_mode and kind not in (RamFlag.ZERO, RamFlag.PAGE, RamFlag.COMPRESS_PAGE):
            raise RemoteProtocolError(
                f"Unknown combination of migration flags: 0x{flags:x} (postcopy mode)")
        view = block.view
        assert view is not None  # placing pages needs RAM (not a discarding loader)
        if kind == RamFlag.ZERO:
            fill = r.u8()
            view[addr:addr + PAGE] = bytes((fill,)) * PAGE  # QEMU 7.2 honours the fill byte
        elif kind == RamFlag.PAGE:
            r.require(PAGE)
            view[addr:addr + PAGE] = bmv[r.pos:r.pos + PAGE]
            r.pos += PAGE
        elif kind == RamFlag.COMPRESS_PAGE:
            self._load_compressed(r, addr, view)
        else:
            self._load_xbzrle(r, addr, view)

    def _compressed_data(self, r: Reader) -> bytes:
        if not self.allow_compressed:
            raise RemoteProtocolError("Received an unexpected compressed page")
        length = r.be32()
        if length > COMPRESS_BOUND_PAGE:
            raise RemoteProtocolError(f"Invalid compressed data length: {length}")
        return r.take(length)

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
        encoding = r.u8()
        length = r.be16()
        if encoding != ENCODING_FLAG_XBZRLE:
            raise RemoteProtocolError("Failed to load XBZRLE page - wrong compression!"
                                      ).with_context(f"Failed to decompress XBZRLE page at {addr:x}")
        if length > PAGE:
            raise RemoteProtocolError("Failed to load XBZRLE page - len overflow!"
                                      ).with_context(f"Failed to decompress XBZRLE page at {addr:x}")
        data = r.take(length)
        try:
            xbzrle.decode(data, view[addr:addr + PAGE])
        except xbzrle.XbzrleError:
            raise RemoteProtocolError("Failed to load XBZRLE page - decode error!"
                                      ).with_context(f"Failed to decompress XBZRLE page at {addr:x}"
                                                     ) from None

    @staticmethod
    def _bad_flags(flags: int, start: int, base: int) -> RemoteProtocolError:
        if flags & _HOOK:
            # QEMU passes this to the RDMA hook, which fails without a message on TCP
            return RemoteProtocolError(
                f"RAM_SAVE_FLAG_HOOK in flags 0x{flags:x} outside an RDMA migration", qemu=False)
        return RemoteProtocolError(f"Unknown combination of migration flags: 0x{flags:x}")


def _zero_fill(pages: np.ndarray) -> None:
    """Zero the pages (rows) that are not zero already: QEMU's ram_handle_compressed
    writes a zero page only when `buffer_is_zero` says it is not, and reading is cheaper
    than writing (a fresh destination's pages are all zero)."""
    dirty = np.flatnonzero(np.bitwise_or.reduce(pages.view(np.uint64), axis=1))
    if dirty.size:
        pages[dirty] = 0


def _skip_payload(r: Reader, kind: int) -> None:
    """Consume a page record's payload without placing it."""
    if kind == RamFlag.ZERO:
        r.u8()
    elif kind == RamFlag.PAGE:
        r.skip(PAGE)
    else:
        r.skip(r.be32())


def _short(r: Reader, pos: int, n: int) -> Exception:
    if r.closed:
        return Truncated(r.base + r.end)
    return NeedData(r.base + pos + n)


class _Batch:
    """Offsets and kinds of the pages placed since the last flush, for one block.

    Zero pages of the fast path are only recorded (kind _DEFERRED_ZERO) and zeroed with
    one numpy operation when the batch is applied, unless a later record of the batch
    wrote the same page; a delta (XBZRLE) applies them first.  With an `inflate` hook,
    compressed pages are deferred the same way (kind _DEFERRED_COMPRESSED, their zlib
    data and record offset in `compressed`) and inflated together when applied.
    """

    __slots__ = ("base", "block", "chunks", "compressed", "first", "inflate", "kinds",
                 "offsets", "section_id")

    def __init__(self, section_id: int, base: int, pos: int,
                 inflate: Callable[[list[bytes]], list[bytes]] | None = None) -> None:
        self.inflate = inflate
        self.compressed: list[tuple[bytes, int]] = []  # deferred: (zlib data, offset)
        self.section_id = section_id
        self.base = base  # absolute offset of buffer position 0
        self.first = base + pos  # absolute offset of the batch's first record
        self.block: _Block | None = None
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.offsets = array("Q")
        self.kinds = array("H")

    def appenders(self):  # type: ignore[no-untyped-def]
        return self.offsets.append, self.kinds.append

    def switch(self, block: _Block, events: list, pos: int) -> None:
        if block is not self.block:
            self.flush(events, pos)
            self.block = block

    def add_many(self, offsets: np.ndarray, kind: int) -> None:
        self._close_chunk()
        self.chunks.append((offsets.astype(np.uint64),
                            np.full(offsets.size, int(kind), dtype=np.uint16)))

    def _close_chunk(self) -> None:
        if self.offsets:
            self.chunks.append((np.frombuffer(self.offsets, dtype=np.uint64),
                                np.frombuffer(self.kinds, dtype=np.uint16)))
            self.offsets = array("Q")
            self.kinds = array("H")

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        self._close_chunk()
        if len(self.chunks) == 1:
            return self.chunks[0]
        merged = (np.concatenate([c[0] for c in self.chunks]),
                  np.concatenate([c[1] for c in self.chunks]))
        self.chunks = [merged]
        return merged

    def apply_zeros(self) -> None:
        """Write the deferred pages now: zero pages, and compressed pages inflated
        together; each only if no later record wrote the same page."""
        if not self.chunks and not self.offsets:
            return
        offsets, kinds = self._merged()
        deferred = kinds == _DEFERRED_ZERO
        if self.compressed:
            deferred |= kinds == _DEFERRED_COMPRESSED
        if not deferred.any():
            return
        assert self.block is not None
        live = deferred
        if offsets.size > 1 and not bool((offsets[1:] > offsets[:-1]).all()):
            # a page seen twice: only its last record counts
            _, first_of_reversed = np.unique(offsets[::-1], return_index=True)
            last = offsets.size - 1 - first_of_reversed
            live = np.zeros_like(deferred)
            live[last] = deferred[last]
        if self.compressed:
            self._inflate(offsets, kinds, live)
        zero_at = offsets[live & (kinds == _DEFERRED_ZERO)]
        pages = self.block.pages
        if pages is not None:
            pages[(zero_at >> np.uint64(12)).astype(np.intp)] = 0
        else:
            view = self.block.view
            assert view is not None
            for addr in zero_at.tolist():
                view[addr:addr + PAGE] = _ZERO_PAGE
        kinds[kinds == _DEFERRED_ZERO] = RamFlag.ZERO

    def _inflate(self, offsets: np.ndarray, kinds: np.ndarray, live: np.ndarray) -> None:
        """The deferred compressed pages that count, inflated in one call of the hook
        (decompress-threads) and written; "decompress data failed" at a bad record."""
        assert self.inflate is not None and self.block is not None
        view = self.block.view
        assert view is not None
        comp = kinds == _DEFERRED_COMPRESSED
        rank = np.cumsum(comp) - 1  # index into self.compressed
        use = np.flatnonzero(live & comp)
        items = [self.compressed[i] for i in rank[use].tolist()]
        self.compressed = []
        kinds[comp] = RamFlag.COMPRESS_PAGE
        pages = self.inflate([data for data, _ in items])
        for (_, at), page, addr in zip(items, pages, offsets[use].tolist()):
            if len(page) != PAGE:
                raise RemoteProtocolError("decompress data failed", offset=at)
            view[addr:addr + PAGE] = page

    def flush(self, events: list, pos: int) -> None:
        """Apply and emit what was placed; the next batch starts at buffer position `pos`."""
        self.apply_zeros()
        if self.chunks and self.block is not None:
            offsets, kinds = self._merged()
            events.append(RamPages(self.section_id, self.block.idstr, offsets, kinds,
                                   offset=self.first))
        self.chunks = []
        self.first = self.base + pos


def _locals(block: _Block | None) -> tuple[memoryview | None, int, np.ndarray | None]:
    """The hot loop's view of a block (length -1 when none: every record goes slow)."""
    if block is None:
        return None, -1, None
    return block.view, block.used_length, block.pages
