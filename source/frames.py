"""The page records of one batch of one block, framed with one copy into the output.

Strategy: a batch of XBZRLE or compressed pages mixes record kinds page by page, so it
cannot be framed with numpy like a batch of plain pages; calling `RamSaver` once per
record would cost two buffer writes per record.  `BlockRecords` writes the batch's first
record through the `RamSaver` (it names the block when it is not the last one sent, as
QEMU's `save_page_header` does) and every later one -- necessarily in the same block, so
with RAM_SAVE_FLAG_CONTINUE -- as parts joined once at `close()`.  The layouts are
`migration/ram.c`'s: ZERO + fill byte, PAGE + the page, XBZRLE + encoding byte + be16
length + delta (`save_xbzrle_page`), COMPRESS_PAGE + be32 length + zlib stream
(`qemu_put_compression_data`).  Each method returns the bytes of its record after the
8-byte header, which is what QEMU's xbzrle and compression counters add up.
"""

from __future__ import annotations

import struct

from harness.protocol.constants import (
    COMPRESS_BOUND_PAGE,
    ENCODING_FLAG_XBZRLE,
    RAM_PAGE_CONT,
    RAM_ZERO_CONT,
    RamFlag,
)
from harness.protocol.errors import LocalProtocolError
from harness.protocol.ram_saver import PAGE, FrameBuffer, Out, RamSaver

_XBZRLE_CONT = int(RamFlag.XBZRLE | RamFlag.CONTINUE)
_COMPRESS_CONT = int(RamFlag.COMPRESS_PAGE | RamFlag.CONTINUE)
_ZERO = struct.Struct(">QB")
_HEADER = struct.Struct(">Q")
_XBZRLE = struct.Struct(">QBH")
_COMPRESSED = struct.Struct(">QI")


class BlockRecords:
    """Records of `block`, in the order given; `close()` writes them out."""

    def __init__(self, out: Out, saver: RamSaver, block: str) -> None:
        self.out = out
        self.saver = saver
        self.block = block
        self.parts: list[bytes | memoryview] = []

    def _named(self) -> bool:
        """Whether the record must go through the saver (the block is not the last one)."""
        return self.saver.last_block != self.block

    def zero(self, addr: int) -> None:
        if self._named():
            self.saver.save_zero_page(self.out, self.block, addr)
        else:
            self.parts.append(_ZERO.pack(addr | RAM_ZERO_CONT, 0))

    def page(self, addr: int, data: memoryview) -> None:
        if self._named():
            self.saver.save_page(self.out, self.block, addr, data)
        else:
            self.parts += (_HEADER.pack(addr | RAM_PAGE_CONT), data)

    def xbzrle(self, addr: int, delta: bytes) -> int:
        if len(delta) > PAGE:
            raise LocalProtocolError(f"XBZRLE delta of {len(delta)} bytes exceeds a page")
        if self._named():
            self.saver.save_xbzrle_page(self.out, self.block, addr, delta)
            return 3 + len(delta) + 1 + len(self.block)
        self.parts += (_XBZRLE.pack(addr | _XBZRLE_CONT, ENCODING_FLAG_XBZRLE, len(delta)),
                       delta)
        return 3 + len(delta)

    def compressed(self, addr: int, data: bytes) -> int:
        if len(data) > COMPRESS_BOUND_PAGE:
            raise LocalProtocolError("compressed page exceeds compressBound(4096)")
        if self._named():
            self.saver.save_compressed_data(self.out, self.block, addr, data)
            return 4 + len(data) + 1 + len(self.block)
        self.parts += (_COMPRESSED.pack(addr | _COMPRESS_CONT, len(data)), data)
        return 4 + len(data)

    def close(self) -> None:
        if not self.parts:
            return
        data = b"".join(self.parts)
        self.parts = []
        if isinstance(self.out, FrameBuffer):
            self.out.put(data)
        else:
            self.out += data
