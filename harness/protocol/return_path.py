"""The return path: destination -> source messages on the same connection.

Strategy: one frozen dataclass per MIG_RP_MSG_* of QEMU 7.2 (`migration/migration.c`:
`migrate_send_rp_*` write them, `source_return_path_thread` checks them).  Framing is
`be16 type, be16 len, payload`; RECV_BITMAP is followed, outside its length, by the
received bitmap (be64 size, little-endian 64-bit words, be64 end marker) as
`migration/ram.c: ramblock_recv_bitmap_send` writes it.  `ReturnPathDecoder` is sans-IO
and incremental like the stream decoder: feed bytes, pull messages.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .constants import MIG_RP_MSG_MAX, RECV_BITMAP_ENDING, RP_MAX_LEN, RP_MSG_LEN, RpMsg
from .errors import LocalProtocolError, RemoteProtocolError
from .events import Event
from .wire import NeedData, Reader, Truncated, pack_be16, pack_be32, pack_be64, str8

NEED_DATA = "NEED_DATA"


@dataclass(frozen=True)
class RpMessage(Event):
    msg: ClassVar[RpMsg]

    def payload(self) -> bytes:
        return b""

    def trailer(self) -> bytes:
        return b""


@dataclass(frozen=True)
class Shut(RpMessage):
    """0 = the destination finished fine; anything else = it failed."""

    msg: ClassVar[RpMsg] = RpMsg.SHUT
    value: int = 0

    def payload(self) -> bytes:
        return pack_be32(self.value)


@dataclass(frozen=True)
class Pong(RpMessage):
    msg: ClassVar[RpMsg] = RpMsg.PONG
    value: int = 0

    def payload(self) -> bytes:
        return pack_be32(self.value)


@dataclass(frozen=True)
class ReqPagesId(RpMessage):
    """A page request naming its block: be64 start, be32 length, str8 block."""

    msg: ClassVar[RpMsg] = RpMsg.REQ_PAGES_ID
    start: int = 0
    length: int = 0
    block: str = ""

    def payload(self) -> bytes:
        return pack_be64(self.start) + pack_be32(self.length) + str8(self.block)


@dataclass(frozen=True)
class ReqPages(RpMessage):
    """A page request in the block of the previous REQ_PAGES_ID."""

    msg: ClassVar[RpMsg] = RpMsg.REQ_PAGES
    start: int = 0
    length: int = 0

    def payload(self) -> bytes:
        return pack_be64(self.start) + pack_be32(self.length)


@dataclass(frozen=True, eq=False)
class RecvBitmap(RpMessage):
    """The destination's received-page bitmap of one block (postcopy recovery).

    `bitmap` holds the raw little-endian words: byte j, bit b (from the LSB) set means
    target page 8*j+b was received.
    """

    msg: ClassVar[RpMsg] = RpMsg.RECV_BITMAP
    block: str = ""
    bitmap: bytes = b""

    def payload(self) -> bytes:
        return str8(self.block)

    def trailer(self) -> bytes:
        if len(self.bitmap) % 8:
            raise LocalProtocolError("RECV_BITMAP data must be a whole number of 64-bit words")
        return pack_be64(len(self.bitmap)) + self.bitmap + pack_be64(RECV_BITMAP_ENDING)

    def received(self, pages: int) -> np.ndarray:
        """The bitmap as one bool per target page."""
        bits = np.unpackbits(np.frombuffer(self.bitmap, dtype=np.uint8), bitorder="little")
        return bits[:pages].astype(bool)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RecvBitmap) and other.block == self.block
                and other.bitmap == self.bitmap)

    __hash__ = None  # type: ignore[assignment]


def pack_received_bitmap(received: np.ndarray) -> bytes:
    """Bool per page -> QEMU's little-endian words, padded to a multiple of 8 bytes."""
    packed = np.packbits(received.astype(np.uint8), bitorder="little").tobytes()
    return packed + bytes(-len(packed) % 8)


@dataclass(frozen=True)
class ResumeAck(RpMessage):
    msg: ClassVar[RpMsg] = RpMsg.RESUME_ACK
    value: int = 1

    def payload(self) -> bytes:
        return pack_be32(self.value)


