"""RAM page records: the flag constants and the small helpers every walker of them shares.

Strategy: one place for what a record of the `ram` section looks like (a be64 word holding
the page offset and the RAM_SAVE_FLAG_* bits, then the payload of its kind) and for the
checks `migration/ram.c` (QEMU 7.2: `ram_load_precopy`, `ram_load_postcopy`,
`load_xbzrle`) makes while reading one, with QEMU's messages.  The walker (`ram_walk`),
its sinks and the loader (`ram`) import from here; nothing here keeps state.  Plain ints,
not `RamFlag` members: IntFlag operators are slow on the per-record path.
"""

from __future__ import annotations

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
from .wire import NeedData, Reader, Truncated

PAGE = TARGET_PAGE_SIZE
FLAG_MASK = PAGE - 1
CONTINUE = int(RamFlag.CONTINUE)
KIND_MASK = FLAG_MASK & ~CONTINUE
HOOK = int(RamFlag.HOOK)
PAGE_FLAGS = int(RAM_PAGE_FLAGS)  # a record with one of these names or continues a block
PAGE_CONT = RAM_PAGE_CONT
ZERO_CONT = RAM_ZERO_CONT
ZERO = int(RamFlag.ZERO)
MEM_SIZE = int(RamFlag.MEM_SIZE)
FULL_PAGE = int(RamFlag.PAGE)
EOS = int(RamFlag.EOS)
XBZRLE = int(RamFlag.XBZRLE)
COMPRESS = int(RamFlag.COMPRESS_PAGE)
PAGE_KINDS = (ZERO, FULL_PAGE, XBZRLE, COMPRESS)
POSTCOPY_KINDS = (ZERO, FULL_PAGE, COMPRESS)  # what ram_load_postcopy accepts
PAGE_RECORD = 8 + PAGE  # a CONTINUE page record, header included
ZERO_RECORD = 9  # a CONTINUE zero record: header and fill byte
ZERO_PAGE = bytes(PAGE)
DEFERRED_ZERO = int(RamFlag.FULL)  # internal: a zero page not written yet (FULL is never sent)
DEFERRED_COMPRESSED = int(RamFlag.COMPRESS_PAGE | RamFlag.FULL)  # internal: not inflated yet


def short(r: Reader, pos: int, n: int) -> Exception:
    """NeedData for `n` bytes from buffer position `pos` (Truncated once the input ended)."""
    if r.closed:
        return Truncated(r.base + r.end)
    return NeedData(r.base + pos + n)


def bad_flags(flags: int) -> RemoteProtocolError:
    """ram_load_precopy's default case."""
    if flags & HOOK:
        # QEMU passes this to the RDMA hook, which fails without a message on TCP
        return RemoteProtocolError(
            f"RAM_SAVE_FLAG_HOOK in flags 0x{flags:x} outside an RDMA migration", qemu=False)
    return RemoteProtocolError(f"Unknown combination of migration flags: 0x{flags:x}")


def postcopy_bad_flags(flags: int) -> RemoteProtocolError:
    """ram_load_postcopy's default case."""
    return RemoteProtocolError(
        f"Unknown combination of migration flags: 0x{flags:x} (postcopy mode)")


def compressed_length(r: Reader, allow_compressed: bool) -> int:
    """The be32 length of a compressed page's zlib data, checked."""
    if not allow_compressed:
        raise RemoteProtocolError("Received an unexpected compressed page")
    length = r.be32()
    if length > COMPRESS_BOUND_PAGE:
        raise RemoteProtocolError(f"Invalid compressed data length: {length}")
    return length


def xbzrle_length(r: Reader, addr: int) -> int:
    """migration/ram.c: load_xbzrle's header (encoding byte, be16 length), checked."""
    encoding = r.u8()
    length = r.be16()
    if encoding != ENCODING_FLAG_XBZRLE:
        raise xbzrle_error("wrong compression", addr)
    if length > PAGE:
        raise xbzrle_error("len overflow", addr)
    return length


def xbzrle_error(what: str, addr: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"Failed to load XBZRLE page - {what}!").with_context(
        f"Failed to decompress XBZRLE page at {addr:x}")


def skip_payload(r: Reader, kind: int) -> None:
    """Consume a page record's payload without placing it or checking it (a page that
    postcopy already has)."""
    if kind == ZERO:
        r.u8()
    elif kind == FULL_PAGE:
        r.skip(PAGE)
    else:
        r.skip(r.be32())


def skip_checked(r: Reader, kind: int, addr: int, allow_compressed: bool) -> None:
    """A page record's payload, checked as `ram_load_precopy` checks it, and skipped."""
    if kind == ZERO:
        r.u8()  # QEMU 7.2 honours any fill byte
    elif kind == FULL_PAGE:
        r.skip(PAGE)
    elif kind == XBZRLE:
        r.skip(xbzrle_length(r, addr))
    else:
        r.skip(compressed_length(r, allow_compressed))


def zero_fill(pages: np.ndarray) -> None:
    """Zero the pages (rows) that are not zero already: QEMU's ram_handle_compressed
    writes a zero page only when `buffer_is_zero` says it is not, and reading is cheaper
    than writing (a fresh destination's pages are all zero)."""
    dirty = np.flatnonzero(np.bitwise_or.reduce(pages.view(np.uint64), axis=1))
    if dirty.size:
        pages[dirty] = 0
