"""An incremental, sans-IO decoder of QEMU's migration stream.

Strategy (after h11): `receive_data(bytes)` appends to a buffer the decoder owns (b"" marks
the end of input); `next_event()` returns the next event, `NEED_DATA`, or None once the
stream is over.  Parsing follows QEMU 7.2's loader (`migration/savevm.c:
qemu_loadvm_state`, `qemu_loadvm_state_main`, `qemu_loadvm_section_start_full`,
`qemu_loadvm_section_part_end`, `check_section_footer`, `loadvm_process_command`) with
its checks and its words.  Each record is parsed from a `Reader` and committed only when
complete, so chunk boundaries never change the events; a record that needs N more bytes
is not retried before they arrive.  RAM payloads stream record by record into numpy RAM
(`ram.RamLoader`), or, with `ram="discard"`, are checked and located without being kept
(a proxy between two peers has no guest RAM).  A PACKAGED blob is waited for whole, as
QEMU reads it, then decoded in place as a nested stream bounded by its length.  After
any error the decoder refuses further use.  `successor()` continues a stream on a new
connection (postcopy recovery), knowing the sections and RAM blocks seen so far.
"""

from __future__ import annotations

import enum
import errno as _errno
import uuid as _uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import devices as std
from .block import BLOCK_IDSTR, BLOCK_VERSION_ID, BlockEos, BlockLoader
from .commands import Packaged, check_command_header, decode_command
from .constants import (
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_FILE_VERSION_COMPAT,
    RAM_VERSION_ID,
    TARGET_PAGE_BITS,
    SectionType,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    Configuration,
    DeviceState,
    EndOfStream,
    Event,
    PackagedEnd,
    PackagedStart,
    RamEos,
    SectionFooter,
    SectionHeader,
    StreamClosed,
    StreamHeader,
    StreamWarning,
    VmDescription,
)
from .ram import RamLoader
from .vmstate import DeviceDescription, load_state
from .wire import NeedData, Reader, Truncated, pack_be32

__all__ = ["NEED_DATA", "StreamDecoder", "decode_all"]


class _NeedDataType:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Any = _NeedDataType()

#: capabilities QEMU 7.2 validates through the configuration section
VALIDATED_CAPABILITIES = ("x-ignore-shared",)
_MAGIC = pack_be32(QEMU_VM_FILE_MAGIC)
_INITIAL_BUFFER = 1 << 16


class DecoderState(enum.Enum):
    HEADER = "header"
    CONFIGURATION = "configuration"
    TOP = "top"
    RAM = "ram"
    BLOCK = "block"
    FOOTER = "footer"
    PACKAGED = "packaged"
    AFTER_EOF = "after-eof"
    TRAILING = "trailing"
    DONE = "done"
    ERROR = "error"


_RAM = "ram"
_BLOCK = "block"


@dataclass
class _Section:
    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    handler: DeviceDescription | str | None  # "ram", "block", a device, or None (skipped)


