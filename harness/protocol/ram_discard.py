"""The `ram` section without guest RAM: page records checked, located, and skipped.

Strategy: whoever only needs to know where the records of a stream lie (the network
proxy between two peers, which must stay as fast as the link) runs `RamLoader` in
discard mode.  `load_discarding` walks the records like `RamLoader.load` does, with
QEMU's checks (`migration/ram.c: ram_load_precopy`: a known block, CONTINUE only after a
block was named, the offset inside the block, known flags, XBZRLE and compressed
lengths), but never reads a page: every page record's place goes into the batch's
`spans` (record start, payload start, record end; absolute offsets).  A run of
same-flag CONTINUE records (a bulk pass: PAGE or ZERO records back to back) is checked
and located with one numpy operation over its strided headers, so a GiB of pages costs a
few hundred numpy calls and no Python object per page.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

import numpy as np

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
from .events import RamMemSize, RamPages
from .wire import NeedData, Reader, Truncated, unpack_be64

if TYPE_CHECKING:
    from .ram import RamLoader

__all__ = ["load_discarding"]

PAGE = TARGET_PAGE_SIZE
_FLAG_MASK = PAGE - 1
_ADDR_MASK = np.uint64(~_FLAG_MASK & 0xFFFF_FFFF_FFFF_FFFF)
_KIND_MASK = _FLAG_MASK & ~int(RamFlag.CONTINUE)
_PAGE_FLAGS = int(RAM_PAGE_FLAGS)  # plain ints: IntFlag operators are slow on the hot path
_MEM_SIZE = int(RamFlag.MEM_SIZE)
_EOS = int(RamFlag.EOS)
_PAGE_CONT = RAM_PAGE_CONT
_ZERO_CONT = RAM_ZERO_CONT
_PAGE_KIND = int(RamFlag.PAGE)
_ZERO_KIND = int(RamFlag.ZERO)
_PAGE_KINDS = (_ZERO_KIND, _PAGE_KIND, int(RamFlag.XBZRLE), int(RamFlag.COMPRESS_PAGE))
_PAGE_RECORD = 8 + PAGE
_ZERO_RECORD = 9
_RUN_PROBE = 16  # a run is tried when the record this far ahead has the same flags
_RUN_MAX = 8192  # records checked per numpy call


def load_discarding(loader: RamLoader, r: Reader, section_id: int
                    ) -> tuple[list[RamMemSize | RamPages], bool]:
    """Check and skip records until EOS (returns True) or the end of the buffer (False).

    Like `RamLoader.load`: `r.pos` ends after the last complete record, and a record cut
    by the end of the buffer is left whole for the next call (`loader.need` says how
    far the buffer must reach).  The loop keeps the block's length in a local and
    appends three numbers per CONTINUE page or zero record: this is the hot path."""
    events: list[RamMemSize | RamPages] = []
    buf, end, base = r.buf, r.end, r.base
    pos = r.pos
    block = loader.last_block
    batch = _SpanBatch(section_id, block)
    oapp, kapp, sapp = batch.appenders()
    used = block.used_length if block is not None else -1
    unpack = unpack_be64
    eos = False
    try:
        while True:
            if pos + 8 > end:
                raise _short(r, pos, 8)
            (word,) = unpack(buf, pos)
            flags = word & _FLAG_MASK
            if flags == _PAGE_CONT or flags == _ZERO_CONT:
                addr = word ^ flags
                if addr < used:
                    stride = _PAGE_RECORD if flags == _PAGE_CONT else _ZERO_RECORD
                    probe = pos + _RUN_PROBE * stride
                    if probe + 8 <= end and unpack(buf, probe)[0] & _FLAG_MASK == flags:
                        n = _skip_run(buf, pos, end, base, flags, stride, used, batch)
                        if n:
                            pos += n * stride
                            oapp, kapp, sapp = batch.appenders()
                            continue
                    npos = pos + stride
                    if npos > end:
                        raise _short(r, pos, stride)
                    oapp(addr)
                    kapp(flags ^ int(RamFlag.CONTINUE))
                    sapp(base + pos)
                    pos = npos
                    continue
            addr = word ^ flags
            r.pos = pos + 8
            kind = flags & _KIND_MASK
            if flags & _PAGE_FLAGS:
                found = loader._block_from_stream(r, flags, addr)
                if found is not block:
                    block = loader.last_block = found
                    used = found.used_length
                    batch.switch(found, events)
                    oapp, kapp, sapp = batch.appenders()
            if kind == _MEM_SIZE:
                batch.flush(events)
                oapp, kapp, sapp = batch.appenders()
                events.append(loader.load_mem_size(r, section_id, addr, base + pos))
            elif kind == _EOS:
                pos = r.pos
                eos = True
                break
            elif kind in _PAGE_KINDS:
                payload = r.pos
                _skip_payload(r, kind, addr, loader.allow_compressed)
                batch.add_odd(addr, kind, base + pos, base + payload, base + r.pos)
            else:
                raise loader._bad_flags(flags, pos, base)
            pos = r.pos
    except NeedData as need:
        loader.need = need.needed  # pos is still the start of the partial record
    except RemoteProtocolError as err:
        r.pos = pos
        raise err.at(base + pos)
    finally:
        loader.last_block = block
    batch.flush(events)
    r.pos = pos
    return events, eos


def _skip_run(buf: Any, pos: int, end: int, base: int, flags: int, stride: int, used: int,
              batch: _SpanBatch) -> int:
    """Records of one flag value from `pos` on whose offsets lie inside the block; returns
    how many (0 when fewer than the probe distance: not worth a numpy call)."""
    k = min(_RUN_MAX, (end - pos) // stride)
    if k < _RUN_PROBE:
        return 0
    words = np.ndarray((k,), dtype=">u8", buffer=buf, offset=pos,
                       strides=(stride,)).astype(np.uint64)
    addrs = words & _ADDR_MASK
    ok = ((words ^ addrs) == flags) & (addrs < np.uint64(used))
    n = k if ok.all() else int(np.argmin(ok))
    if n < _RUN_PROBE:
        return 0
    starts = np.arange(n, dtype=np.int64) * stride + (base + pos)
    batch.add_run(addrs[:n], flags & _KIND_MASK, starts)
    return n


def _skip_payload(r: Reader, kind: int, addr: int, allow_compressed: bool) -> None:
    """A page record's payload, checked as `ram_load_precopy` checks it, and skipped."""
    if kind == RamFlag.ZERO:
        r.u8()  # QEMU 7.2 honours any fill byte
    elif kind == RamFlag.PAGE:
        r.skip(PAGE)
    elif kind == RamFlag.XBZRLE:
        encoding = r.u8()
        length = r.be16()
        where = f"Failed to decompress XBZRLE page at {addr:x}"
        if encoding != ENCODING_FLAG_XBZRLE:
            raise RemoteProtocolError("Failed to load XBZRLE page - wrong compression!"
                                      ).with_context(where)
        if length > PAGE:
            raise RemoteProtocolError("Failed to load XBZRLE page - len overflow!"
                                      ).with_context(where)
        r.skip(length)
    else:
        if not allow_compressed:
            raise RemoteProtocolError("Received an unexpected compressed page")
        length = r.be32()
        if length > COMPRESS_BOUND_PAGE:
            raise RemoteProtocolError(f"Invalid compressed data length: {length}")
        r.skip(length)


