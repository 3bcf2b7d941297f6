"""multifd channels as QEMU 7.2 frames them: the init packet, packet headers, compression.

Strategy: sans-IO, like the rest of `harness.protocol`.  A multifd channel is a TCP (or
unix) connection of its own that starts with one 64-byte `MultifdInit` and then carries
packets: a fixed 1344-byte `PacketHeader` (the 128-entry offset array is always sent at
full length) followed by the payload -- `normal_pages` raw pages, or `next_packet_size`
bytes of one per-channel zlib/zstd stream that is sync-flushed at the end of each packet
and never finished.  `PacketHeader.parse` checks what 7.2's receiver checks, in 7.2's
words (migration/multifd.c: multifd_recv_initial_packet, multifd_recv_unfill_packet;
multifd-zlib.c / multifd-zstd.c: *_recv_pages); stale fields of an empty packet (the
ramblock name, next_packet_size, offsets past normal_pages: facts M8) are ignored as 7.2
ignores them.  `ChannelDecoder` turns the bytes of one channel into events, bounded by
one header plus one payload.  Layouts: include/.../multifd.h and facts M6/M7 of
reference/qemu-7.2-production-features.md.
"""

from __future__ import annotations

import struct
import uuid as _uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import LocalProtocolError, RemoteProtocolError

try:  # zstd is served by the PyPI `zstandard` package; without it only none and zlib
    import zstandard as _zstd
except ImportError:  # pragma: no cover - the package is a dependency
    _zstd = None

MAGIC = 0x11223344
VERSION = 1
INIT_SIZE = 64
PAGE_SIZE = 4096
#: MULTIFD_PACKET_SIZE (512 KiB) / target page size: the offset array's fixed length
PAGES_PER_PACKET = 128
HEADER_FIXED = 320
HEADER_SIZE = HEADER_FIXED + 8 * PAGES_PER_PACKET  # 1344
RAMBLOCK_LEN = 256
FLAG_SYNC = 0x1
COMPRESSION_MASK = 0xE
COMPRESSION_FLAGS = {"none": 0x0, "zlib": 0x2, "zstd": 0x4}
#: what a compressed payload may be at most (7.2's zlib/zstd buffers: 2 x packet size)
MAX_COMPRESSED = 2 * PAGES_PER_PACKET * PAGE_SIZE

_INIT = struct.Struct(">II16sB7x32x")
_FIXED = struct.Struct(">IIIIIIQ32x256s")
_OFFSETS = struct.Struct(f">{PAGES_PER_PACKET}Q")


def compressions() -> tuple[str, ...]:
    """The multifd-compression values this installation serves (zstd needs `zstandard`)."""
    return ("none", "zlib", "zstd") if _zstd is not None else ("none", "zlib")


class MultifdError(RemoteProtocolError):
    """A multifd channel carried something QEMU 7.2's receiver refuses (its words)."""


def _uuid_text(raw: bytes) -> str:
    return str(_uuid.UUID(bytes=bytes(raw)))


@dataclass(frozen=True)
class MultifdInit:
    """MultiFDInit_t: the first 64 bytes of a multifd channel (facts M6)."""

    channel_id: int
    uuid: bytes = bytes(16)
    magic: int = MAGIC
    version: int = VERSION

    def pack(self) -> bytes:
        if not 0 <= self.channel_id <= 255 or len(self.uuid) != 16:
            raise LocalProtocolError(f"multifd: cannot send channel id {self.channel_id}",
                                     qemu=False)
        return _INIT.pack(self.magic, self.version, self.uuid, self.channel_id)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> MultifdInit:
        """The fields, unchecked (the proxy and analyze look without judging)."""
        magic, version, raw_uuid, channel_id = _INIT.unpack(bytes(data[:INIT_SIZE]))
        return cls(channel_id, raw_uuid, magic, version)

    @classmethod
    def parse(cls, data: bytes | memoryview, *, uuid: bytes = bytes(16),
              channels: int) -> MultifdInit:
        """multifd.c: multifd_recv_initial_packet, in 7.2's words.  One difference on
        purpose: 7.2 checks `id > channels` (an id equal to the channel count indexes
        past its array, and the message prints the versions); this refuses
        `id >= channels` and says so."""
        init = cls.unpack(data)
        if init.magic != MAGIC:
            raise MultifdError(f"multifd: received packet magic {init.magic:x} expected {MAGIC:x}")
        if init.version != VERSION:
            raise MultifdError(f"multifd: received packet version {init.version} "
                               f"expected {VERSION}")
        if init.uuid != bytes(uuid):
            raise MultifdError(f"multifd: received uuid '{_uuid_text(init.uuid)}' and expected "
                               f"uuid '{_uuid_text(uuid)}' for channel {init.channel_id}")
        if init.channel_id >= channels:
            raise MultifdError(f"multifd: received channel id {init.channel_id} but only "
                               f"{channels} channels are set up (multifd-channels)", qemu=False)
        return init


