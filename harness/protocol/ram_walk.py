"""The one walk over the records of a `ram` section, with three sinks: place, place once, discard.

Strategy: `walk` reads records the way `migration/ram.c: ram_load_precopy` does (QEMU 7.2:
the block named or continued, the offset inside it, MEM_SIZE, EOS, the page kinds, QEMU's
messages) and hands each page record to a sink: `PlaceSink` writes it into the block's RAM
(precopy), `PlaceOnceSink` writes a page only when the present bitmap says it is not here
yet, then marks it and wakes its waiters (`ram_load_postcopy`), and `DiscardSink`
(`ram_discard`) checks and locates records without storing anything (a proxy).
Before each record that needs QEMU's checks, the sink's `fast` consumes the common case in
bulk: CONTINUE page and zero records inside the current block, whole in the buffer.  It
stops at anything else -- a named block, XBZRLE, compressed, EOS, MEM_SIZE, bad flags, an
offset out of range, a partial record -- and the walk handles that record with its checks.
`fast` is the compiled `harness._recv.walk` when it is built (harness/native.py), else its
Python twin here (runs of consecutive pages placed with one numpy copy); both give the same
RAM, events, bitmaps and positions (tests/unit/test_native_recv.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RemoteProtocolError
from .events import RamMemSize, RamPages
from .ram_batch import PageBatch
from .ram_records import (
    COMPRESS,
    DEFERRED_COMPRESSED,
    DEFERRED_ZERO,
    EOS,
    FLAG_MASK,
    FULL_PAGE,
    KIND_MASK,
    MEM_SIZE,
    PAGE,
    PAGE_CONT,
    PAGE_FLAGS,
    PAGE_KINDS,
    PAGE_RECORD,
    POSTCOPY_KINDS,
    XBZRLE,
    ZERO,
    ZERO_CONT,
    ZERO_PAGE,
    ZERO_RECORD,
    bad_flags,
    postcopy_bad_flags,
    short,
    skip_payload,
    zero_fill,
)
from .wire import NeedData, Reader, unpack_be64

if TYPE_CHECKING:
    from .ram import RamLoader, _Block

Events = list[RamMemSize | RamPages]
#: modes of harness._recv.walk
MODE_PLACE, MODE_ONCE, MODE_DISCARD = 0, 1, 2
_RUN_MAX = 1 << 14
_RUN_START = 64  # records a run is first checked for when it is not all of the buffer
_U64 = np.dtype(np.uint64)
_U16 = np.dtype(np.uint16)


def default_native() -> ModuleType | None:
    """The compiled `_recv`, or None (the Python twin): harness/native.py decides (env,
    build, staleness).  Imported late: the codec itself stays free of I/O."""
    from .. import native

    return native.module("_recv")


class Sink:
    """What the walk does with page records; subclasses fill in the parts that differ."""

    def __init__(self, loader: RamLoader, native: ModuleType | None) -> None:
        self.loader = loader
        self.native = native
        self.batch: Any = None

    def start(self, section_id: int, base: int, pos: int, block: _Block | None) -> None:
        raise NotImplementedError

    def fast(self, buf: Any, bmv: memoryview, pos: int, end: int, block: _Block) -> int:
        """Consume CONTINUE page/zero records in `block` from `pos`; returns where it stopped."""
        raise NotImplementedError

    def precheck(self, flags: int, kind: int) -> None:
        """Refuse a record before its block is looked up (postcopy refuses some kinds)."""

    def page(self, r: Reader, bmv: memoryview, pos: int, kind: int, flags: int, addr: int,
             block: _Block) -> None:
        raise NotImplementedError

    def switch(self, block: _Block, events: Events, pos: int) -> None:
        self.batch.switch(block, events, pos)

    def flush(self, events: Events, pos: int) -> None:
        self.batch.flush(events, pos)

    def abort(self) -> None:
        """A record was refused: what came before it stays applied."""

    def finish(self, events: Events) -> None:
        """After the last flush of a call."""

    def _native_walk(self, mode: int, buf: Any, pos: int, end: int, block: _Block,
                     present: np.ndarray | None) -> tuple[int, np.ndarray, np.ndarray, Any, int]:
        assert self.native is not None
        npos, offs, kinds, starts, dups = self.native.walk(
            mode, buf, pos, end, block.mem, block.used_length, present)
        return (npos, np.frombuffer(offs, dtype=_U64), np.frombuffer(kinds, dtype=_U16),
                starts, dups)


def walk(loader: RamLoader, r: Reader, section_id: int, sink: Sink) -> tuple[Events, bool]:
    """Records until EOS (returns True) or until the buffer runs out (False).

    `r.pos` ends after the last complete record; a record cut by the end of the buffer is
    left whole for the next call (`loader.need` says how far the buffer must reach), so
    nothing is applied twice.  An error is raised at the offset of the record refused.
    """
    events: Events = []
    buf, end, base = r.buf, r.end, r.base
    pos = r.pos
    block = loader.last_block
    sink.start(section_id, base, pos, block)
    eos = False
    with memoryview(buf) as bmv:
        try:
            while True:
                if block is not None:
                    pos = sink.fast(buf, bmv, pos, end, block)
                if pos + 8 > end:
                    raise short(r, pos, 8)
                (word,) = unpack_be64(buf, pos)
                flags = word & FLAG_MASK
                addr = word ^ flags
                kind = flags & KIND_MASK
                r.pos = pos + 8
                sink.precheck(flags, kind)
                if flags & PAGE_FLAGS:
                    found = loader._block_from_stream(r, flags, addr)
                    if found is not block:
                        block = loader.last_block = found
                        sink.switch(found, events, pos)
                if kind == MEM_SIZE:
                    sink.flush(events, pos)
                    events.append(loader.load_mem_size(r, section_id, addr, base + pos))
                elif kind == EOS:
                    pos = r.pos
                    eos = True
                    break
                elif kind in PAGE_KINDS:
                    assert block is not None
                    sink.page(r, bmv, pos, kind, flags, addr, block)
                else:
                    raise bad_flags(flags)
                pos = r.pos
        except NeedData as need:
            loader.need = need.needed  # pos is still the start of the partial record
        except RemoteProtocolError as err:
            sink.abort()
            r.pos = pos
            raise err.at(base + pos)
        finally:
            loader.last_block = block
    sink.flush(events, pos)
    r.pos = pos
    sink.finish(events)
    return events, eos


class PlaceSink(Sink):
    """Precopy: every page record is written into the block's RAM (`ram_load_precopy`).

    The twin defers zero pages of CONTINUE records to one numpy write per batch, and
    places runs of consecutive pages with one copy each; a delta (XBZRLE) applies the
    deferred pages first.  Compressed pages go through the loader's `inflate` hook when set.
    """

    def start(self, section_id: int, base: int, pos: int, block: _Block | None) -> None:
        self.batch = PageBatch(section_id, base, pos, self.loader.inflate)
        self.batch.block = block

    def fast(self, buf: Any, bmv: memoryview, pos: int, end: int, block: _Block) -> int:
        if block.mem is None:
            return pos
        if self.native is not None and block.pages is not None:
            npos, offs, kinds, _, _ = self._native_walk(MODE_PLACE, buf, pos, end, block, None)
            if npos != pos:
                self.batch.add_chunk(offs, kinds)
            return npos
        return self._fast_twin(buf, bmv, pos, end, block)

    def _fast_twin(self, buf: Any, bmv: memoryview, pos: int, end: int, block: _Block) -> int:
        view, used, pages = block.view, block.used_length, block.pages
        assert view is not None
        batch = self.batch
        batch.deferred = True  # zero pages are written when the batch is applied
        oapp, kapp = batch.appenders()
        unpack = unpack_be64
        prev, run = -1, 0
        while pos + 8 <= end:
            (word,) = unpack(buf, pos)
            flags = word & FLAG_MASK
            if flags != PAGE_CONT and flags != ZERO_CONT:
                break
            if flags == prev:
                run += 1
                if run >= 1 and pages is not None:
                    n = self._run(buf, pos, end, flags, block)
                    if n:
                        pos += n * (PAGE_RECORD if flags == PAGE_CONT else ZERO_RECORD)
                        oapp, kapp = batch.appenders()
                        run = 0
                        continue
                    run = -4  # not a run here: back off
            else:
                prev, run = flags, 0
            addr = word ^ flags
            if addr >= used:
                break
            if flags == PAGE_CONT:
                npos = pos + PAGE_RECORD
                if npos > end:
                    break
                view[addr:addr + PAGE] = bmv[pos + 8:npos]
                oapp(addr)
                kapp(FULL_PAGE)
                pos = npos
            else:
                if pos + ZERO_RECORD > end or buf[pos + 8]:
                    break
                oapp(addr)  # zeroed with numpy when the batch is applied
                kapp(DEFERRED_ZERO)
                pos += ZERO_RECORD
        return pos

    def _run(self, buf: Any, pos: int, end: int, flags: int, block: _Block) -> int:
        """Place a run of same-kind CONTINUE records of consecutive pages with numpy.

        One comparison checks flags and offsets at once (the words must step by a page);
        the run is extended by doubling while it holds.  Returns the records placed.
        """
        page = flags == PAGE_CONT
        stride = PAGE_RECORD if page else ZERO_RECORD
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
            n, first = _run_length(buf, at, k, stride, page)
            last = first - flags + (n - 1) * PAGE
            if n < 2 or last >= block.used_length:
                break
            index = (first - flags) // PAGE
            if page:
                block.pages[index:index + n] = np.ndarray(
                    (n, PAGE), dtype=np.uint8, buffer=buf, offset=at + 8, strides=(stride, 1))
            else:
                zero_fill(block.pages[index:index + n])
            self.batch.add_many(np.arange(first - flags, last + 1, PAGE, dtype=np.uint64),
                                FULL_PAGE if page else ZERO)
            done += n
            if n < k:
                break
            k = min(k * 2, _RUN_MAX)
        return done

    def page(self, r: Reader, bmv: memoryview, pos: int, kind: int, flags: int, addr: int,
             block: _Block) -> None:
        batch = self.batch
        if kind == XBZRLE:  # a delta needs the page as it is now
            batch.apply_zeros()
        if kind == COMPRESS and self.loader.inflate is not None:
            batch.compressed.append((self.loader._compressed_data(r), r.base + pos))
            kind = DEFERRED_COMPRESSED
        else:
            self.loader._load_page(r, bmv, kind, flags, addr, block)
        batch.add(addr, kind)

    def abort(self) -> None:
        self.batch.apply_zeros()

    def finish(self, events: Events) -> None:
        present = self.loader.present
        if present is None:
            return
        for ev in events:
            if isinstance(ev, RamPages):
                present[ev.block][(ev.offsets >> np.uint64(12)).astype(np.intp)] = 1


class PlaceOnceSink(Sink):
    """Postcopy (`ram_load_postcopy`): a page is written only if it is not present yet,
    then marked present (after its content: whoever sees the mark sees the page) and
    handed to `on_place`; a page already here is counted in `duplicates`."""

    def start(self, section_id: int, base: int, pos: int, block: _Block | None) -> None:
        self.batch = PageBatch(section_id, base, pos)
        self.batch.block = block

    def precheck(self, flags: int, kind: int) -> None:
        if kind != EOS and kind not in POSTCOPY_KINDS:
            raise postcopy_bad_flags(flags)

    def fast(self, buf: Any, bmv: memoryview, pos: int, end: int, block: _Block) -> int:
        loader = self.loader
        assert loader.present is not None
        present = loader.present[block.idstr]
        if block.mem is None:
            return pos
        if self.native is None or block.pages is None or present.itemsize != 1:
            return self._fast_twin(buf, bmv, pos, end, block, present)
        npos, offs, kinds, _, dups = self._native_walk(MODE_ONCE, buf, pos, end, block, present)
        loader.duplicates += dups
        if offs.size:
            self.batch.add_chunk(offs, kinds)
            if loader.on_place is not None:
                loader.on_place(block.idstr, (offs >> np.uint64(12)).astype(np.intp))
        return npos

    def _fast_twin(self, buf: Any, bmv: memoryview, pos: int, end: int, block: _Block,
                   present: np.ndarray) -> int:
        loader = self.loader
        view, used = block.view, block.used_length
        assert view is not None
        while pos + 8 <= end:
            (word,) = unpack_be64(buf, pos)
            flags = word & FLAG_MASK
            if flags == PAGE_CONT:
                stride = PAGE_RECORD
            elif flags == ZERO_CONT:
                stride = ZERO_RECORD
            else:
                break
            addr = word ^ flags
            if addr >= used or pos + stride > end or (stride == ZERO_RECORD and buf[pos + 8]):
                break
            if block.pages is not None and pos + stride + 8 <= end and \
                    unpack_be64(buf, pos + stride)[0] == word + PAGE:
                n = self._place_run(buf, pos, end, flags, block, present)
                if n:
                    pos += n * stride
                    continue
            page = addr // PAGE
            if present[page]:
                loader.duplicates += 1
            else:
                view[addr:addr + PAGE] = bmv[pos + 8:pos + stride] if stride == PAGE_RECORD \
                    else ZERO_PAGE
                present[page] = 1
                if loader.on_place is not None:
                    loader.on_place(block.idstr, np.array([page]))
                self.batch.add(addr, FULL_PAGE if stride == PAGE_RECORD else ZERO)
            pos += stride
        return pos

    def _place_run(self, buf: Any, pos: int, end: int, flags: int, block: _Block,
                   present: np.ndarray) -> int:
        """Place a run of same-kind CONTINUE records of consecutive pages, skipping those
        already present; returns the records consumed."""
        page = flags == PAGE_CONT
        stride = PAGE_RECORD if page else ZERO_RECORD
        k = min(_RUN_MAX, (end - pos) // stride)
        if k < 2:
            return 0
        n, first = _run_length(buf, pos, k, stride, page)
        index = (first - flags) // PAGE
        if n < 2 or (index + n) * PAGE > block.used_length:
            return 0
        assert block.pages is not None
        missing = np.flatnonzero(present[index:index + n] == 0)
        targets = missing + index
        if page:
            src = np.ndarray((n, PAGE), dtype=np.uint8, buffer=buf, offset=pos + 8,
                             strides=(stride, 1))
            block.pages[targets] = src[missing]
        else:
            block.pages[targets] = 0
        present[targets] = 1  # after the content
        self.loader.duplicates += n - missing.size
        if missing.size:
            if self.loader.on_place is not None:
                self.loader.on_place(block.idstr, targets)
            self.batch.add_many(targets.astype(np.uint64) * np.uint64(PAGE),
                                FULL_PAGE if page else ZERO)
        return n

    def page(self, r: Reader, bmv: memoryview, pos: int, kind: int, flags: int, addr: int,
             block: _Block) -> None:
        loader = self.loader
        assert loader.present is not None
        present = loader.present[block.idstr]
        page = addr // PAGE
        if present[page]:
            skip_payload(r, kind)
            loader.duplicates += 1
            return
        loader._load_page(r, bmv, kind, flags, addr, block)
        present[page] = 1
        if loader.on_place is not None:
            loader.on_place(block.idstr, np.array([page]))
        self.batch.add(addr, kind)


def _run_length(buf: Any, at: int, k: int, stride: int, page: bool) -> tuple[int, int]:
    """How many of the `k` records at `at` continue the first one's run (same flags, each
    the next page; zero records also a zero fill byte), and the first record's word."""
    words = np.ndarray((k,), dtype=">u8", buffer=buf, offset=at,
                       strides=(stride,)).astype(np.uint64)
    first = int(words[0])
    ok = words == np.arange(first, first + k * PAGE, PAGE, dtype=np.uint64)
    if not page:
        ok &= np.ndarray((k,), dtype=np.uint8, buffer=buf, offset=at + 8, strides=(9,)) == 0
    return (k if ok.all() else int(np.argmin(ok))), first


__all__ = ["MODE_DISCARD", "MODE_ONCE", "MODE_PLACE", "PlaceOnceSink", "PlaceSink", "Sink",
           "default_native", "walk"]
