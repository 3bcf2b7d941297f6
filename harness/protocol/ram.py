"""The `ram` section: block list, page records, XBZRLE and compressed pages, into numpy RAM.

Strategy: pages never become Python objects.  `RamLoader` parses records straight out of
the decoder's buffer into each block's numpy array (`migration/ram.c: ram_load_precopy`
is the model, checks and messages included) and reports batches as `RamPages` events
holding numpy arrays.  Long runs of same-kind CONTINUE records (the common case: a bulk
pass) are recognised and placed with one vectorised numpy operation per run; everything
else goes through a tight per-record loop.  `RamSaver` is the mirror: it frames a batch
of pages of one block from its numpy array, detecting zero pages with numpy, and keeps
QEMU's `last_sent_block` so CONTINUE is set exactly where QEMU sets it.
"""

from __future__ import annotations

import zlib
from array import array
from dataclasses import dataclass

import numpy as np

from . import xbzrle
from .constants import (
    COMPRESS_BOUND_PAGE,
    ENCODING_FLAG_XBZRLE,
    RAM_PAGE_FLAGS,
    TARGET_PAGE_SIZE,
    RamFlag,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .events import RamBlockInfo, RamMemSize, RamPages
from .wire import NeedData, Reader, Truncated, pack_be16, pack_be32, pack_be64, str8, unpack_be64

PAGE = TARGET_PAGE_SIZE
_FLAG_MASK = PAGE - 1
_ADDR_MASK = ~_FLAG_MASK & 0xFFFF_FFFF_FFFF_FFFF
_PAGE_CONT = int(RamFlag.PAGE | RamFlag.CONTINUE)
_ZERO_CONT = int(RamFlag.ZERO | RamFlag.CONTINUE)
_ZERO_PAGE = bytes(PAGE)
_RUN_TRIGGER = 8  # same-kind records in a row before trying a vectorised run
_RUN_MAX = 1024
_BATCH_MAX = 65536


def new_ram(size: int) -> np.ndarray:
    """Zeroed RAM of `size` bytes (calloc'd: untouched pages cost nothing)."""
    return np.zeros(size, dtype=np.uint8)


@dataclass
class _Block:
    idstr: str
    mem: np.ndarray
    used_length: int

    def __post_init__(self) -> None:
        self.view = memoryview(self.mem).cast("B")
        aligned = self.used_length % PAGE == 0 and self.mem.flags.c_contiguous
        self.pages = self.mem[: self.used_length].reshape(-1, PAGE) if aligned else None


class RamLoader:
    """Loads the RAM payloads of a stream into numpy arrays, one per RAMBlock.

    `blocks` maps idstr -> uint8 array of the destination's RAM; when None, blocks are
    created from the stream's MEM_SIZE list (analysis).  `page_sizes` gives a block's page
    size where it differs from the host page size (hugepages: the stream carries it only
    then, and only with postcopy-ram).  `ignore_shared` is the x-ignore-shared capability.
    """

    def __init__(self, blocks: dict[str, np.ndarray] | None = None, *,
                 postcopy_ram: bool = False, ignore_shared: bool = False,
                 page_sizes: dict[str, int] | None = None, host_page_size: int = PAGE,
                 allow_compressed: bool = True) -> None:
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
        self.last_block: _Block | None = None  # mis->last_recv_block, kept across sections
        self.need = 0  # absolute offset the buffer must reach for the next record

    @property
    def ram(self) -> dict[str, np.ndarray]:
        return {name: b.mem for name, b in self._blocks.items()}

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
            if known is not None and length != known.used_length:
                raise RemoteProtocolError(
                    f"Size mismatch: {name}: 0x{length:x} != 0x{known.used_length:x}: "
                    f"Invalid argument")
            if length > remaining:
                raise RemoteProtocolError(
                    f"RAM block list overruns MEM_SIZE: block '{name}' of 0x{length:x} "
                    f"with 0x{remaining:x} left")
            infos.append(RamBlockInfo(name, length, page_size, addr))
            remaining -= length
        for info in infos:
            if info.idstr not in self._blocks:
                self._blocks[info.idstr] = _Block(info.idstr, new_ram(info.used_length),
                                                  info.used_length)
        return RamMemSize(section_id, total, tuple(infos), offset=start)

    # ------------------------------------------------------------------ records
    def load(self, r: Reader, section_id: int) -> tuple[list[RamMemSize | RamPages], bool]:
        """Parse records until EOS (returns True) or until the buffer runs out (False).

        `r.pos` ends after the last complete record; a NeedData inside a record rewinds
        to its start, so nothing is applied twice.
        """
        events: list[RamMemSize | RamPages] = []
        batch = _Batch(section_id)
        buf = r.buf
        end = r.end
        eos = False
        with memoryview(buf) as bmv:
            pos = r.pos
            same = 0
            last_flags = -1
            block = self.last_block
            try:
                while True:
                    start = pos
                    if pos + 8 > end:
                        raise _short(r, pos, 8)
                    (word,) = unpack_be64(buf, pos)
                    flags = word & _FLAG_MASK
                    addr = word & _ADDR_MASK
                    if flags == last_flags:
                        same += 1
                        if same >= _RUN_TRIGGER and block is not None and block.pages is not None:
                            n = self._run(buf, pos, end, flags, block, batch)
                            if n:
                                pos += n * (PAGE + 8 if flags == _PAGE_CONT else 9)
                                same = 0
                                continue
                            same = -_RUN_TRIGGER * 4  # not a run here: back off
                    else:
                        same = 0
                        last_flags = flags
                    # --- the fast paths: CONTINUE records of the current block
                    if flags == _PAGE_CONT and block is not None and addr < block.used_length:
                        if pos + 8 + PAGE > end:
                            raise _short(r, pos, 8 + PAGE)
                        block.view[addr:addr + PAGE] = bmv[pos + 8:pos + 8 + PAGE]
                        batch.add(block.idstr, addr, RamFlag.PAGE, events)
                        pos += 8 + PAGE
                        continue
                    if flags == _ZERO_CONT and block is not None and addr < block.used_length:
                        if pos + 9 > end:
                            raise _short(r, pos, 9)
                        fill = buf[pos + 8]
                        block.view[addr:addr + PAGE] = _ZERO_PAGE if fill == 0 else bytes((fill,)) * PAGE
                        batch.add(block.idstr, addr, RamFlag.ZERO, events)
                        pos += 9
                        continue
                    # --- everything else, with QEMU's checks
                    r.pos = pos + 8
                    if flags & RAM_PAGE_FLAGS:
                        block = self._block_from_stream(r, flags, addr)
                        self.last_block = block
                    kind = flags & ~RamFlag.CONTINUE
                    if kind == RamFlag.MEM_SIZE:
                        batch.flush(events)
                        events.append(self.load_mem_size(r, section_id, addr, r.base + start))
                    elif kind == RamFlag.EOS:
                        pos = r.pos
                        eos = True
                        break
                    elif kind in (RamFlag.ZERO, RamFlag.PAGE, RamFlag.XBZRLE,
                                  RamFlag.COMPRESS_PAGE):
                        assert block is not None
                        self._load_page(r, bmv, kind, flags, addr, block)
                        batch.add(block.idstr, addr, kind, events)
                    else:
                        raise self._bad_flags(flags, start, r.base)
                    pos = r.pos
            except NeedData as need:
                self.need = need.needed
                pos = start
            except RemoteProtocolError as err:
                r.pos = start
                raise err.at(r.base + start)
            finally:
                self.last_block = block
        batch.flush(events)
        r.pos = pos
        return events, eos

    def _run(self, buf: bytes | bytearray, pos: int, end: int, flags: int, block: _Block,
             batch: "_Batch") -> int:
        """Place a run of same-kind CONTINUE records with numpy; return how many."""
        page = flags == _PAGE_CONT
        stride = PAGE + 8 if page else 9
        k = min(_RUN_MAX, (end - pos) // stride)
        if k < 2:
            return 0
        hdr = np.ndarray((k,), dtype=">u8", buffer=buf, offset=pos, strides=(stride,))
        words = hdr.astype(np.uint64)
        ok = (words & np.uint64(_FLAG_MASK)) == flags
        offsets = words & np.uint64(_ADDR_MASK)
        ok &= offsets < block.used_length
        if not page:
            fills = np.ndarray((k,), dtype=np.uint8, buffer=buf, offset=pos + 8, strides=(9,))
            ok &= fills == 0
        n = k if ok.all() else int(np.argmin(ok))
        if n < 2:
            return 0
        offsets = offsets[:n]
        idx = (offsets >> np.uint64(12)).astype(np.intp)
        contiguous = int(idx[-1]) - int(idx[0]) == n - 1 and bool((np.diff(idx) == 1).all())
        assert block.pages is not None
        if page:
            src = np.ndarray((n, PAGE), dtype=np.uint8, buffer=buf, offset=pos + 8,
                             strides=(stride, 1))
            if contiguous:
                block.pages[idx[0]:idx[0] + n] = src
            else:
                block.pages[idx] = src
        elif contiguous:
            block.pages[idx[0]:idx[0] + n] = 0
        else:
            block.pages[idx] = 0
        batch.add_many(block.idstr, offsets, RamFlag.PAGE if page else RamFlag.ZERO)
        return n

    def _block_from_stream(self, r: Reader, flags: int, addr: int) -> _Block:
        """migration/ram.c: ram_block_from_stream + host_from_ram_block_offset."""
        if flags & RamFlag.CONTINUE:
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

    def _load_compressed(self, r: Reader, addr: int, view: memoryview) -> None:
        if not self.allow_compressed:
            raise RemoteProtocolError("Received an unexpected compressed page")
        length = r.be32()
        if length > COMPRESS_BOUND_PAGE:
            raise RemoteProtocolError(f"Invalid compressed data length: {length}")
        data = r.take(length)
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
        if flags & ~int(RamFlag.CONTINUE) == RamFlag.HOOK:
            # QEMU passes this to the RDMA hook, which fails without a message on TCP
            return RemoteProtocolError("RAM_SAVE_FLAG_HOOK (0x80) outside an RDMA migration")
        return RemoteProtocolError(f"Unknown combination of migration flags: 0x{flags:x}")


def _short(r: Reader, pos: int, n: int) -> Exception:
    if r.closed:
        return Truncated(r.base + r.end)
    return NeedData(r.base + pos + n)


class _Batch:
    """Offsets and kinds of pages placed since the last flush, for one block at a time."""

    __slots__ = ("section_id", "block", "offsets", "kinds", "chunks")

    def __init__(self, section_id: int) -> None:
        self.section_id = section_id
        self.block: str | None = None
        self.offsets = array("Q")
        self.kinds = array("H")
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, block: str, addr: int, kind: int, events: list) -> None:
        if block != self.block:
            self.flush(events)
            self.block = block
        self.offsets.append(addr)
        self.kinds.append(kind)
        if len(self.offsets) >= _BATCH_MAX:
            self._close_chunk()

    def add_many(self, block: str, offsets: np.ndarray, kind: int) -> None:
        if block != self.block:
            raise AssertionError("a vectorised run never changes block")
        self._close_chunk()
        self.chunks.append((offsets.astype(np.uint64),
                            np.full(offsets.size, int(kind), dtype=np.uint16)))

    def _close_chunk(self) -> None:
        if self.offsets:
            self.chunks.append((np.frombuffer(self.offsets, dtype=np.uint64),
                                np.frombuffer(self.kinds, dtype=np.uint16)))
            self.offsets = array("Q")
            self.kinds = array("H")

    def flush(self, events: list) -> None:
        self._close_chunk()
        if self.chunks and self.block is not None:
            offsets = np.concatenate([c[0] for c in self.chunks])
            kinds = np.concatenate([c[1] for c in self.chunks])
            events.append(RamPages(self.section_id, self.block, offsets, kinds))
        self.chunks = []


# ---------------------------------------------------------------------------- saving


def encode_mem_size(blocks: list[RamBlockInfo] | tuple[RamBlockInfo, ...]) -> bytes:
    """The setup payload's block list (without the EOS that follows it)."""
    total = sum(b.used_length for b in blocks)
    out = bytearray(pack_be64(total | RamFlag.MEM_SIZE))
    for b in blocks:
        out += str8(b.idstr) + pack_be64(b.used_length)
        if b.page_size is not None:
            out += pack_be64(b.page_size)
        if b.addr is not None:
            out += pack_be64(b.addr)
    return bytes(out)


EOS = pack_be64(RamFlag.EOS)


def zero_pages(mem: np.ndarray, pages: np.ndarray | slice) -> np.ndarray:
    """Which of the given pages are all zero (numpy, about 10 GB/s)."""
    words = mem.view(np.uint64).reshape(-1, PAGE // 8)
    return ~words[pages].any(axis=1)


class RamSaver:
    """Frames page records as QEMU's `ram_save_*` do, keeping `last_sent_block`."""

    def __init__(self) -> None:
        self.last_block: str | None = None

    def reset(self) -> None:
        """Forget the last block (QEMU does at setup, and at postcopy start)."""
        self.last_block = None

    def _header(self, out: bytearray, block: str, addr: int, flag: int) -> None:
        if block == self.last_block:
            out += pack_be64(addr | flag | RamFlag.CONTINUE)
        else:
            out += pack_be64(addr | flag) + str8(block)
            self.last_block = block

    def save_pages(self, out: bytearray, block: str, mem: np.ndarray,
                   pages: np.ndarray | range) -> tuple[int, int]:
        """Append ZERO or PAGE records for `pages` (page indices, in the order given).

        Returns (zero pages, normal pages).  Runs of consecutive pages of one kind are
        framed with numpy in one go; the first record naming the block goes alone.
        """
        idx = np.asarray(pages, dtype=np.intp) if not isinstance(pages, range) else \
            np.arange(pages.start, pages.stop, pages.step, dtype=np.intp)
        if idx.size == 0:
            return 0, 0
        if idx.size > 1 and int(idx[-1]) - int(idx[0]) == idx.size - 1 and \
                bool((np.diff(idx) == 1).all()):
            zero = zero_pages(mem, slice(int(idx[0]), int(idx[-1]) + 1))
        else:
            zero = zero_pages(mem, idx)
        mpages = mem.reshape(-1, PAGE)
        view = memoryview(mem).cast("B")
        i = 0
        n = idx.size
        if block != self.last_block:
            self._save_one(out, block, view, int(idx[0]), bool(zero[0]))
            i = 1
        # split the rest into runs of equal kind and consecutive index
        if i < n:
            kind_change = np.flatnonzero(zero[i + 1:] != zero[i:-1]) + i + 1
            gap = np.flatnonzero(np.diff(idx[i:]) != 1) + i + 1
            cuts = np.union1d(kind_change, gap).tolist()
            bounds = [i, *cuts, n]
            for a, b in zip(bounds[:-1], bounds[1:]):
                if b - a < 4:
                    for j in range(a, b):
                        self._save_one(out, block, view, int(idx[j]), bool(zero[j]))
                else:
                    _frame_run(out, mpages, int(idx[a]), b - a, bool(zero[a]))
        zeros = int(zero.sum())
        return zeros, n - zeros

    def _save_one(self, out: bytearray, block: str, view: memoryview, page: int,
                  is_zero: bool) -> None:
        addr = page * PAGE
        if is_zero:
            self._header(out, block, addr, RamFlag.ZERO)
            out.append(0)
        else:
            self._header(out, block, addr, RamFlag.PAGE)
            out += view[addr:addr + PAGE]

    def save_zero_page(self, out: bytearray, block: str, addr: int) -> None:
        self._header(out, block, addr, RamFlag.ZERO)
        out.append(0)

    def save_page(self, out: bytearray, block: str, addr: int, data: bytes | memoryview) -> None:
        if len(data) != PAGE:
            raise LocalProtocolError(f"a page is {PAGE} bytes, got {len(data)}")
        self._header(out, block, addr, RamFlag.PAGE)
        out += data

    def save_xbzrle_page(self, out: bytearray, block: str, addr: int, delta: bytes) -> None:
        """An XBZRLE record: u8 encoding 0x01, be16 length, the delta (ram.c: save_xbzrle_page)."""
        if len(delta) > PAGE:
            raise LocalProtocolError(f"XBZRLE delta of {len(delta)} bytes exceeds a page")
        self._header(out, block, addr, RamFlag.XBZRLE)
        out.append(ENCODING_FLAG_XBZRLE)
        out += pack_be16(len(delta)) + delta

    def save_compressed_page(self, out: bytearray, block: str, addr: int,
                             page: bytes | memoryview, level: int = 1) -> None:
        """A zlib-compressed page record: be32 length, zlib data (ram.c: do_compress_ram_page)."""
        data = zlib.compress(bytes(page), level)
        if len(data) > COMPRESS_BOUND_PAGE:
            raise LocalProtocolError("compressed page exceeds compressBound(4096)")
        self._header(out, block, addr, RamFlag.COMPRESS_PAGE)
        out += pack_be32(len(data)) + data


def _frame_run(out: bytearray, mpages: np.ndarray, first: int, count: int, zero: bool) -> None:
    """Append `count` CONTINUE records of consecutive pages of one kind with numpy."""
    stride = 9 if zero else PAGE + 8
    start = len(out)
    out.extend(bytes(count * stride))
    offsets = np.arange(first, first + count, dtype=np.uint64) * np.uint64(PAGE)
    flag = _ZERO_CONT if zero else _PAGE_CONT
    hdr = np.ndarray((count,), dtype=">u8", buffer=out, offset=start, strides=(stride,))
    hdr[:] = offsets | np.uint64(flag)
    if not zero:
        body = np.ndarray((count, PAGE), dtype=np.uint8, buffer=out, offset=start + 8,
                          strides=(stride, 1))
        body[:] = mpages[first:first + count]
