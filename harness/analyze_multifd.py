"""`harness analyze --multifd FILE...`: recorded multifd channels, placed in the main stream's RAM.

Strategy: with QEMU 7.2's `multifd`, zero pages stay on the main stream and every other
page travels in a multifd channel's packets (facts M9); the only order between the two is
the SYNC protocol (M10): before each RAM_SAVE_FLAG_EOS of the main stream, every channel
has sent one packet flagged SYNC, and the destination (ram.c: ram_load_precopy ->
multifd_recv_sync_main) waits for them at that EOS.  So the pages of a channel up to its
k-th SYNC packet belong to the RAM section that ends with the main stream's k-th RAM EOS,
and within one section a page is sent once (the dirty bitmap is synced between sections
only).  `MultifdReplay` does what the destination does: the main stream is decoded (its
zero pages land in RAM), and at each of its RAM EOS markers every channel is read up to its
next SYNC packet and those pages are written; a page sent again in a later section wins,
as on a real destination (M11: the same page may come more than once).  Packets after a
channel's last SYNC are applied at the end.  Each channel is read with the codec
(`harness.protocol.multifd.ChannelDecoder`: 7.2's checks and words, zlib/zstd inflated),
in chunks from an mmap; the compression method is the one the first packet with pages
names.  The files are input from anyone: a bad one is a ProtocolError naming the file.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

import numpy as np

from .protocol import ProtocolError
from .protocol.multifd import (
    HEADER_SIZE,
    INIT_SIZE,
    NEED_DATA,
    PAGE_SIZE,
    ChannelDecoder,
    MultifdInit,
    MultifdPacket,
    PacketHeader,
)

__all__ = ["MultifdReplay", "multifd_lines", "multifd_siblings"]

CHUNK = 4 << 20
MAX_CHANNELS = 256  # multifd-channels is a uint8: any id may be given


def multifd_siblings(stream: Path) -> list[Path]:
    """The proxy's stream.multifd-ID.bin files beside a stream.fwd.bin, by id."""
    found = []
    for path in stream.parent.glob("stream.multifd-*.bin"):
        tail = path.name[len("stream.multifd-"):-len(".bin")]
        if tail.isdigit() and path.is_file():
            found.append((int(tail), path))
    return [path for _, path in sorted(found)]


def compression_of(data: bytes | mmap.mmap) -> str:
    """The method the first packet with pages names ("none" when there is none)."""
    pos = INIT_SIZE
    while pos + HEADER_SIZE <= len(data):
        header = PacketHeader.unpack(data[pos:pos + HEADER_SIZE])
        if header.normal_pages:
            return header.compression or "none"
        pos += HEADER_SIZE  # an empty packet has no payload
    return "none"


class _Channel:
    """One recorded channel, read packet by packet."""

    def __init__(self, path: Path, data: bytes | mmap.mmap,
                 blocks: Mapping[str, int]) -> None:
        self.path = path
        self.data = data
        self.fed = 0
        self.compression = compression_of(data)
        self.decoder = ChannelDecoder(compression=self.compression, channels=MAX_CHANNELS,
                                      blocks=blocks)
        self.id: int | None = None
        self.packets = self.pages = self.syncs = 0
        self.consumed = 0  # bytes of whole frames read
        self.ended = False  # no whole packet left

    def next_packet(self) -> MultifdPacket | None:
        while not self.ended:
            try:
                event = self.decoder.next_event()
            except ProtocolError as err:
                raise err.with_context(f"in the multifd channel capture {self.path}") from None
            if isinstance(event, MultifdInit):
                self.id = event.channel_id
                self.consumed = INIT_SIZE
            elif isinstance(event, MultifdPacket):
                self.consumed += HEADER_SIZE + event.header.payload_size
                self.packets += 1
                self.pages += event.header.normal_pages
                self.syncs += event.header.sync
                return event
            elif event is NEED_DATA:
                if self.fed >= len(self.data):
                    self.ended = True
                    break
                self.decoder.receive_data(self.data[self.fed:self.fed + CHUNK])
                self.fed += CHUNK
        return None

    def summary(self) -> dict[str, Any]:
        return {"file": str(self.path), "id": self.id, "size": len(self.data),
                "compression": self.compression, "packets": self.packets,
                "pages": self.pages, "syncs": self.syncs,
                "trailing": len(self.data) - self.consumed}


