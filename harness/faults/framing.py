"""Where each frame of the migration stream and of the return path lies, from the codec.

Strategy: the proxy never parses bytes itself.  `StreamFramer` feeds the source ->
destination bytes to the project's `StreamDecoder` -- RAM in discard mode (pages are
checked and located, never kept) -- and turns its events, which all carry their absolute
offset, into `Frame`s: name, start, where the payload starts, end, PACKAGED depth, and
for a section its idstr.  A real machine's device sections are read field by field with
the `MachineLayout` the proxy was given (harness.qemu.layout: QEMU's own description of
them, learned from a probe), so every section ends exactly where QEMU's loader says; a
device or subsection the layout does not describe loses the framing, with its name and
offset.  Without a layout, device bodies nobody described are skipped by searching for
their footer, a guess that `guessed` counts.  A precopy stream's own description
(VMDESCRIPTION, after EOF; found in the bytes passed through when the framing was lost)
is handed to `learn`, so the layout grows by what this stream showed.  Page records
stay numpy arrays: a batch is the codec's `RamPages` with its `spans`.  The `block`
section's records (block migration) are frames of their own: BLOCK_CHUNK, BLOCK_PROGRESS,
BLOCK_EOS.
`ReturnPathFramer` does the same for destination -> source bytes with
`ReturnPathDecoder`.  Both say how far the input is made of complete frames
(`Framing.boundary`); the proxy forwards up to there, so a frame is whole, and known,
before its first byte leaves (a PACKAGED blob as a whole: QEMU's loader reads it in one
go, and its sender writes it in one go).

The shape of a frame (header | payload): a section is its header | its device payload,
or for `ram` its first record (the rest of a pass streams for as long as the pass
lasts); a command is `08 cmd len` | its payload, except PACKAGED whose header is the
command with its length and whose payload is the blob; a page record is its be64 word
(and block name) | the page (or fill byte, delta, compressed data); a block chunk is its
be64 word and device name | its 1 MiB (nothing for a zero chunk); a return-path
message is `type len` | its payload (RECV_BITMAP's bitmap included).

A decode error stops nothing: the framer says "framing lost at offset N: ..." and from
then on passes bytes through uncounted.  A new connection that does not start with the
file magic continues the previous stream (postcopy recovery): its decoder is the
previous one's `successor()`, which knows the section ids and RAM blocks already seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.protocol import (
    Command,
    Configuration,
    DeviceState,
    EndOfStream,
    LocalProtocolError,
    PackagedEnd,
    PackagedStart,
    RamEos,
    RamMemSize,
    RamPages,
    RemoteProtocolError,
    ReturnPathDecoder,
    RpMessage,
    SectionFooter,
    SectionHeader,
    SectionType,
    StreamDecoder,
    StreamHeader,
    VmDescription,
)
from harness.protocol.block import CHUNK, BlockChunk, BlockEos, BlockProgress
from harness.protocol.commands import Packaged
from harness.protocol.events import Event
from harness.qemu.layout import LayoutError, MachineLayout, find_trailer, load_vmdesc

__all__ = ["MAIN", "PREEMPT", "RETURN_PATH", "Frame", "Framer", "Framing", "Recv",
           "ReturnPathFramer", "StreamFramer", "StreamMemory", "frame_flows", "lost_message"]

MAIN = "main"  # the source -> destination flow
RETURN_PATH = "return-path"  # the destination -> source flow
PREEMPT = "preempt"  # postcopy-preempt: the second source -> destination connection
_QEVM_FIRST_BYTE = 0x51  # "Q" of QEMU_VM_FILE_MAGIC
_SECTION_NAMES = {SectionType.SECTION_START: "SECTION_START",
                  SectionType.SECTION_PART: "SECTION_PART",
                  SectionType.SECTION_END: "SECTION_END",
                  SectionType.SECTION_FULL: "SECTION_FULL"}
#: return-path messages that do not exist on the main stream (RECV_BITMAP is on both)
_RETURN_PATH_ONLY = ("SHUT", "PONG", "REQ_PAGES_ID", "REQ_PAGES", "RESUME_ACK")
_TAIL = 16 << 20  # bytes kept after a loss of framing, to find the stream's own vmdesc
Learn = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: `[start, payload)` is its header, `[payload, end)` its payload.

    `kind`: "stream" (HEADER, CONFIGURATION, EOF, VMDESCRIPTION), "section", "footer",
    "ram" (RAM_MEM_SIZE, RAM_EOS), "command" (named by its MIG_CMD) or "message" (a
    return-path message).  `package` is the start of the PACKAGED frame around it (-1:
    none).  `detail` is a section's idstr."""

    name: str
    start: int
    payload: int
    end: int
    kind: str
    depth: int = 0
    package: int = -1
    detail: str = ""

    def part(self, where: str) -> tuple[int, int]:
        """[start, end) of the header or the payload."""
        return (self.start, self.payload) if where == "header" else (self.payload, self.end)


