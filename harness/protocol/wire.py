"""Reading and writing QEMU's big-endian primitives.

Strategy: the decoder parses from a buffer it owns; a `Reader` is a cheap cursor over that
buffer with an end and an absolute base offset.  When a read runs past the end it raises
`NeedData` (more bytes may come) or `Truncated` (the input is closed, or we are inside a
PACKAGED blob that is already complete).  Parsers are written as straight-line code over a
Reader; the caller commits the cursor only when a whole record parsed, so a partial record
is simply retried when more bytes arrive.
"""

from __future__ import annotations

import errno as _errno
import struct

from .errors import RemoteProtocolError

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")

pack_be16 = _BE16.pack
pack_be32 = _BE32.pack
pack_be64 = _BE64.pack
unpack_be16 = _BE16.unpack_from
unpack_be32 = _BE32.unpack_from
unpack_be64 = _BE64.unpack_from


class NeedData(Exception):
    """A record is incomplete; `needed` is the absolute offset the buffer must reach."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class Truncated(RemoteProtocolError):
    """The input ended inside a record."""

    def __init__(self, offset: int, message: str = "unexpected end of migration stream") -> None:
        super().__init__(message, offset=offset, errno=_errno.EIO, qemu=False)


class Reader:
    """A cursor over `buf[pos:end]`; `base` is the absolute stream offset of `buf[0]`."""

    __slots__ = ("base", "buf", "closed", "end", "pos")

    def __init__(self, buf: bytes | bytearray, pos: int, end: int, base: int = 0,
                 closed: bool = False) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.base = base
        self.closed = closed

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def short(self, n: int) -> Exception:
        if self.closed:
            return Truncated(self.base + self.end)
        return NeedData(self.base + self.pos + n)

    def require(self, n: int) -> None:
        if n < 0:
            raise RemoteProtocolError(f"negative length {n}", offset=self.offset)
        if self.pos + n > self.end:
            raise self.short(n)

    def remaining(self) -> int:
        return self.end - self.pos

    def u8(self) -> int:
        if self.pos >= self.end:
            raise self.short(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def be16(self) -> int:
        self.require(2)
        (v,) = unpack_be16(self.buf, self.pos)
        self.pos += 2
        return v

    def be32(self) -> int:
        self.require(4)
        (v,) = unpack_be32(self.buf, self.pos)
        self.pos += 4
        return v

    def be64(self) -> int:
        self.require(8)
        (v,) = unpack_be64(self.buf, self.pos)
        self.pos += 8
        return v

    def take(self, n: int) -> bytes:
        self.require(n)
        v = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return v

    def skip(self, n: int) -> None:
        self.require(n)
        self.pos += n

    def str8(self) -> bytes:
        """A QEMU counted string: u8 length then that many bytes, no NUL."""
        n = self.u8()
        return self.take(n)

    def peek(self, at: int = 0) -> int:
        """The byte `at` positions ahead, without consuming it."""
        if self.pos + at >= self.end:
            raise self.short(at + 1)
        return self.buf[self.pos + at]

    def peek_bytes(self, at: int, n: int) -> bytes:
        if self.pos + at + n > self.end:
            raise self.short(at + n)
        return bytes(self.buf[self.pos + at:self.pos + at + n])


def str8(value: bytes | str) -> bytes:
    """Encode a QEMU counted string (at most 255 bytes)."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > 255:
        from .errors import LocalProtocolError

        raise LocalProtocolError(f"counted string longer than 255 bytes: {raw[:32]!r}...")
    return bytes((len(raw),)) + raw
