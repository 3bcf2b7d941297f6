"""A multifd channel through the proxy: its MultifdInit, then packets, framed with the codec.

Strategy: with QEMU 7.2's `multifd` capability the source opens N more connections after
the main one (migration/multifd.c: multifd_save_setup), each starting with a 64-byte
MultiFDInit_t naming its channel id, then packets: a 1344-byte MultiFDPacket_t header and
its payload (facts M6/M7).  `MultifdFramer` walks them with the sans-IO codec
(`harness.protocol.multifd`: `MultifdInit.parse`, `PacketHeader.parse`, `payload_size`),
never decompressing or copying a page: two frames, MULTIFD_INIT (all header) and
MULTIFD_PACKET (header | payload), so `where: header|payload` means what it does for a
RAM page.  The flow is named after the init's id (`multifd-<id>`, the id QEMU's own
messages print), known once the first 64 bytes are in; until then the flow is
`multifd` and nothing is forwarded (the pump holds the bytes, bounded by one init).
The proxy does not know the channel count the destination was given nor its uuid: the
id is checked against the count the proxy was told (`--multifd N`), the uuid not at all.
A packet is forwarded once whole (at most 1344 + 2 x 512 KiB bytes held); an error
loses the framing, after which bytes pass through unchanged, as on the other flows.
Counters (packets, pages, SYNC packets, payload bytes) stay on the framer; the proxy
adds them up per channel for `query-proxy`.
"""

from __future__ import annotations

from harness.protocol import RemoteProtocolError
from harness.protocol.multifd import (
    HEADER_SIZE,
    INIT_SIZE,
    MultifdInit,
    PacketHeader,
)

from .framing import Frame, Framer, Framing, Recv

__all__ = ["MULTIFD", "MULTIFD_UNKNOWN", "MultifdFramer", "is_multifd", "multifd_flow",
           "multifd_flows"]

MULTIFD = "multifd"  # a multifd connection whose init has not arrived yet
MULTIFD_UNKNOWN = "multifd-unknown"  # one whose init could not be read (framing lost)


def multifd_flow(channel_id: int) -> str:
    return f"{MULTIFD}-{channel_id}"


def multifd_flows(channels: int) -> tuple[str, ...]:
    return tuple(multifd_flow(i) for i in range(channels))


def is_multifd(flow: str) -> bool:
    return flow == MULTIFD or flow.startswith(MULTIFD + "-")


class MultifdFramer(Framer):
    """Frames of one multifd connection: MULTIFD_INIT, then MULTIFD_PACKETs.

    `channels`: the multifd-channels the proxy was told; an init id beyond loses framing."""

    flow = MULTIFD

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.channel_id: int | None = None
        self.parsed = 0  # input offset of the first byte not framed yet
        self.packets = 0
        self.pages = 0
        self.syncs = 0
        self.payload_bytes = 0

    def receive_into(self, recv: Recv, size: int) -> int:
        """Bytes not framed yet stay held even when forwarded (see PreemptFramer)."""
        n = self._held.receive_into(recv, size, min(self._released, self.parsed))
        self.received += n
        return n

    def counters(self) -> dict[str, int]:
        return {"packets": self.packets, "pages": self.pages, "syncs": self.syncs,
                "payload-bytes": self.payload_bytes}

    def take(self) -> Framing:
        framing = Framing(boundary=self.received)
        if self.lost is not None:
            return framing
        try:
            self._walk(framing)
        except RemoteProtocolError as err:
            if self.channel_id is None:
                self.flow = MULTIFD_UNKNOWN
            self._lose(err.at(self.parsed), framing)
            return framing
        framing.boundary = self.parsed
        return framing

    def _walk(self, framing: Framing) -> None:
        if self.channel_id is None:
            if self.received < INIT_SIZE:
                return
            with self.view(0, INIT_SIZE) as raw:
                init = MultifdInit.unpack(raw)
            # the uuid is the destination's to judge: checked against itself here
            MultifdInit.parse(init.pack(), uuid=init.uuid, channels=self.channels)
            self.channel_id = init.channel_id
            self.flow = multifd_flow(init.channel_id)
            framing.frames.append(Frame("MULTIFD_INIT", 0, INIT_SIZE, INIT_SIZE, "multifd"))
            self.parsed = INIT_SIZE
        while self.received - self.parsed >= HEADER_SIZE:
            start = self.parsed
            with self.view(start, start + HEADER_SIZE) as raw:
                header = PacketHeader.unpack(raw)
                PacketHeader.parse(raw, blocks=None, channel=self.channel_id or 0,
                                   compression=header.compression or "none")
            end = start + HEADER_SIZE + header.payload_size
            if end > self.received:
                return
            framing.frames.append(Frame("MULTIFD_PACKET", start, start + HEADER_SIZE, end,
                                        "multifd", detail=_describe(header)))
            self.parsed = end
            self.packets += 1
            self.pages += header.normal_pages
            self.syncs += header.sync
            self.payload_bytes += header.payload_size


def _describe(header: PacketHeader) -> str:
    """"#24 47 pages ram SYNC": what a FAULT or WIRE record shows of a packet."""
    text = f"#{header.packet_num} {header.normal_pages} pages"
    if header.normal_pages:
        text += f" {header.ramblock}"
    return text + (" SYNC" if header.sync else "")