@dataclass(frozen=True)
class PacketHeader:
    """MultiFDPacket_t (facts M7): 1344 bytes, then `payload_size` bytes."""

    flags: int
    normal_pages: int
    next_packet_size: int
    packet_num: int
    ramblock: str = ""
    offsets: Sequence[int] = field(default=())
    pages_alloc: int = PAGES_PER_PACKET
    magic: int = MAGIC
    version: int = VERSION

    @property
    def sync(self) -> bool:
        return bool(self.flags & FLAG_SYNC)

    @property
    def compression(self) -> str | None:
        """The method the flags name (None for a combination no method has)."""
        bits = self.flags & COMPRESSION_MASK
        return next((name for name, flag in COMPRESSION_FLAGS.items() if flag == bits), None)

    @property
    def payload_size(self) -> int:
        """Bytes after the header: nothing for an empty packet, raw pages without
        compression, else next_packet_size (multifd.c: multifd_recv_thread and the
        recv_pages methods read nothing when normal_pages is 0)."""
        if self.normal_pages == 0:
            return 0
        if self.flags & COMPRESSION_MASK:
            return self.next_packet_size
        return self.normal_pages * PAGE_SIZE

    @property
    def wire_bytes(self) -> int:
        """What 7.2 adds to `ram.multifd-bytes` for this packet: header plus the
        uncompressed pages, even when compressed (facts M15)."""
        return HEADER_SIZE + self.normal_pages * PAGE_SIZE

    def pack(self) -> bytes:
        name = self.ramblock.encode()
        if len(name) >= RAMBLOCK_LEN or len(self.offsets) > PAGES_PER_PACKET:
            raise LocalProtocolError("multifd: packet does not fit its header", qemu=False)
        offsets = list(self.offsets) + [0] * (PAGES_PER_PACKET - len(self.offsets))
        return (_FIXED.pack(self.magic, self.version, self.flags, self.pages_alloc,
                            self.normal_pages, self.next_packet_size, self.packet_num, name)
                + _OFFSETS.pack(*offsets))

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> PacketHeader:
        """The fields, unchecked; offsets past normal_pages (stale in 7.2) dropped."""
        raw = bytes(data[:HEADER_SIZE])
        (magic, version, flags, pages_alloc, normal, next_size, num,
         name) = _FIXED.unpack_from(raw)
        offsets = _OFFSETS.unpack_from(raw, HEADER_FIXED)[:min(normal, PAGES_PER_PACKET)]
        ramblock = name.split(b"\0", 1)[0].decode("latin-1")
        return cls(flags, normal, next_size, num, ramblock, offsets, pages_alloc, magic, version)

    @classmethod
    def parse(cls, data: bytes | memoryview, *, blocks: Mapping[str, int] | None,
              channel: int, compression: str = "none") -> PacketHeader:
        """multifd.c: multifd_recv_unfill_packet, then the method's flags check, in
        7.2's order and words.  `blocks` maps idstr -> used_length (None: not checked)."""
        header = cls.unpack(data)
        if header.magic != MAGIC:
            raise MultifdError(f"multifd: received packet magic {header.magic:x} and expected "
                               f"magic {MAGIC:x}")
        if header.version != VERSION:
            raise MultifdError(f"multifd: received packet version {header.version} and "
                               f"expected version {VERSION}")
        if header.pages_alloc > PAGES_PER_PACKET:
            raise MultifdError(f"multifd: received packet with size {header.pages_alloc} and "
                               f"expected a size of {PAGES_PER_PACKET}")
        if header.normal_pages > header.pages_alloc:
            raise MultifdError(f"multifd: received packet with {header.normal_pages} pages and "
                               f"expected maximum pages are {header.pages_alloc}")
        if header.normal_pages:
            header._check_pages(blocks)
            if header.payload_size > MAX_COMPRESSED:
                raise MultifdError(f"multifd {channel}: packet of {header.payload_size} bytes "
                                   f"exceeds {MAX_COMPRESSED}", qemu=False)
            # the method's recv_pages checks the flags, and runs only for a packet with
            # pages: 7.2's empty SYNC packets carry no compression bit (multifd.c:
            # multifd_send_thread calls send_prepare, which sets it, only then)
            bits, expected = header.flags & COMPRESSION_MASK, COMPRESSION_FLAGS[compression]
            if bits != expected:
                raise MultifdError(f"multifd {channel}: flags received {bits:x} flags "
                                   f"expected {expected:x}")
        return header

    def _check_pages(self, blocks: Mapping[str, int] | None) -> None:
        if blocks is None:
            return
        if self.ramblock not in blocks:
            raise MultifdError(f"multifd: unknown ram block {self.ramblock}")
        used = blocks[self.ramblock]
        for offset in self.offsets:
            if offset > used - PAGE_SIZE or offset % PAGE_SIZE:
                raise MultifdError(f"multifd: offset too long {offset} (max {used:#x})")