@dataclass
class Framing:
    """What one feed revealed: frames and page batches in stream order, and how far the
    input is made of whole frames.  `lost` is set once, when framing is lost."""

    frames: list[Frame] = field(default_factory=list)
    pages: list[RamPages] = field(default_factory=list)
    boundary: int = 0
    lost: str | None = None


def frame_flows(name: str) -> tuple[str, ...]:
    """The flows on which frames named `name` travel."""
    if name in _RETURN_PATH_ONLY:
        return (RETURN_PATH,)
    if name == "RECV_BITMAP":
        return (MAIN, RETURN_PATH)
    return (MAIN,)


def lost_message(err: RemoteProtocolError, fallback: int) -> str:
    offset = err.offset if err.offset is not None else fallback
    words = " / ".join((err.message, *err.context))
    return f"framing lost at offset {offset}: {words}"


Recv = Callable[[memoryview], int]


class _Held:
    """Bytes kept for forwarding when no decoder holds them: `buf[:end]` is the input
    from absolute offset `base` on.  Received into in place; moved down only when room is
    needed and the forwarded bytes can go."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 16)
        self.base = 0
        self.end = 0

    def receive_into(self, recv: Recv, size: int, keep_from: int) -> int:
        if self.end + size > len(self.buf):
            drop = min(max(0, keep_from - self.base), self.end)
            if drop:
                self.buf[:self.end - drop] = self.buf[drop:self.end]
                self.base += drop
                self.end -= drop
            if self.end + size > len(self.buf):
                self.buf.extend(bytes(self.end + size - len(self.buf)))
        with memoryview(self.buf) as whole, whole[self.end:self.end + size] as window:
            n = recv(window) or 0
        self.end += n
        return n

    def view(self, start: int, end: int) -> memoryview:
        with memoryview(self.buf) as whole:
            return whole[start - self.base:end - self.base]


class Framer:
    """A flow's framer (abstract): receive, `take()` the frames, `view()` held bytes."""

    flow = MAIN

    def __init__(self) -> None:
        self.received = 0  # input bytes so far
        self.ended = False
        self.lost: str | None = None
        self._held = _Held()
        self._released = 0  # everything before this was forwarded (or decided)

    def receive_into(self, recv: Recv, size: int) -> int:
        """Read once from `recv` into the framer's buffer; 0 = end of input."""
        n = self._held.receive_into(recv, size, self._released)
        self.received += n
        if n and self.lost is None:
            self._feed(self._held.view(self.received - n, self.received))
        return n

    def release(self, upto: int) -> None:
        """Everything before `upto` has been forwarded: its bytes may go."""
        self._released = max(self._released, upto)

    def view(self, start: int, end: int) -> memoryview:
        """The input bytes [start, end) (release the view before the next receive)."""
        return self._held.view(start, end)

    def end_of_input(self) -> None:
        """The input ended.  Nothing to decode: a connection may end inside a frame (a
        cut, a reset, a peer killed), which says nothing about the framing; the bytes of
        that last partial frame are forwarded as they are."""
        self.ended = True

    def take(self) -> Framing:
        raise NotImplementedError

    def _feed(self, data: memoryview) -> None:
        raise NotImplementedError

    def _lose(self, err: RemoteProtocolError, framing: Framing) -> None:
        self.lost = framing.lost = lost_message(err, self.received)
        framing.boundary = self.received


class ReturnPathFramer(Framer):
    """Frames of the destination -> source bytes (`ReturnPathDecoder`)."""

    flow = RETURN_PATH

    def __init__(self) -> None:
        super().__init__()
        self.decoder = ReturnPathDecoder()

    def _feed(self, data: memoryview) -> None:
        self.decoder.receive_data(bytes(data))

    def take(self) -> Framing:
        framing = Framing(boundary=self.received)
        if self.lost is not None:
            return framing
        decoder = self.decoder
        try:
            while isinstance(message := decoder.next_event(), RpMessage):
                start = message.offset
                framing.frames.append(Frame(message.msg.name, start, start + 4, decoder.offset,
                                            "message"))
        except RemoteProtocolError as err:
            self._lose(err, framing)
            return framing
        framing.boundary = decoder.offset
        return framing


class StreamMemory:
    """What the sessions of one proxy share: the decoder of the stream the latest
    connection carried (a connection that starts without the file magic continues it),
    the machine layout new streams are framed with, and who learns from a stream's vmdesc."""

    def __init__(self, layout: MachineLayout | None = None, learn: Learn | None = None
                 ) -> None:
        self.decoder: StreamDecoder | None = None
        self.layout = layout
        self.learn = learn

    def new_decoder(self) -> StreamDecoder:
        if self.layout is None:
            return StreamDecoder(ram="discard", skip_unknown_devices=True)
        return StreamDecoder(ram="discard", devices=self.layout.devices())


