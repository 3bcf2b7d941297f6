"""The `ram` section without guest RAM: page records checked, located, and skipped.

Strategy: whoever only needs to know where the records of a stream lie (the network
proxy between two peers, which must stay as fast as the link) runs `RamLoader` in
discard mode: the one walk (`ram_walk.walk`, with QEMU's checks of `migration/ram.c:
ram_load_precopy`: a known block, CONTINUE only after a block was named, the offset inside
the block, known flags, XBZRLE and compressed lengths) with `DiscardSink`, which never
reads a page: every page record's place goes into the batch's `spans` (record start,
payload start, record end; absolute offsets).  CONTINUE page and zero records are located
in bulk by the compiled `harness._recv` when built, else by the twin here: a run of
same-flag records (a bulk pass) is checked and located with one numpy operation over its
strided headers, so a GiB of pages costs a few hundred numpy calls and no Python object
per page.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

import numpy as np

from .events import RamPages
from .ram_records import (
    CONTINUE,
    FLAG_MASK,
    FULL_PAGE,
    KIND_MASK,
    PAGE_CONT,
    PAGE_RECORD,
    ZERO_CONT,
    ZERO_RECORD,
    skip_checked,
)
from .ram_walk import MODE_DISCARD, Sink
from .wire import Reader, unpack_be64

if TYPE_CHECKING:
    from .events import RamMemSize
    from .ram import _Block

__all__ = ["DiscardSink"]

_ADDR_MASK = np.uint64(~FLAG_MASK & 0xFFFF_FFFF_FFFF_FFFF)
_RUN_PROBE = 16  # a run is tried when the record this far ahead has the same flags
_RUN_MAX = 8192  # records checked per numpy call


class DiscardSink(Sink):
    """Page records checked and located, never stored (a loader in discard mode)."""

    def start(self, section_id: int, base: int, pos: int, block: _Block | None) -> None:
        self.base = base
        self.batch = _SpanBatch(section_id, block)

    def fast(self, buf: Any, bmv: memoryview, pos: int, end: int, block: _Block) -> int:
        if self.native is None:
            return self._fast_twin(buf, pos, end, block.used_length)
        npos, offs, kinds, starts, _ = self.native.walk(
            MODE_DISCARD, buf, pos, end, None, block.used_length, None)
        if npos != pos:
            self.batch.add_chunk(np.frombuffer(offs, dtype=np.uint64),
                                 np.frombuffer(kinds, dtype=np.uint16),
                                 np.frombuffer(starts, dtype=np.int64) + self.base)
        return npos

    def _fast_twin(self, buf: Any, pos: int, end: int, used: int) -> int:
        base, batch = self.base, self.batch
        oapp, kapp, sapp = batch.appenders()
        unpack = unpack_be64
        while pos + 8 <= end:
            (word,) = unpack(buf, pos)
            flags = word & FLAG_MASK
            if flags != PAGE_CONT and flags != ZERO_CONT:
                break
            addr = word ^ flags
            if addr >= used:
                break
            stride = PAGE_RECORD if flags == PAGE_CONT else ZERO_RECORD
            probe = pos + _RUN_PROBE * stride
            if probe + 8 <= end and unpack(buf, probe)[0] & FLAG_MASK == flags:
                n = _skip_run(buf, pos, end, base, flags, stride, used, batch)
                if n:
                    pos += n * stride
                    oapp, kapp, sapp = batch.appenders()
                    continue
            npos = pos + stride
            if npos > end:
                break
            oapp(addr)
            kapp(flags ^ CONTINUE)
            sapp(base + pos)
            pos = npos
        return pos

    def page(self, r: Reader, bmv: memoryview, pos: int, kind: int, flags: int, addr: int,
             block: _Block) -> None:
        payload = r.pos
        skip_checked(r, kind, addr, self.loader.allow_compressed)
        self.batch.add_odd(addr, kind, self.base + pos, self.base + payload, self.base + r.pos)


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
    batch.add_run(addrs[:n], flags & KIND_MASK, starts)
    return n


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

    def add_chunk(self, addrs: np.ndarray, kinds: np.ndarray, starts: np.ndarray) -> None:
        """CONTINUE page and zero records of any kinds (what harness._recv located)."""
        self._close_arrays()
        self.chunks.append((addrs, kinds, _spans(starts, kinds)))

    def switch(self, block: Any, events: list[RamMemSize | RamPages], pos: int = 0) -> None:
        if block is not self.block:
            self.flush(events)
            self.block = block

    def flush(self, events: list[RamMemSize | RamPages], pos: int = 0) -> None:
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
    spans[:, 2] = starts + np.where(kinds == FULL_PAGE, PAGE_RECORD, ZERO_RECORD)
    return spans
