"""Saving the `ram` section: block list and page records, framed from numpy RAM.

Strategy: `RamSaver` mirrors `RamLoader` (`migration/ram.c: ram_save_*`): it frames a
batch of pages of one block from its numpy array -- all headers with one numpy
operation, each run of consecutive normal pages one strided copy (a bulk pass: the whole
batch), zero pages found with numpy (or told by the caller) -- into a reusable
`FrameBuffer`, and keeps QEMU's `last_sent_block` so CONTINUE is set exactly where QEMU
sets it.  A handful of pages (a postcopy request) is framed record by record.

The compiled twin (`harness._send`, harness/csrc/send.c, picked by harness/native.py;
`RamSaver(native=False)` forces the Python path) frames the same records with no Python
object per page: it finds the zero pages (`classify`) and either copies the records into
the buffer (`frame`) or -- in a `FrameBuffer` whose owner sends with `send_to` and set
`gather` -- keeps the batch as it is and sends it with iovecs straight from guest RAM
(`send`: headers from a scratch area, pages from RAM, as QEMU's `qemu_put_buffer_async`
does), so no page is copied in user space.
"""

from __future__ import annotations

import zlib
from types import ModuleType
from typing import Any

import numpy as np

from .constants import (
    COMPRESS_BOUND_PAGE,
    ENCODING_FLAG_XBZRLE,
    RAM_PAGE_CONT,
    RAM_ZERO_CONT,
    TARGET_PAGE_SIZE,
    RamFlag,
)
from .errors import LocalProtocolError
from .events import RamBlockInfo
from .wire import pack_be16, pack_be32, pack_be64, str8