def encode_rp(message: RpMessage) -> bytes:
    payload = message.payload()
    return pack_be16(message.msg) + pack_be16(len(payload)) + payload + message.trailer()


class ReturnPathDecoder:
    """Incremental decoder of the return path, with the source's checks.

    `receive_data(b"")` marks the end of input; `next_event()` returns a message,
    `NEED_DATA`, or None once the input ended cleanly.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._base = 0
        self._closed = False
        self._error: RemoteProtocolError | None = None

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def receive_data(self, data: bytes) -> None:
        if self._error:
            raise self._error
        if not data:
            self._closed = True
            return
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._base += self._pos
            self._pos = 0
        self._buf += data

    def next_event(self) -> RpMessage | str | None:
        if self._error:
            raise self._error
        if self._pos == len(self._buf):
            return None if self._closed else NEED_DATA
        r = Reader(self._buf, self._pos, len(self._buf), self._base, self._closed)
        try:
            message = _read_message(r)
        except NeedData:
            return NEED_DATA
        except RemoteProtocolError as err:
            self._error = err.at(self.offset)  # type: ignore[assignment]
            raise
        self._pos = r.pos
        return message

    def events(self) -> list[RpMessage]:
        """All complete messages buffered so far."""
        out = []
        while isinstance(ev := self.next_event(), RpMessage):
            out.append(ev)
        return out


def _read_message(r: Reader) -> RpMessage:
    # migration/migration.c: source_return_path_thread
    start = r.offset
    kind = r.be16()
    length = r.be16()
    if kind >= MIG_RP_MSG_MAX or kind == RpMsg.INVALID:
        raise RemoteProtocolError(
            f"RP: Received invalid message 0x{kind:04x} length 0x{length:04x}", offset=start)
    msg = RpMsg(kind)
    fixed = RP_MSG_LEN[msg]
    if (fixed is not None and length != fixed) or length > RP_MAX_LEN:
        # QEMU 7.2's words, including its missing space ("withincorrect")
        raise RemoteProtocolError(
            f"RP: Received '{msg.name}' message (0x{kind:04x}) withincorrect length {length} "
            f"expecting {fixed if fixed is not None else RP_MAX_LEN}", offset=start)
    try:
        body = r.take(length)
    except Truncated:
        raise RemoteProtocolError(
            f"RP: Failed reading data for message 0x{kind:04x} read {r.remaining()} "
            f"expected {length}", offset=start, errno=_errno.EIO) from None
    if msg is RpMsg.SHUT:
        return Shut(int.from_bytes(body, "big"), offset=start)
    if msg is RpMsg.PONG:
        return Pong(int.from_bytes(body, "big"), offset=start)
    if msg is RpMsg.RESUME_ACK:
        return ResumeAck(int.from_bytes(body, "big"), offset=start)
    if msg is RpMsg.REQ_PAGES:
        return ReqPages(int.from_bytes(body[:8], "big"), int.from_bytes(body[8:12], "big"),
                        offset=start)
    if msg is RpMsg.REQ_PAGES_ID:
        expected = 12 + 1 + (body[12] if length > 12 else 0)
        if length <= 12 or length != expected:
            raise RemoteProtocolError(
                f"RP: Req_Page_id with length {length} expecting {expected}", offset=start)
        return ReqPagesId(int.from_bytes(body[:8], "big"), int.from_bytes(body[8:12], "big"),
                          body[13:].decode("latin-1"), offset=start)
    # RECV_BITMAP: str8 name in the message, then the bitmap outside it
    if length < 1 or body[0] + 1 != length:
        raise RemoteProtocolError(f"RP: RECV_BITMAP with a bad block name length {length}",
                                  offset=start)
    block = body[1:].decode("latin-1")
    size = r.be64()
    if size % 8 or size > (1 << 40):
        raise RemoteProtocolError(
            f"ram_dirty_bitmap_reload: ramblock '{block}' bitmap size 0x{size:x} is not "
            f"a whole number of 64-bit words", offset=start)
    bitmap = r.take(size)
    end = r.be64()
    if end != RECV_BITMAP_ENDING:
        raise RemoteProtocolError(
            f"ram_dirty_bitmap_reload: ramblock '{block}' end mark incorrect: 0x{end:x}",
            offset=start)
    return RecvBitmap(block, bitmap, offset=start)