class MultifdReplay:
    """The channels of one recording, applied to `ram` at each main RAM EOS (`section_end`)
    and at the end (`finish`).  Use as a context manager (the files are mmapped)."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._stack = ExitStack()
        self._channels: list[_Channel] | None = None
        self.sections = 0
        self.blocks: dict[str, int] = {}  # pages written per block

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channels = None
        self._stack.close()

    def _open(self, lengths: Mapping[str, int]) -> list[_Channel]:
        if self._channels is None:
            self._channels = [_Channel(p, self._map(p), dict(lengths)) for p in self.paths]
        return self._channels

    def _map(self, path: Path) -> bytes | mmap.mmap:
        fh = self._stack.enter_context(path.open("rb"))
        if path.stat().st_size == 0:
            return b""
        return self._stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))

    def section_end(self, ram: Mapping[str, np.ndarray], lengths: Mapping[str, int]) -> None:
        """The main stream's RAM EOS: every channel's pages up to its next SYNC packet."""
        self.sections += 1
        for channel in self._open(lengths):
            while (packet := channel.next_packet()) is not None:
                self._place(ram, packet)
                if packet.header.sync:
                    break

    def finish(self, ram: Mapping[str, np.ndarray], lengths: Mapping[str, int]) -> None:
        """After the main stream: what the channels carried after their last SYNC."""
        for channel in self._open(lengths):
            while (packet := channel.next_packet()) is not None:
                self._place(ram, packet)

    def _place(self, ram: Mapping[str, np.ndarray], packet: MultifdPacket) -> None:
        header = packet.header
        if not header.normal_pages:
            return
        mem = ram[header.ramblock]
        pages = mem[:len(mem) // PAGE_SIZE * PAGE_SIZE].reshape(-1, PAGE_SIZE)
        index = np.asarray(header.offsets, dtype=np.int64) // PAGE_SIZE
        pages[index] = np.frombuffer(packet.pages, np.uint8).reshape(-1, PAGE_SIZE)
        self.blocks[header.ramblock] = self.blocks.get(header.ramblock, 0) + len(index)

    def summary(self) -> dict[str, Any]:
        """`--json`'s `multifd`: per channel and in all (bytes: the files' sizes)."""
        channels = [c.summary() for c in self._channels or ()]
        return {"channels": channels, "packets": sum(c["packets"] for c in channels),
                "pages": sum(c["pages"] for c in channels),
                "syncs": sum(c["syncs"] for c in channels),
                "bytes": sum(c["size"] for c in channels),
                "ram-sections": self.sections, "pages-placed": dict(self.blocks)}


def multifd_lines(summary: Mapping[str, Any]) -> list[str]:
    """The channels in a few lines (`harness analyze` without --json)."""
    lines = [(f"multifd: {len(summary['channels'])} channels, {summary['packets']} packets, "
             f"{summary['pages']} pages, {summary['syncs']} SYNC packets, "
             f"{summary['bytes']} bytes; applied at {summary['ram-sections']} RAM EOS")]
    for c in summary["channels"]:
        trailing = f", {c['trailing']} bytes after the last whole packet" if c["trailing"] \
            else ""
        lines.append(f"  channel {c['id']}: {c['file']}: {c['size']} bytes, {c['packets']} "
                     f"packets, {c['pages']} pages, {c['syncs']} SYNC, compression "
                     f"{c['compression']}{trailing}")
    return lines