PAGE = TARGET_PAGE_SIZE
_ZERO_PAGE = bytes(PAGE)
SMALL_BATCH = 4  # up to this many pages are framed one by one (save_pages)
_PAGE_CONT = RAM_PAGE_CONT
_ZERO_CONT = RAM_ZERO_CONT
_CONTINUE = int(RamFlag.CONTINUE)
_DEFAULT: object = object()  # RamSaver(native=...) not given: harness/native.py decides


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
    """Which of the given pages are all zero.

    A page whose first word is not zero is not a zero page: only pages passing that cheap
    test are scanned whole (numpy), so pages of real data cost almost nothing.  When they
    all pass (a run of zero pages) a slice is scanned in place, without a copy."""
    all_words = mem[:mem.size // PAGE * PAGE].view(np.uint64).reshape(-1, PAGE // 8)
    if isinstance(pages, slice):
        words = all_words[pages]
        zero = words[:, 0] == 0
        if zero.all():
            return np.bitwise_or.reduce(words, axis=1) == 0  # type: ignore[no-any-return]
        maybe = np.flatnonzero(zero)
        if maybe.size:
            zero[maybe] = np.bitwise_or.reduce(words[maybe], axis=1) == 0
        return zero
    zero = all_words[pages, 0] == 0  # gathers one word per page, not the pages
    maybe = np.flatnonzero(zero)
    if maybe.size:
        zero[maybe] = np.bitwise_or.reduce(all_words[pages[maybe]], axis=1) == 0
    return zero


class FrameBuffer:
    """A reusable output buffer for page records: the bytes are `buf[:size]`.

    It grows when needed and never shrinks, so a sender that frames a batch, sends
    `view()` and `clear()`s it touches the same memory every time (no allocation and no
    page fault per batch).  With `gather` set (by an owner that sends with `send_to`),
    a batch framed by the compiled path is not copied in: it is kept as `Records` at its
    place among the flat bytes and `send_to` sends it with iovecs straight from RAM;
    `len()` counts it, and `view()` copies it in first for whoever wants flat bytes.
    """

    __slots__ = ("_gathered", "_gathered_bytes", "buf", "gather", "size")

    def __init__(self, capacity: int = 2 << 20, *, gather: bool = False) -> None:
        self.buf = bytearray(capacity)
        self.size = 0
        self.gather = gather
        self._gathered: list[tuple[int, Records]] = []  # (flat bytes before it, records)
        self._gathered_bytes = 0

    def __len__(self) -> int:
        return self.size + self._gathered_bytes

    def reserve(self, n: int) -> int:
        """Room for n more bytes; returns where they start (and counts them as written)."""
        start = self.size
        if start + n > len(self.buf):
            self.buf.extend(bytes(max(start + n - len(self.buf), len(self.buf))))
        self.size = start + n
        return start

    def put(self, data: bytes | bytearray | memoryview) -> None:
        start = self.reserve(len(data))
        self.buf[start:start + len(data)] = data

    def add_records(self, records: Records) -> None:
        """Keep `records` here, after the flat bytes so far (gather mode)."""
        self._gathered.append((self.size, records))
        self._gathered_bytes += records.size

    def view(self) -> memoryview:
        """The framed bytes (release the view before framing more)."""
        if self._gathered:
            self._flatten()
        return memoryview(self.buf)[:self.size]

    def clear(self) -> None:
        self.size = 0
        self._gathered.clear()
        self._gathered_bytes = 0

    def send_to(self, channel: Any) -> None:
        """Send everything framed on `channel` (a harness Channel): flat bytes with
        `sendall`, gathered records with `channel.send_gathered` (iovecs from RAM) when the
        channel has it, else copied in first."""
        if not self._gathered:
            if self.size:
                with memoryview(self.buf)[:self.size] as data:
                    channel.sendall(data)
            return
        gathered = getattr(channel, "send_gathered", None)
        if gathered is None:
            with self.view() as data:
                channel.sendall(data)
            return
        done = 0
        with memoryview(self.buf) as flat:
            for at, records in self._gathered:
                if at > done:
                    channel.sendall(flat[done:at])
                done = at
                gathered(records.size, records.write)
            if self.size > done:
                channel.sendall(flat[done:self.size])

    def _flatten(self) -> None:
        """Copy the gathered records in among the flat bytes (for `view()`)."""
        flat = bytearray(max(len(self), len(self.buf)))
        done = pos = 0
        for at, records in self._gathered:
            flat[pos:pos + at - done] = self.buf[done:at]
            pos = records.copy_into(flat, pos + at - done)
            done = at
        flat[pos:pos + self.size - done] = self.buf[done:self.size]
        self.buf, self.size = flat, len(self)
        self._gathered.clear()
        self._gathered_bytes = 0


class Records:
    """Page records of one batch as the compiled path frames them, not yet copied: the
    RAM, the page indexes (int64), their final zero flags (uint8) and the block's name
    when the first record names it."""

    __slots__ = ("c", "mem", "name", "pages", "size", "zero")

    def __init__(self, c: ModuleType, mem: np.ndarray, pages: np.ndarray, zero: np.ndarray,
                 name: bytes | None, zeros: int) -> None:
        self.c, self.mem, self.pages, self.zero, self.name = c, mem, pages, zero, name
        normal = pages.size - zeros
        self.size = zeros * 9 + normal * (PAGE + 8) + (0 if name is None else 1 + len(name))

    def write(self, fd: int, flags: int, done: int) -> int:
        """One sendmsg (flags >= 0) or writev (flags < 0) from byte `done` on."""
        return int(self.c.send(fd, flags, self.mem, self.pages, self.zero, self.name, done))

    def copy_into(self, buf: bytearray, offset: int) -> int:
        """Copy the records into `buf` at `offset`; returns where they end."""
        return int(self.c.frame(buf, offset, self.mem, self.pages, self.zero, self.name))


Out = bytearray | FrameBuffer


def _put(out: Out, data: bytes | bytearray | memoryview) -> None:
    if isinstance(out, FrameBuffer):
        out.put(data)
    else:
        out += data


def _reserve(out: Out, n: int) -> tuple[bytearray, int]:
    """(buffer, offset) of n new bytes at the end of `out`."""
    if isinstance(out, FrameBuffer):
        return out.buf, out.reserve(n)
    start = len(out)
    out.extend(bytes(n))
    return out, start


class RamSaver:
    """Frames page records as QEMU's `ram_save_*` do, keeping `last_sent_block`.

    Records are appended to a bytearray or to a reusable `FrameBuffer`."""

    def __init__(self, native: ModuleType | None | object = _DEFAULT) -> None:
        self.last_block: str | None = None
        #: the compiled `harness._send`, or None for the Python twin (the default: what
        #: harness/native.py picks; tests pass None to force the twin)
        self.native: ModuleType | None = (_default_send() if native is _DEFAULT
                                          else native)  # type: ignore[assignment]

    def reset(self) -> None:
        """Forget the last block (QEMU does at setup, and at postcopy start)."""
        self.last_block = None

    def _header(self, out: Out, block: str, addr: int, flag: int) -> None:
        flag = int(flag)  # IntFlag's operators are slow: a requested page goes this way
        if block == self.last_block:
            _put(out, pack_be64(addr | flag | _CONTINUE))
        else:
            _put(out, pack_be64(addr | flag) + str8(block))
            self.last_block = block

    def save_pages(self, out: Out, block: str, mem: np.ndarray,
                   pages: np.ndarray | range, zero: np.ndarray | None = None
                   ) -> tuple[int, int]:
        """Append ZERO or PAGE records for `pages` (page indices, in the order given).

        Returns (zero pages, normal pages).  `zero` says which pages are zero pages when
        the caller knows (else they are found here).  All headers of a batch are written
        with one numpy operation and each run of consecutive normal pages is one strided
        copy, whatever the mix of zero and normal pages; the first record naming the
        block goes alone.
        """
        if zero is None and len(pages) == 1:  # a requested page: no numpy at all
            return self._save_single(out, block, mem, int(pages[0]))
        if self.native is not None:
            return self._save_native(out, block, mem, pages, zero)
        idx = np.asarray(pages, dtype=np.intp) if not isinstance(pages, range) else \
            np.arange(pages.start, pages.stop, pages.step, dtype=np.intp)
        n = idx.size
        if n == 0:
            return 0, 0
        contiguous = int(idx[-1]) - int(idx[0]) == n - 1 and \
            (n < 3 or bool((idx[1:] - idx[:-1] == 1).all()))
        if zero is None and contiguous and n > SMALL_BATCH and block == self.last_block:
            # a bulk pass: copy the run, then look for zero pages in the (cache-hot) copy
            mpages = mem[:mem.size // PAGE * PAGE].reshape(-1, PAGE)
            zero = _frame_normal_run(out, mpages, int(idx[0]), n)
            if zero is None:
                return 0, n
        if zero is None:
            zero = zero_pages(mem, slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx)
        zeros = int(np.count_nonzero(zero))
        view = mem.data.cast("B")
        if n <= SMALL_BATCH:  # a requested page: plain records beat numpy's set-up costs
            for page, is_zero in zip(idx.tolist(), zero.tolist()):
                self._save_one(out, block, view, page, is_zero)
            return zeros, n - zeros
        i = 0
        if block != self.last_block:
            self._save_one(out, block, view, int(idx[0]), bool(zero[0]))
            i = 1
        if contiguous and zeros in (0, n):  # a run of one kind (a bulk pass): no gather
            mpages = mem[:mem.size // PAGE * PAGE].reshape(-1, PAGE)
            _frame_run(out, mpages, int(idx[i]), n - i, zeros == n)
        elif i < n:
            _frame_batch(out, view, idx[i:], zero[i:])
        return zeros, n - zeros

    def _save_native(self, out: Out, block: str, mem: np.ndarray, pages: np.ndarray | range,
                     zero: np.ndarray | None) -> tuple[int, int]:
        """save_pages by the compiled path: zero pages found there (unless told), the
        records copied into `out`, or kept as `Records` when `out` gathers."""
        c = self.native
        assert c is not None
        if isinstance(pages, range):
            idx = np.arange(pages.start, pages.stop, pages.step, dtype=np.int64)
        else:
            idx = np.ascontiguousarray(pages, dtype=np.int64)
        if idx.size == 0:
            return 0, 0
        if zero is None:
            flags = np.zeros(idx.size, dtype=np.uint8)
            zeros = int(c.classify(mem, idx, flags))
        else:
            flags = np.array(zero, dtype=np.uint8)
            zeros = int(np.count_nonzero(flags))
        name = None if block == self.last_block else str8(block)[1:]
        records = Records(c, mem, idx, flags, name, zeros)
        self.last_block = block
        if isinstance(out, FrameBuffer) and out.gather:
            out.add_records(records)
        else:
            buf, start = _reserve(out, records.size)
            records.copy_into(buf, start)
        return zeros, idx.size - zeros

    def _save_single(self, out: Out, block: str, mem: np.ndarray, page: int
                     ) -> tuple[int, int]:
        """One page, framed with plain bytes: a copy of it both tells a zero page (one
        compare) and is what goes out -- far fewer steps than numpy's for a batch of one,
        which matters on the postcopy request path."""
        addr = page * PAGE
        data = mem[addr:addr + PAGE].tobytes()
        if data == _ZERO_PAGE:
            self.save_zero_page(out, block, addr)
            return 1, 0
        self.save_page(out, block, addr, data)
        return 0, 1

    def _save_one(self, out: Out, block: str, view: memoryview, page: int,
                  is_zero: bool) -> None:
        addr = page * PAGE
        if is_zero:
            self._header(out, block, addr, RamFlag.ZERO)
            _put(out, b"\0")
        else:
            self._header(out, block, addr, RamFlag.PAGE)
            _put(out, view[addr:addr + PAGE])

    def save_zero_page(self, out: Out, block: str, addr: int) -> None:
        self._header(out, block, addr, RamFlag.ZERO)
        _put(out, b"\0")

    def save_page(self, out: Out, block: str, addr: int, data: bytes | memoryview) -> None:
        if len(data) != PAGE:
            raise LocalProtocolError(f"a page is {PAGE} bytes, got {len(data)}")
        self._header(out, block, addr, RamFlag.PAGE)
        _put(out, data)

    def save_xbzrle_page(self, out: Out, block: str, addr: int, delta: bytes) -> None:
        """An XBZRLE record: u8 encoding 0x01, be16 length, the delta (ram.c: save_xbzrle_page)."""
        if len(delta) > PAGE:
            raise LocalProtocolError(f"XBZRLE delta of {len(delta)} bytes exceeds a page")
        self._header(out, block, addr, RamFlag.XBZRLE)
        _put(out, bytes((ENCODING_FLAG_XBZRLE,)) + pack_be16(len(delta)) + delta)

    def save_compressed_page(self, out: Out, block: str, addr: int,
                             page: bytes | memoryview, level: int = 1) -> None:
        """A zlib-compressed page record: be32 length, zlib data (ram.c: do_compress_ram_page)."""
        self.save_compressed_data(out, block, addr, zlib.compress(bytes(page), level))

    def save_compressed_data(self, out: Out, block: str, addr: int, data: bytes) -> None:
        """The same record for a page deflated elsewhere (the compress threads)."""
        if len(data) > COMPRESS_BOUND_PAGE:
            raise LocalProtocolError("compressed page exceeds compressBound(4096)")
        self._header(out, block, addr, RamFlag.COMPRESS_PAGE)
        _put(out, pack_be32(len(data)) + data)


_HDR_BYTES = np.arange(8, dtype=np.intp)


def _frame_batch(out: Out, view: memoryview, idx: np.ndarray, zero: np.ndarray) -> None:
    """Append CONTINUE records for pages `idx` (zero or normal as `zero` says)."""
    n = idx.size
    sizes = np.where(zero, 9, PAGE + 8)
    ends = np.cumsum(sizes)
    buf, start = _reserve(out, int(ends[-1]))
    at = start + ends - sizes  # where each record starts
    words = (idx.astype(np.uint64) * np.uint64(PAGE)) | \
        np.where(zero, np.uint64(_ZERO_CONT), np.uint64(_PAGE_CONT))
    u8 = np.frombuffer(buf, dtype=np.uint8)
    u8[at[:, None] + _HDR_BYTES] = words.astype(">u8").view(np.uint8).reshape(n, 8)
    if zero.any():
        u8[at[zero] + 8] = 0
    del u8
    _copy_bodies(buf, view, idx, zero, at)


def _copy_bodies(buf: bytearray, view: memoryview, idx: np.ndarray, zero: np.ndarray,
                 at: np.ndarray) -> None:
    """Copy normal pages behind their headers: a run of consecutive normal pages with one
    strided numpy copy, a lone page with one slice copy."""
    normal = ~zero
    if not normal.any():
        return
    # runs of records that are normal and whose pages follow each other in memory
    follows = np.zeros(idx.size, dtype=bool)
    follows[1:] = normal[1:] & normal[:-1] & (idx[1:] - idx[:-1] == 1)
    starts = np.flatnonzero(normal & ~follows)
    ends = np.append(starts[1:], idx.size)
    mem = np.frombuffer(view, dtype=np.uint8)
    for a, b in zip(starts.tolist(), ends.tolist()):
        count = int(np.count_nonzero(normal[a:b])) if b - a > 1 else 1
        page, pos = int(idx[a]), int(at[a])
        if count < 4:
            for k in range(a, a + count):
                addr = int(idx[k]) * PAGE
                p = int(at[k]) + 8
                buf[p:p + PAGE] = view[addr:addr + PAGE]
            continue
        body = np.ndarray((count, PAGE), dtype=np.uint8, buffer=buf, offset=pos + 8,
                          strides=(PAGE + 8, 1))
        body[:] = mem[page * PAGE:(page + count) * PAGE].reshape(count, PAGE)


def _frame_normal_run(out: Out, mpages: np.ndarray, first: int, count: int
                      ) -> np.ndarray | None:
    """Frame `count` consecutive pages as normal pages, then check the copies: None when
    none is a zero page, else the records are taken back and the zero flags returned."""
    start = out.size if isinstance(out, FrameBuffer) else len(out)
    _frame_run(out, mpages, first, count, False)
    buf = out.buf if isinstance(out, FrameBuffer) else out
    bodies = np.ndarray((count, PAGE // 8), dtype=np.uint64, buffer=buf, offset=start + 8,
                        strides=(PAGE + 8, 8))
    maybe = np.flatnonzero(bodies[:, 0] == 0)
    if not maybe.size:
        return None
    zero = np.zeros(count, dtype=bool)
    zero[maybe] = np.bitwise_or.reduce(bodies[maybe], axis=1) == 0
    del bodies
    if not zero.any():
        return None
    _truncate(out, start)
    return zero


def _truncate(out: Out, size: int) -> None:
    if isinstance(out, FrameBuffer):
        out.size = size
    else:
        del out[size:]


def _frame_run(out: Out, mpages: np.ndarray, first: int, count: int, zero: bool) -> None:
    """Append `count` CONTINUE records of consecutive pages of one kind with numpy: one
    strided write of the headers, one strided copy of the pages."""
    if count <= 0:
        return
    stride = 9 if zero else PAGE + 8
    buf, start = _reserve(out, count * stride)
    flag = _ZERO_CONT if zero else _PAGE_CONT
    hdr = np.ndarray((count,), dtype=">u8", buffer=buf, offset=start, strides=(stride,))
    hdr[:] = np.arange(first * PAGE + flag, (first + count) * PAGE + flag, PAGE,
                       dtype=np.uint64)
    if zero:
        np.ndarray((count,), dtype=np.uint8, buffer=buf, offset=start + 8,
                   strides=(stride,))[:] = 0
    else:
        body = np.ndarray((count, PAGE), dtype=np.uint8, buffer=buf, offset=start + 8,
                          strides=(stride, 1))
        body[:] = mpages[first:first + count]


def _default_send() -> ModuleType | None:
    """The compiled `_send`, or None (the Python twin): harness/native.py decides (env,
    build, staleness).  Imported late, as ram_walk does: the codec stays free of I/O."""
    from .. import native

    return native.module("_send")
