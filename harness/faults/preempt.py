"""The postcopy-preempt channel: bare RAM page records, framed with the main stream's loader.

Strategy: with QEMU 7.2's `postcopy-preempt` the source opens a second connection right
after the main one (migration/postcopy-ram.c: postcopy_preempt_setup) that carries, once
postcopy runs, the pages the destination requested: RAM page records exactly as inside a
`ram` section (`be64 offset|flags`, u8 len + idstr, then 4096 bytes for PAGE or the fill
byte for ZERO) with no section header or footer, and one `be64 EOS` at the very end
(migration/ram.c: postcopy_preempt_shutdown_file).  `PreemptFramer` walks them with the
project's RAM loader in discard mode (`RamLoader.load` -> `ram_discard.load_discarding`:
QEMU's checks, each record located in `spans`), the same code that frames the records of
the main stream, so a page frame here is what a page frame is there.  The block list
comes from the main stream (its MEM_SIZE record): the loader is a fork of the main
decoder's, taken when the first bytes arrive (the channel is silent until the first
page request, long after MEM_SIZE), with no last block (every record on this channel
names its block: the sender resets its last block when it switches channel).
"""

from __future__ import annotations

from collections.abc import Callable

from harness.protocol import RamPages, RemoteProtocolError, StreamDecoder
from harness.protocol.ram import RamLoader
from harness.protocol.wire import Reader

from .framing import PREEMPT, Frame, Framer, Framing, Recv

__all__ = ["PreemptFramer", "preempt_loader"]

_EOS_RECORD = 8  # be64 RAM_SAVE_FLAG_EOS


def preempt_loader(main: StreamDecoder | None) -> RamLoader | None:
    """A discarding loader that knows the main stream's RAM blocks (None: none known yet)."""
    if main is None or not main.loader.block_lengths:
        return None
    loader = main.loader.fork()
    loader.last_block = None
    if not loader.discard:  # an analysis decoder keeps RAM: locate only, keep nothing here
        loader.discard = True
    return loader


class PreemptFramer(Framer):
    """Frames of one preempt connection: RAM_PAGE batches (`pages`) and RAM_EOS frames.

    `main`: called at the first bytes, the decoder of the main stream (for its blocks)."""

    flow = PREEMPT

    def __init__(self, main: Callable[[], StreamDecoder | None]) -> None:
        super().__init__()
        self._main = main
        self.loader: RamLoader | None = None
        self.parsed = 0  # input offset of the first record not framed yet
        self.eos = 0  # EOS records seen

    def receive_into(self, recv: Recv, size: int) -> int:
        """Bytes not framed yet stay held even when forwarded (a partial record may be
        forwarded after a quiet spell, and still be framed when it completes)."""
        n = self._held.receive_into(recv, size, min(self._released, self.parsed))
        self.received += n
        return n

    def take(self) -> Framing:
        framing = Framing(boundary=self.received)
        if self.lost is not None or self.parsed >= self.received:
            return framing
        if self.loader is None:
            self.loader = preempt_loader(self._main())
            if self.loader is None:
                self._lose(RemoteProtocolError(
                    "no RAM block list from the main stream (its MEM_SIZE record) to "
                    "frame the preempt channel with", offset=self.parsed), framing)
                return framing
        held = self._held
        reader = Reader(held.buf, self.parsed - held.base, held.end, held.base)
        try:
            self._walk(reader, framing)
        except RemoteProtocolError as err:
            self._lose(err, framing)
            return framing
        framing.boundary = self.parsed
        return framing

    def _walk(self, reader: Reader, framing: Framing) -> None:
        loader = self.loader
        assert loader is not None
        while True:
            events, eos = loader.load(reader, 0)
            framing.pages += [ev for ev in events if isinstance(ev, RamPages)]
            self.parsed = reader.offset
            if not eos:
                return
            self.eos += 1
            end = reader.offset
            framing.frames.append(Frame("RAM_EOS", end - _EOS_RECORD, end, end, "ram"))
            loader.last_block = None
            if reader.pos >= reader.end:
                return