class StreamDecoder:
    """Decode a migration stream pushed in chunks.

    Options mirror the destination's local view, as QEMU's loader has one:
    `ram` (idstr -> uint8 numpy array; None = create blocks from the stream; "discard" =
    keep no RAM: pages are checked and skipped, and `RamPages.spans` says where they lie),
    `devices` (DeviceDescriptions it can load; the `-M none` set by default),
    `configuration` / `footers` (True, False, or None = detect from the stream),
    `header` (False for a stream that continues without one, e.g. a PACKAGED blob),
    `machine`, `capabilities`, `uuid` (checked against the configuration when given),
    `postcopy_ram`, `ignore_shared` (None = from the stream's configuration),
    `skip_unknown_devices` (analysis: skip a device body nobody described by finding
    its footer, instead of failing as QEMU does), `vmdesc` (whether a trailer is expected
    after EOF, as it is by a precopy destination without suppress-vmdesc: its absence is
    then a warning, as QEMU logs it), `disks` (block migration: device name -> writable
    uint8 array the `block` section's chunks are written into; None = check and locate
    them only, any device name accepted).
    """

    def __init__(self, *, ram: dict[str, np.ndarray] | str | None = None,
                 devices: Iterable[DeviceDescription] | None = None,
                 configuration: bool | None = None, footers: bool | None = None,
                 header: bool = True, machine: str | None = None,
                 capabilities: Iterable[str] | None = None, uuid: bytes | None = None,
                 postcopy_ram: bool = False, ignore_shared: bool | None = None,
                 page_sizes: dict[str, int] | None = None,
                 skip_unknown_devices: bool = False, vmdesc: bool = False,
                 max_packaged: int = 1 << 30,
                 disks: dict[str, np.ndarray] | None = None) -> None:
        if isinstance(ram, str) and ram != "discard":
            raise ValueError(f"ram={ram!r}: expected a dict of blocks, None or 'discard'")
        self._options: dict[str, Any] = {
            "ram": ram, "devices": devices, "configuration": configuration,
            "footers": footers, "machine": machine, "capabilities": capabilities, "uuid": uuid,
            "postcopy_ram": postcopy_ram, "ignore_shared": ignore_shared,
            "page_sizes": page_sizes, "skip_unknown_devices": skip_unknown_devices,
            "vmdesc": vmdesc, "max_packaged": max_packaged, "disks": disks}
        self._buf = bytearray(_INITIAL_BUFFER)  # bytes live in [_pos, _end)
        self._end = 0
        self._pos = 0
        self._base = 0
        self._retain: int | None = None  # absolute offset kept in the buffer (retain())
        self._closed = False
        self._need = 0
        self._events: deque[Event] = deque()
        self._error: RemoteProtocolError | None = None
        self.state = DecoderState.HEADER if header else DecoderState.TOP
        self._devices = {(d.idstr, d.instance_id): d
                         for d in (std.standard_devices() if devices is None else devices)}
        self._sections: dict[int, _Section] = {}
        self._current: _Section | None = None
        self._current_kind = SectionType.SECTION_PART
        self._packages: list[tuple[int, int]] = []  # (absolute end, length) of open blobs
        self._pending_package = 0
        self._config_mode = configuration
        self._footers = footers
        self.machine = machine
        self.capabilities = None if capabilities is None else frozenset(capabilities)
        self.uuid = uuid
        self._ignore_shared = ignore_shared
        self.configuration: Configuration | None = None
        self.skip_unknown_devices = skip_unknown_devices
        self.expect_vmdesc = vmdesc
        self.max_packaged = max_packaged
        discard = ram == "discard"
        self.loader = RamLoader(None if discard else ram,  # type: ignore[arg-type]
                                postcopy_ram=postcopy_ram, ignore_shared=bool(ignore_shared),
                                page_sizes=page_sizes, discard=discard)
        self.block_loader = BlockLoader(disks)

    # ------------------------------------------------------------------ public
    @property
    def offset(self) -> int:
        """Absolute offset of the next unparsed byte."""
        return self._base + self._pos

    @property
    def ram(self) -> dict[str, np.ndarray]:
        return self.loader.ram

    @property
    def package_depth(self) -> int:
        return len(self._packages)

    @property
    def footers(self) -> bool | None:
        return self._footers

    def successor(self) -> StreamDecoder:
        """A decoder for a new connection that continues this stream (postcopy recovery:
        `migration/savevm.c` goes on loading from the new channel, which carries no header
        and no configuration, commands first, then PART sections of known section ids).
        It has this decoder's options, sections, footer mode, configuration and RAM blocks;
        its offsets count from 0 on the new connection.  This decoder is left as it is."""
        if self._error is not None and self.configuration is None and not self._sections:
            raise self._refuse()
        new = StreamDecoder(**{**self._options, "header": False})
        new._sections = dict(self._sections)
        new._footers = self._footers
        new.configuration = self.configuration
        new.loader = self.loader.fork()
        new.block_loader = self.block_loader
        return new

    def retain(self, offset: int) -> None:
        """Keep the input from absolute `offset` on in the buffer, parsed or not, until a
        later call moves the mark (a proxy forwards bytes after it has framed them)."""
        self._retain = offset

    def buffered(self, start: int, end: int) -> memoryview:
        """The input bytes at absolute offsets [start, end) while the buffer holds them:
        what was fed and not yet dropped (everything from the offset reached before the
        last feed, or from the `retain()` mark).  Release the view before feeding more
        (the buffer may move)."""
        lo, hi = start - self._base, end - self._base
        if not 0 <= lo <= hi <= self._end:
            raise LocalProtocolError(
                f"bytes [{start}, {end}) are not held: the buffer holds "
                f"[{self._base}, {self._base + self._end})")
        with memoryview(self._buf) as whole:
            return whole[lo:hi]

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; b"" means the input has ended."""
        self._check_open(bool(data))
        if not data:
            self._closed = True
            return
        n = len(data)
        self._reserve(n)
        self._buf[self._end:self._end + n] = data
        self._end += n

    def receive_into(self, readinto: Callable[[memoryview], int | None],
                     size: int = 1 << 20) -> int:
        """Let `readinto` (e.g. a socket's recv_into) write up to `size` bytes straight into
        the decoder's buffer; returns how many it wrote.  0 does not close the input:
        call receive_data(b"") for that."""
        self._check_open(True)
        self._reserve(size)
        with memoryview(self._buf) as view, view[self._end:self._end + size] as window:
            n = readinto(window) or 0
        self._end += n
        return n

    def _check_open(self, more: bool) -> None:
        if self._error is not None:
            raise self._refuse()
        if self._closed and more:
            raise LocalProtocolError("receive_data after the end of input")

    def _reserve(self, n: int) -> None:
        """Room for n more bytes: move the unparsed tail to the front, or grow."""
        if self._end + n <= len(self._buf):
            return
        keep = self._pos if self._retain is None else \
            min(self._pos, max(0, self._retain - self._base))
        live = self._end - keep
        if keep and live + n <= len(self._buf):
            self._buf[:live] = self._buf[keep:self._end]
            self._base += keep
            self._pos -= keep
            self._end = live
        if self._end + n > len(self._buf):
            self._buf.extend(bytes(max(self._end + n - len(self._buf), len(self._buf))))

    def next_event(self) -> Event | Any:
        """The next event, NEED_DATA, or None when the stream is over."""
        if self._error is not None:
            raise self._refuse()
        while not self._events:
            if self.state is DecoderState.DONE:
                return None
            if not self._closed and self._base + self._end < self._need:
                return NEED_DATA
            try:
                self._step()
            except NeedData as need:
                self._need = need.needed
                if self._closed:  # pragma: no cover - readers raise Truncated when closed
                    self._fail(RemoteProtocolError("unexpected end of migration stream",
                                                   offset=self.offset, errno=_errno.EIO))
                return NEED_DATA
            except RemoteProtocolError as err:
                self._fail(err.at(self.offset))
        return self._events.popleft()

    def events(self) -> list[Event]:
        """Every event available now."""
        out = []
        while isinstance(ev := self.next_event(), Event):
            out.append(ev)
        return out

    # ------------------------------------------------------------------ plumbing
    def _fail(self, err: RemoteProtocolError) -> None:
        self._error = err
        self.state = DecoderState.ERROR
        raise err

    def _refuse(self) -> RemoteProtocolError:
        assert self._error is not None
        return RemoteProtocolError(f"decoder already failed: {self._error.message}",
                                   offset=self._error.offset, errno=self._error.errno)

    def _reader(self) -> Reader:
        end = self._end
        closed = self._closed
        if self._packages:
            limit = self._packages[-1][0] - self._base
            end = min(end, limit)
            closed = True  # the blob is complete: running out of it is truncation
        return Reader(self._buf, self._pos, end, self._base, closed)

    def _commit(self, r: Reader) -> None:
        self._pos = r.pos

    def _emit(self, *events: Event) -> None:
        self._events.extend(events)

    def _step(self) -> None:
        state = self.state
        if state is DecoderState.TOP:
            self._top()
        elif state is DecoderState.RAM:
            self._ram()
        elif state is DecoderState.BLOCK:
            self._block()
        elif state is DecoderState.FOOTER:
            self._footer()
        elif state is DecoderState.HEADER:
            self._header()
        elif state is DecoderState.CONFIGURATION:
            self._configuration()
        elif state is DecoderState.PACKAGED:
            self._packaged()
        elif state is DecoderState.AFTER_EOF:
            self._after_eof()
        elif state is DecoderState.TRAILING:
            self._trailing()

    # ------------------------------------------------------------------ states
    def _header(self) -> None:
        r = self._reader()
        have = bytes(r.buf[r.pos:min(r.end, r.pos + 4)])
        if not _MAGIC.startswith(have):
            raise RemoteProtocolError("Not a migration stream", offset=r.offset)
        if r.remaining() < 4 and r.closed:
            raise RemoteProtocolError("Not a migration stream", offset=r.offset)
        r.be32()
        version = r.be32()
        if version == QEMU_VM_FILE_VERSION_COMPAT:
            raise RemoteProtocolError("SaveVM v2 format is obsolete and don't work anymore",
                                      offset=r.offset - 4, errno=_errno.ENOTSUP)
        if version != QEMU_VM_FILE_VERSION:
            raise RemoteProtocolError("Unsupported migration stream version",
                                      offset=r.offset - 4, errno=_errno.ENOTSUP)
        self._commit(r)
        self._emit(StreamHeader(version, offset=0))
        self.state = DecoderState.CONFIGURATION

    def _configuration(self) -> None:
        self.state = DecoderState.TOP
        if self._config_mode is False:
            return
        r = self._reader()
        start = r.offset
        try:
            first = r.peek(0)
        except Truncated:
            if self._config_mode:
                raise RemoteProtocolError("Configuration section missing", offset=start) from None
            return
        except NeedData:
            self.state = DecoderState.CONFIGURATION
            raise
        if first != SectionType.CONFIGURATION:
            if self._config_mode:
                raise RemoteProtocolError("Configuration section missing", offset=start)
            return
        r.u8()
        try:
            values = load_state(r, std.CONFIGURATION, 0)
        except NeedData:
            self.state = DecoderState.CONFIGURATION
            raise
        config = self._check_configuration(values, start)
        self._commit(r)
        self.configuration = config
        if self._ignore_shared is None:
            self.loader.ignore_shared = "x-ignore-shared" in (config.capabilities or ())
        self._emit(config)

    def _check_configuration(self, values: dict[str, Any], start: int) -> Configuration:
        """migration/savevm.c: configuration_post_load and the subsections' post_load."""
        name = bytes(values["name"]).decode("latin-1")
        caps_sub = values.get("configuration/capabilities")
        caps = tuple(caps_sub["capabilities"]) if caps_sub else None
        uuid_sub = values.get("configuration/uuid")
        uuid = bytes(uuid_sub["uuid"]) if uuid_sub else None
        bits_sub = values.get("configuration/target-page-bits")
        bits = int(bits_sub["target_page_bits"]) if bits_sub else None
        if self.machine is not None and not self.machine.startswith(name):
            # strncmp over the received length: a received prefix of the local name passes
            raise RemoteProtocolError(
                f"Machine type received is '{name}' and local is '{self.machine}'", offset=start)
        if (bits or TARGET_PAGE_BITS) != TARGET_PAGE_BITS:
            raise RemoteProtocolError(
                f"Received TARGET_PAGE_BITS is {bits} but local is {TARGET_PAGE_BITS}",
                offset=start)
        if self.capabilities is not None:
            for cap in VALIDATED_CAPABILITIES:
                source_on = cap in (caps or ())
                local_on = cap in self.capabilities
                if source_on != local_on:
                    raise RemoteProtocolError(
                        f"Capability {cap} is {'on' if local_on else 'off'}, but received "
                        f"capability is {'on' if source_on else 'off'}", offset=start)
        if uuid is not None and self.uuid is not None and uuid != self.uuid:
            raise RemoteProtocolError(
                f"UUID received is {_uuid.UUID(bytes=uuid)} and local is "
                f"{_uuid.UUID(bytes=self.uuid)}", offset=start)
        return Configuration(name, caps, uuid, bits, offset=start)

    def _top(self) -> None:
        if self._packages and self.offset == self._packages[-1][0]:
            _, length = self._packages.pop()
            self._emit(PackagedEnd(length, offset=self.offset))
            return
        r = self._reader()
        start = r.offset
        kind = r.u8()
        if kind in (SectionType.SECTION_START, SectionType.SECTION_FULL):
            self._section_start_full(r, SectionType(kind), start)
        elif kind in (SectionType.SECTION_PART, SectionType.SECTION_END):
            self._section_part_end(r, SectionType(kind), start)
        elif kind == SectionType.COMMAND:
            self._command(r, start)
        elif kind == SectionType.EOF:
            self._commit(r)
            if self._packages:
                # QEMU's nested loop ends at EOF; the rest of the blob is never read
                end, length = self._packages.pop()
                self._pos = end - self._base
                self._emit(EndOfStream(packaged=True, offset=start),
                           PackagedEnd(length, offset=end))
            else:
                self._emit(EndOfStream(offset=start))
                self.state = DecoderState.AFTER_EOF
        else:
            raise RemoteProtocolError(f"Unknown savevm section type {kind}", offset=start)

    def _section_start_full(self, r: Reader, kind: SectionType, start: int) -> None:
        section_id = r.be32()
        idstr = r.str8().decode("latin-1")
        instance_id = r.be32()
        version_id = r.be32()
        handler: DeviceDescription | str | None
        if idstr == BLOCK_IDSTR and instance_id == 0:
            handler = _BLOCK  # block.c: blk_mig_init registers it on every QEMU
            if version_id > BLOCK_VERSION_ID:
                raise RemoteProtocolError(
                    f"savevm: unsupported version {version_id} for '{idstr}' "
                    f"v{BLOCK_VERSION_ID}", offset=start)
        elif idstr == "ram" and instance_id == 0:
            handler = _RAM
            if version_id > RAM_VERSION_ID:
                raise RemoteProtocolError(
                    f"savevm: unsupported version {version_id} for 'ram' v{RAM_VERSION_ID}",
                    offset=start)
            if version_id != RAM_VERSION_ID:
                raise RemoteProtocolError(
                    f"ram: stream version {version_id}, ram_load needs {RAM_VERSION_ID}",
                    offset=start, qemu=False).with_context(
                    f"error while loading state for instance 0x{instance_id:x} of device 'ram'")
        else:
            handler = self._devices.get((idstr, instance_id))
            if handler is None and not (self.skip_unknown_devices and self._footers is not False):
                raise RemoteProtocolError(
                    f"Unknown savevm section or instance '{idstr}' {instance_id}. Make sure "
                    f"that your current VM setup matches your saved VM setup, including any "
                    f"hotplugged devices", offset=start)
            if handler is not None and version_id > handler.version_id and \
                    self.skip_unknown_devices:
                handler = None  # analysis: a different device of the same name; skip it
            if handler is not None and version_id > handler.version_id:
                raise RemoteProtocolError(
                    f"savevm: unsupported version {version_id} for '{idstr}' "
                    f"v{handler.version_id}", offset=start)
        section = _Section(section_id, idstr, instance_id, version_id, handler)
        header = SectionHeader(kind, section_id, idstr, instance_id, version_id, offset=start)
        if handler in (_RAM, _BLOCK):
            self._commit(r)
            self._open_section(section, header)
            return
        context = f"error while loading state for instance 0x{instance_id:x} of device '{idstr}'"
        self._device_body(r, section, header, context)

    def _section_part_end(self, r: Reader, kind: SectionType, start: int) -> None:
        section_id = r.be32()
        known = self._sections.get(section_id)
        if known is None:
            raise RemoteProtocolError(f"Unknown savevm section {section_id}", offset=start)
        header = SectionHeader(kind, section_id, known.idstr, known.instance_id,
                               known.version_id, offset=start)
        if known.handler in (_RAM, _BLOCK):
            self._commit(r)
            self._current = known
            self._current_kind = kind
            self._emit(header)
            self.state = DecoderState.RAM if known.handler == _RAM else DecoderState.BLOCK
            return
        context = f"error while loading state section id {section_id}({known.idstr})"
        self._device_body(r, known, header, context)

    def _open_section(self, section: _Section, header: SectionHeader) -> None:
        for sid, old in list(self._sections.items()):
            if old.handler is section.handler and sid != section.section_id:
                del self._sections[sid]  # QEMU keeps one load_section_id per handler
        self._sections[section.section_id] = section
        self._current = section
        self._current_kind = header.type
        self._emit(header)
        self.state = DecoderState.RAM if section.handler == _RAM else DecoderState.BLOCK

    def _device_body(self, r: Reader, section: _Section, header: SectionHeader,
                     context: str) -> None:
        body_start = r.offset
        handler = section.handler
        try:
            if isinstance(handler, DeviceDescription):
                state: dict[str, Any] | None = load_state(r, handler.vmsd, section.version_id)
            else:
                state = None
                self._skip_to_footer(r, section)
        except RemoteProtocolError as err:
            raise err.with_context(context)
        size = r.offset - body_start
        footer = self._read_footer(r, section)
        self._commit(r)
        self._sections[section.section_id] = section
        self._emit(header,
                   DeviceState(section.section_id, section.idstr, section.instance_id,
                               section.version_id, state, size, offset=body_start),
                   footer)

    def _skip_to_footer(self, r: Reader, section: _Section) -> None:
        """Analysis only: find `7e be32(id)` followed by something that can follow a section."""
        pattern = bytes((SectionType.SECTION_FOOTER,)) + pack_be32(section.section_id)
        at = r.pos
        while True:
            hit = r.buf.find(pattern, at, r.end)
            if hit < 0:
                if not r.closed:
                    raise NeedData(r.base + r.end + 1)
                raise RemoteProtocolError(
                    f"no footer found for undescribed device '{section.idstr}'",
                    offset=r.offset, qemu=False)
            after = hit + len(pattern)
            if after >= r.end and not r.closed:
                raise NeedData(r.base + after + 1)
            if after >= r.end or _plausible_next(r.buf, after, r.end, self._sections):
                r.pos = hit
                return
            at = hit + 1

    def _read_footer(self, r: Reader, section: _Section) -> SectionFooter:
        """migration/savevm.c: check_section_footer (or detect whether footers are sent)."""
        start = r.offset
        if self._footers is None:
            try:
                self._footers = r.peek(0) == SectionType.SECTION_FOOTER
            except Truncated:
                self._footers = False
        if not self._footers:
            return SectionFooter(section.section_id, section.idstr, False, offset=start)
        mark = r.u8()
        if mark != SectionType.SECTION_FOOTER:
            raise RemoteProtocolError(f"Missing section footer for {section.idstr}", offset=start)
        read_id = r.be32()
        if read_id != section.section_id:
            raise RemoteProtocolError(
                f"Mismatched section id in footer for {section.idstr} - read 0x{read_id:x} "
                f"expected 0x{section.section_id:x}", offset=start)
        return SectionFooter(section.section_id, section.idstr, True, offset=start)

    def _ram(self) -> None:
        self._live_body(self.loader, RamEos)

    def _block(self) -> None:
        """A block section body (block.c: block_load), record by record."""
        self._live_body(self.block_loader, BlockEos)

    def _live_body(self, loader: Any, eos_event: Any) -> None:
        """The body of a live section (ram, block), fed to its loader until its EOS."""
        section = self._current
        assert section is not None
        r = self._reader()
        before = r.pos
        try:
            events, eos = loader.load(r, section.section_id)
        except RemoteProtocolError as err:
            if self._current_kind in (SectionType.SECTION_START, SectionType.SECTION_FULL):
                raise err.with_context(f"error while loading state for instance "
                                       f"0x{section.instance_id:x} of device '{section.idstr}'")
            raise err.with_context(
                f"error while loading state section id {section.section_id}({section.idstr})")
        self._commit(r)
        self._emit(*events)
        if eos:
            self._emit(eos_event(section.section_id, offset=r.offset - 8))
            self.state = DecoderState.FOOTER
        elif r.pos == before and not events:
            raise NeedData(loader.need)

    def _footer(self) -> None:
        section = self._current
        assert section is not None
        r = self._reader()
        footer = self._read_footer(r, section)
        self._commit(r)
        self._emit(footer)
        self.state = DecoderState.TOP

    def _command(self, r: Reader, start: int) -> None:
        cmd = r.be16()
        length = r.be16()
        mc = check_command_header(cmd, length)
        payload = r.take(length)
        command = replace(decode_command(mc, payload), offset=start)
        self._commit(r)
        self._emit(command)
        if isinstance(command, Packaged):
            if command.length > self.max_packaged:
                raise RemoteProtocolError(
                    f"PACKAGED of {command.length} bytes exceeds this decoder's limit of "
                    f"{self.max_packaged}", offset=start)
            self._pending_package = command.length
            self.state = DecoderState.PACKAGED

    def _packaged(self) -> None:
        """Wait for the whole blob (loadvm_handle_cmd_packaged reads it in one go)."""
        length = self._pending_package
        end = self.offset + length
        limit = self._packages[-1][0] if self._packages else None
        if limit is not None and end > limit:
            raise Truncated(limit, "PACKAGED blob runs past its enclosing blob")
        if self._base + self._end < end:
            if self._closed:
                raise RemoteProtocolError(
                    f"CMD_PACKAGED: Buffer receive fail ret={self._base + self._end - self.offset} "
                    f"length={length}", offset=self.offset, errno=_errno.EIO)
            raise NeedData(end)
        self._packages.append((end, length))
        self._emit(PackagedStart(length, offset=self.offset))
        self.state = DecoderState.TOP

    def _after_eof(self) -> None:
        r = self._reader()
        if r.remaining() == 0:
            if r.closed:
                self.state = DecoderState.DONE
                if self.expect_vmdesc:  # QEMU's read of the byte fails and yields 0
                    self._emit(StreamWarning("Expected vmdescription section, but got 0",
                                             offset=r.offset))
                self._emit(StreamClosed(offset=r.offset))
                return
            raise NeedData(r.offset + 1)
        start = r.offset
        kind = r.u8()
        if kind != SectionType.VMDESCRIPTION:
            self._commit(r)  # QEMU reads the byte and stops there
            self.state = DecoderState.TRAILING
            self._emit(StreamWarning(f"Expected vmdescription section, but got {kind}",
                                     offset=start))
            return
        length = r.be32()
        text = r.take(length)
        self._commit(r)
        self.state = DecoderState.TRAILING
        self._emit(VmDescription(text, offset=start))

    def _trailing(self) -> None:
        r = self._reader()
        extra = r.remaining()
        if extra:
            self._pos = r.end
            self._emit(StreamWarning(f"{extra} bytes after the end of the stream (ignored)",
                                     offset=r.offset))
            return
        if r.closed:
            self.state = DecoderState.DONE
            self._emit(StreamClosed(offset=r.offset))
            return
        raise NeedData(r.offset + 1)


def _plausible_next(buf: bytes | bytearray, pos: int, end: int, sections: dict[int, _Section]) -> bool:
    """Whether `buf[pos:]` can be the record after a section (for footer search)."""
    kind = buf[pos]
    if kind == SectionType.EOF:
        return pos + 1 == end or buf[pos + 1] == SectionType.VMDESCRIPTION
    if kind == SectionType.COMMAND:
        return pos + 3 <= end and int.from_bytes(buf[pos + 1:pos + 3], "big") in range(1, 11)
    if kind in (SectionType.SECTION_PART, SectionType.SECTION_END):
        return pos + 5 <= end and int.from_bytes(buf[pos + 1:pos + 5], "big") in sections
    if kind in (SectionType.SECTION_START, SectionType.SECTION_FULL):
        if pos + 6 > end:
            return True
        n = buf[pos + 5]
        name = bytes(buf[pos + 6:pos + 6 + n])
        return n > 0 and name.isascii() and name.decode("ascii").isprintable()
    return False


def decode_all(data: bytes | bytearray | memoryview, **options: Any) -> list[Event]:
    """Decode a complete stream held in memory; raises RemoteProtocolError on bad input."""
    decoder = StreamDecoder(**options)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    return decoder.events()