def _short(r: Reader, pos: int, n: int) -> Exception:
    if r.closed:
        return Truncated(r.base + r.end)
    return NeedData(r.base + pos + n)


class _SpanBatch:
    """The page records located since the last flush, for one block.

    A CONTINUE page or zero record is kept as three numbers (offset in the block, kind,
    start); its payload starts 8 bytes in and it is 4104 or 9 bytes long.  Any other page
    record (one naming its block, XBZRLE, compressed) also keeps its payload start and end.
    Runs arrive as numpy arrays.  `flush` turns it all into one `RamPages` with spans.
    """

    __slots__ = ("block", "chunks", "kinds", "odd", "offsets", "section_id", "starts")

    def __init__(self, section_id: int, block: Any) -> None:
        self.section_id = section_id
        self.block = block
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._new_arrays()

    def _new_arrays(self) -> None:
        self.offsets = array("Q")
        self.kinds = array("H")
        self.starts = array("q")
        self.odd: list[tuple[int, int, int]] = []  # (index, payload start, end)

    def appenders(self):  # type: ignore[no-untyped-def]
        return self.offsets.append, self.kinds.append, self.starts.append

    def add_odd(self, addr: int, kind: int, start: int, payload: int, end: int) -> None:
        self.odd.append((len(self.offsets), payload, end))
        self.offsets.append(addr)
        self.kinds.append(kind)
        self.starts.append(start)

    def add_run(self, addrs: np.ndarray, kind: int, starts: np.ndarray) -> None:
        self._close_arrays()
        self.chunks.append((addrs, np.full(addrs.size, kind, dtype=np.uint16),
                            _spans(starts, np.full(starts.size, kind, dtype=np.uint16))))

    def _close_arrays(self) -> None:
        if not self.offsets:
            return
        kinds = np.frombuffer(self.kinds, dtype=np.uint16).copy()
        spans = _spans(np.frombuffer(self.starts, dtype=np.int64), kinds)
        for index, payload, end in self.odd:
            spans[index, 1] = payload
            spans[index, 2] = end
        self.chunks.append((np.frombuffer(self.offsets, dtype=np.uint64).copy(), kinds, spans))
        self._new_arrays()

    def switch(self, block: Any, events: list[RamMemSize | RamPages]) -> None:
        if block is not self.block:
            self.flush(events)
            self.block = block

    def flush(self, events: list[RamMemSize | RamPages]) -> None:
        self._close_arrays()
        if self.chunks and self.block is not None:
            if len(self.chunks) == 1:
                offsets, kinds, spans = self.chunks[0]
            else:
                offsets = np.concatenate([c[0] for c in self.chunks])
                kinds = np.concatenate([c[1] for c in self.chunks])
                spans = np.concatenate([c[2] for c in self.chunks])
            events.append(RamPages(self.section_id, self.block.idstr, offsets, kinds, spans,
                                   offset=int(spans[0, 0])))
        self.chunks = []


def _spans(starts: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Spans of CONTINUE page and zero records starting at `starts`."""
    spans = np.empty((starts.size, 3), dtype=np.int64)
    spans[:, 0] = starts
    spans[:, 1] = starts + 8
    spans[:, 2] = starts + np.where(kinds == _PAGE_KIND, _PAGE_RECORD, _ZERO_RECORD)
    return spans