class PageCompressor:
    """One channel's compression stream (multifd-zlib.c / multifd-zstd.c, send side):
    created once, each packet's pages go in and the stream is sync-flushed, never ended."""

    def __init__(self, method: str, level: int = 1) -> None:
        self.method = method
        if method == "zlib":
            self._z: Any = zlib.compressobj(level)
        elif method == "zstd":
            if _zstd is None:
                raise LocalProtocolError("multifd-compression zstd needs the zstandard package",
                                         qemu=False)
            self._z = _zstd.ZstdCompressor(level=level).compressobj()
        elif method != "none":
            raise LocalProtocolError(f"unknown multifd compression {method!r}", qemu=False)

    @property
    def flag(self) -> int:
        return COMPRESSION_FLAGS[self.method]

    def compress(self, pages: Iterable[bytes | memoryview]) -> bytes:
        if self.method == "none":
            return b"".join(pages)
        out = [self._z.compress(page) for page in pages]
        if self.method == "zlib":
            out.append(self._z.flush(zlib.Z_SYNC_FLUSH))
        else:
            out.append(self._z.flush(_zstd.COMPRESSOBJ_FLUSH_BLOCK))
        return b"".join(out)


class PageDecompressor:
    """One channel's decompression stream (multifd-zlib.c / multifd-zstd.c, recv side)."""

    def __init__(self, method: str, channel: int) -> None:
        self.method = method
        self.channel = channel
        if method == "zlib":
            self._z: Any = zlib.decompressobj()
        elif method == "zstd":
            if _zstd is None:
                raise LocalProtocolError("multifd-compression zstd needs the zstandard package",
                                         qemu=False)
            self._z = _zstd.ZstdDecompressor().decompressobj()

    def decompress(self, payload: bytes | memoryview, normal_pages: int) -> bytes:
        """The packet's pages, `normal_pages` x 4096 bytes, or QEMU's error."""
        expected = normal_pages * PAGE_SIZE
        if self.method == "none":
            out = bytes(payload)
        else:
            try:
                out = self._inflate(bytes(payload), expected)
            except Exception as exc:  # zlib.error, zstandard.ZstdError
                word = "inflate returned -3 instead of Z_OK" if self.method == "zlib" \
                    else f"decompressStream returned {exc}"
                raise MultifdError(f"multifd {self.channel}: {word}") from exc
        if len(out) != expected:
            raise MultifdError(f"multifd {self.channel}: packet size received {len(out)} size "
                               f"expected {expected}")
        return out

    def _inflate(self, data: bytes, expected: int) -> bytes:
        if self.method == "zlib":
            return self._z.decompress(data, expected)
        return self._z.decompress(data)[:expected + 1]


@dataclass(frozen=True)
class MultifdPacket:
    """A packet with its pages, uncompressed (empty for a packet without pages)."""

    header: PacketHeader
    pages: bytes


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class ChannelDecoder:
    """The bytes of one multifd channel -> MultifdInit, then MultifdPacket events.

    Holds at most one header and one payload; after an error it refuses further use."""

    def __init__(self, *, compression: str = "none", uuid: bytes = bytes(16),
                 channels: int, blocks: Mapping[str, int] | None = None) -> None:
        self._compression = compression
        self._uuid = uuid
        self._channels = channels
        self._blocks = blocks
        self._buffer = bytearray()
        self._offset = 0  # bytes consumed before the buffer's start
        self._init: MultifdInit | None = None
        self._header: PacketHeader | None = None
        self._decompressor: PageDecompressor | None = None
        self._error: MultifdError | None = None

    @property
    def channel_id(self) -> int | None:
        return None if self._init is None else self._init.channel_id

    @property
    def needed(self) -> int:
        """Bytes still missing before the next event."""
        if self._init is None:
            want = INIT_SIZE
        elif self._header is None:
            want = HEADER_SIZE
        else:
            want = self._header.payload_size
        return max(0, want - len(self._buffer))

    def receive_data(self, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    def next_event(self) -> MultifdInit | MultifdPacket | _NeedData:
        if self._error is not None:
            raise self._error
        try:
            return self._step()
        except MultifdError as exc:
            self._error = exc.at(self._offset)
            raise

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._offset += n
        return chunk

    def _step(self) -> MultifdInit | MultifdPacket | _NeedData:
        if self.needed:
            return NEED_DATA
        if self._init is None:
            self._init = MultifdInit.parse(self._take(INIT_SIZE), uuid=self._uuid,
                                           channels=self._channels)
            self._decompressor = PageDecompressor(self._compression, self._init.channel_id)
            return self._init
        if self._header is None:
            self._header = PacketHeader.parse(self._buffer, blocks=self._blocks,
                                              channel=self._init.channel_id,
                                              compression=self._compression)
            self._take(HEADER_SIZE)
            if self.needed:
                return NEED_DATA
        header, self._header = self._header, None
        payload = self._take(header.payload_size)
        assert self._decompressor is not None
        pages = self._decompressor.decompress(payload, header.normal_pages) \
            if header.normal_pages else b""
        return MultifdPacket(header, pages)