class StreamFramer(Framer):
    """Frames of the source -> destination bytes (`StreamDecoder`, RAM discarded).

    `memory`: where the stream of an earlier connection is remembered (and this one's
    will be)."""

    flow = MAIN

    def __init__(self, memory: StreamMemory | None = None) -> None:
        super().__init__()
        self.memory = memory or StreamMemory()
        self.decoder: StreamDecoder | None = None
        self.continued = False  # True: this connection continues the previous stream
        self._lost_at: int | None = None
        self._packages: list[int] = []  # starts of the PACKAGED frames we are inside
        self._pending_package: tuple[int, int] | None = None  # (start, blob length)
        self._section: SectionHeader | None = None  # waiting for its payload to show
        self._waiting: list[tuple[str, int, int, str, str]] = []  # end = next offset
        self.guessed = 0  # device sections skipped to a footer found by searching
        self._tail: bytearray | None = None  # after a loss: the last bytes, for the vmdesc

    # ------------------------------------------------------------------ input
    def receive_into(self, recv: Recv, size: int) -> int:
        decoder = self.decoder
        if decoder is None or self.lost is not None:
            n = super().receive_into(recv, size)  # first bytes, or passing through
            if self._tail is not None and n:
                self._keep_tail(self._held.view(self.received - n, self.received))
            return n
        if self._held.end:
            self._held = _Held()  # the first bytes: the decoder holds them too
        n = decoder.receive_into(recv, size)
        self.received += n
        return n

    def _feed(self, data: memoryview) -> None:
        """Only for the first bytes: they say which decoder reads this connection; from
        then on the decoder's buffer holds the input (from offset 0)."""
        if self.decoder is None:
            self.decoder = self.memory.decoder = self._new_decoder(data[0])
            self.decoder.retain(self._released)  # what is not forwarded stays held
        self.decoder.receive_data(data)

    def _new_decoder(self, first: int) -> StreamDecoder:
        previous = self.memory.decoder
        if previous is not None and first != _QEVM_FIRST_BYTE:
            try:
                decoder = previous.successor()
            except RemoteProtocolError:
                pass
            else:
                self.continued = True
                return decoder
        return self.memory.new_decoder()

    def _held_tail(self, decoder: StreamDecoder) -> bytearray:
        """The input the decoder still holds at a loss (its last _TAIL bytes)."""
        try:
            with decoder.buffered(max(self._released, self.received - _TAIL),
                                  self.received) as view:
                return bytearray(view)
        except LocalProtocolError:
            return bytearray()

    def _keep_tail(self, data: memoryview) -> None:
        tail = self._tail
        assert tail is not None
        tail += data
        if len(tail) > _TAIL:
            del tail[:len(tail) - _TAIL]

    def end_of_input(self) -> None:
        """Also: after a loss of framing, look for the stream's vmdesc in its tail."""
        super().end_of_input()
        tail, self._tail = self._tail, None
        if tail and self.memory.learn is not None:
            trailer = find_trailer(bytes(tail))
            if trailer is not None:
                try:
                    self.memory.learn(load_vmdesc(trailer))
                except LayoutError:
                    pass

    def release(self, upto: int) -> None:
        super().release(upto)
        if self.decoder is not None:
            self.decoder.retain(self._released)

    def view(self, start: int, end: int) -> memoryview:
        if self.decoder is not None and (self._lost_at is None or start < self._lost_at):
            return self.decoder.buffered(start, end)
        return super().view(start, end)

    # ------------------------------------------------------------------ frames
    def take(self) -> Framing:
        framing = Framing(boundary=self.received)
        decoder = self.decoder
        if decoder is None or self.lost is not None:
            return framing
        try:
            while isinstance(event := decoder.next_event(), Event):
                self._translate(event, framing)
        except RemoteProtocolError as err:
            self._lose(err, framing)
            self._lost_at = self.received  # the decoder holds what came before, we the rest
            self._held = _Held()
            self._held.base = self.received
            if self.memory.learn is not None and not self.continued:
                self._tail = self._held_tail(decoder)
            return framing
        self._close_waiting(decoder.offset, framing)
        framing.boundary = decoder.offset
        if self._pending_package is not None:
            framing.boundary = min(framing.boundary, self._pending_package[0])
        if self._section is not None:
            framing.boundary = min(framing.boundary, self._section.offset)
        return framing

    def _frame(self, framing: Framing, name: str, start: int, payload: int, end: int,
               kind: str, detail: str = "") -> None:
        framing.frames.append(Frame(name, start, payload, end, kind, len(self._packages),
                                    self._packages[-1] if self._packages else -1, detail))

    def _close_waiting(self, end: int, framing: Framing) -> None:
        for name, start, payload, kind, detail in self._waiting:
            self._frame(framing, name, start, payload, end, kind, detail)
        self._waiting.clear()

    def _translate(self, event: Event, framing: Framing) -> None:
        if self._waiting:
            self._close_waiting(event.offset, framing)
        start = event.offset
        if isinstance(event, RamPages):
            self._open_ram_section(framing, int(event.spans[0, 2]) if event.spans is not None
                                   else start)
            framing.pages.append(event)
        elif isinstance(event, Command):
            self._command(event, framing)
        elif isinstance(event, SectionHeader):
            self._section = event
        elif isinstance(event, DeviceState):
            header = self._section
            self._section = None
            self.guessed += event.state is None
            if header is not None:
                self._frame(framing, _SECTION_NAMES[header.type], header.offset, start,
                            start + event.size, "section", header.idstr)
        elif isinstance(event, SectionFooter):
            if event.has_footer:
                self._frame(framing, "SECTION_FOOTER", start, start + 5, start + 5, "footer",
                            event.idstr)
        elif isinstance(event, RamEos):
            self._open_ram_section(framing, start + 8)
            self._frame(framing, "RAM_EOS", start, start + 8, start + 8, "ram")
        elif isinstance(event, (BlockChunk, BlockProgress, BlockEos)):
            self._block_record(event, framing)
        elif isinstance(event, RamMemSize):
            self._open_ram_section(framing, None)
            self._waiting.append(("RAM_MEM_SIZE", start, start + 8, "ram", ""))
        else:
            self._stream_event(event, framing)

    def _block_record(self, event: BlockChunk | BlockProgress | BlockEos,
                      framing: Framing) -> None:
        """A record of the `block` section; the first one is its section's payload."""
        start, header = event.offset, event.offset + 8
        if isinstance(event, BlockChunk):
            header += 1 + len(event.device.encode("latin-1"))
            end, name = header + (0 if event.zero else CHUNK), "BLOCK_CHUNK"
        else:
            end, name = header, "BLOCK_PROGRESS" if isinstance(event, BlockProgress) \
                else "BLOCK_EOS"
        self._open_ram_section(framing, end)
        self._frame(framing, name, start, header, end, "block",
                    event.device if isinstance(event, BlockChunk) else "")

    def _open_ram_section(self, framing: Framing, first_record_end: int | None) -> None:
        """The `ram` section header before this record: its payload is this first record."""
        header = self._section
        if header is None:
            return
        self._section = None
        name = _SECTION_NAMES[header.type]
        header_end = header.offset + _section_header_length(header)
        if first_record_end is None:  # MEM_SIZE: ends where the next record starts
            self._waiting.append((name, header.offset, header_end, "section", header.idstr))
        else:
            self._frame(framing, name, header.offset, header_end, first_record_end, "section",
                        header.idstr)

    def _command(self, command: Command, framing: Framing) -> None:
        start = command.offset
        if isinstance(command, Packaged):
            self._pending_package = (start, command.length)
            return
        end = start + 5 + len(command.payload())
        self._frame(framing, command.cmd.name, start, start + 5, end, "command")

    def _stream_event(self, event: Event, framing: Framing) -> None:
        start = event.offset
        if isinstance(event, PackagedStart):
            package, length = self._pending_package or (start - 9, event.length)
            self._pending_package = None
            self._frame(framing, "PACKAGED", package, package + 9, package + 9 + length,
                        "command")
            self._packages.append(package)
        elif isinstance(event, PackagedEnd):
            if self._packages:
                self._packages.pop()
        elif isinstance(event, StreamHeader):
            self._frame(framing, "HEADER", start, start + 8, start + 8, "stream")
        elif isinstance(event, Configuration):
            self._waiting.append(("CONFIGURATION", start, start + 1, "stream", ""))
        elif isinstance(event, EndOfStream):
            self._frame(framing, "EOF", start, start + 1, start + 1, "stream")
        elif isinstance(event, VmDescription):
            self._frame(framing, "VMDESCRIPTION", start, start + 5,
                        start + 5 + len(event.json_text), "stream")
            self._learn(event.json_text)

    def _learn(self, text: bytes) -> None:
        """Hand a well-formed vmdesc to whoever learns from it (a bad one teaches nothing)."""
        if self.memory.learn is None:
            return
        try:
            vmdesc = load_vmdesc(text)
        except LayoutError:
            return
        self.memory.learn(vmdesc)


def _section_header_length(header: SectionHeader) -> int:
    if header.type in (SectionType.SECTION_START, SectionType.SECTION_FULL):
        return 1 + 4 + 1 + len(header.idstr.encode("latin-1")) + 4 + 4
    return 1 + 4
