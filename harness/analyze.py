"""`harness analyze`: what a migration stream file holds.

Strategy: like QEMU's `scripts/analyze-migration.py`, but built on the harness decoder, so
it also reads postcopy streams (commands, PACKAGED blobs), XBZRLE and compressed pages,
streams without footers, configuration or trailer.  Device bodies are decoded field by
field with the descriptions in the stream's own VM description trailer when there is one
(found the way QEMU's analyzer finds it), else with a machine layout (`--layout FILE`, or
a cached layout of the same machine that frames the whole stream exactly: a postcopy
capture of a pc/q35 guest), and the harness's built-in devices; then a device nobody
describes is an error naming it.  Only with neither trailer nor layout are undescribed
bodies skipped by searching for their footer, and the report says so (`guessed`).  Each
decoded section lists every field: name, type, size, value, subsections.  The file is fed
to the decoder in chunks from an mmap, so its size does not matter; RAM lands in numpy
arrays.

The file is input from anyone: what is no stream at all (a directory, a device, an empty
file, a file without QEMU's magic) is `NotAStream`, bad input, before any decoding; the VM
description trailer is used only when it nests at most `MAX_VMDESC_DEPTH` levels (QEMU's
own nest about ten); `--extract-ram` writes sparse files, every all-zero page a hole.

A postcopy-preempt capture (`--preempt FILE`, the proxy's `stream.preempt.bin`) holds bare
RAM page records and one EOS (QEMU 7.2, migration/ram.c: postcopy_preempt_choose_channel,
postcopy_preempt_shutdown_file): it is read after the main stream, with a fork of the main
decoder's RAM loader (the blocks come from the main stream's MEM_SIZE), so its pages land
in the same RAM (`--extract-ram` includes the requested pages, which only it carried) and
the report lists its records per block and where EOS came.  Recorded multifd channels
(`--multifd FILE`, repeated; the proxy's stream.multifd-ID.bin) are read section by section
with the main stream (harness/analyze_multifd.py), so the RAM is what a destination ends
with, and `--json` gains a `multifd` summary.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ProtocolFailure

from .analyze_multifd import MultifdReplay, multifd_lines
from .file_kinds import not_a_file
from .protocol import (
    Command,
    Configuration,
    DeviceState,
    EndOfStream,
    Packaged,
    PackagedEnd,
    PackagedStart,
    Ping,
    PostcopyAdvise,
    PostcopyRamDiscard,
    ProtocolError,
    RamEos,
    RamFlag,
    RamMemSize,
    RamPages,
    RecvBitmapRequest,
    ReturnPathDecoder,
    RpMessage,
    SectionHeader,
    StreamDecoder,
    StreamHeader,
    StreamWarning,
    VmDescription,
    devices_from_vmdesc,
)
from .protocol.block import BlockChunk, BlockProgress
from .protocol.constants import QEMU_VM_FILE_MAGIC
from .protocol.devices import standard_devices
from .protocol.events import Event
from .protocol.return_path import Pong, RecvBitmap, ReqPages, ReqPagesId, ResumeAck, Shut
from .protocol.vmstate import field_rows
from .protocol.wire import Reader, unpack_be32
from .qemu.layout import (
    MAX_DEPTH,
    LayoutError,
    MachineLayout,
    TooDeep,
    cache_dir,
    load_vmdesc,
    read_cached,
    read_layout,
)

CHUNK = 1 << 20
MAX_VMDESC_DEPTH = MAX_DEPTH  # JSON levels: a device's struct in a struct in a subsection...
PAGE = 4096  # the unit of holes in --extract-ram's files
MAX_CACHED = 64  # cached layouts tried on a stream without trailer
STREAM_MAGIC = QEMU_VM_FILE_MAGIC.to_bytes(4, "big")


class NotAStream(ProtocolFailure, ValueError):
    """The file is no migration stream at all (bad input), as opposed to a broken one."""


def check_regular_file(path: str | Path) -> None:
    """Raise NotAStream unless `path` is a regular file (OSError if it cannot be looked at)."""
    kind = not_a_file(path)
    if kind is not None:
        raise NotAStream(f"{kind}, not a file")


def check_stream_file(path: str | Path) -> None:
    """Raise NotAStream unless `path` is a regular file that starts with QEMU's magic
    (QEMU_VM_FILE_MAGIC, migration/savevm.c); what follows is the decoder's to judge."""
    check_regular_file(path)
    with Path(path).open("rb") as fh:
        head = fh.read(len(STREAM_MAGIC))
    if not head:
        raise NotAStream("the file is empty")
    if len(head) < len(STREAM_MAGIC):
        raise NotAStream(f"{len(head)} bytes, shorter than QEMU's magic {STREAM_MAGIC!r}")
    if head != STREAM_MAGIC:
        raise NotAStream(f"it starts with {head!r}, not with QEMU's magic {STREAM_MAGIC!r}")
_SECTION_NAMES = {1: "start", 2: "part", 3: "end", 4: "full"}


@dataclass
class BlockStats:
    idstr: str
    used_length: int
    zero_pages: int = 0
    normal_pages: int = 0
    xbzrle_pages: int = 0
    compressed_pages: int = 0

    def add(self, ev: RamPages) -> None:
        kinds = ev.kinds
        self.zero_pages += int(np.count_nonzero(kinds == RamFlag.ZERO))
        self.normal_pages += int(np.count_nonzero(kinds == RamFlag.PAGE))
        self.xbzrle_pages += int(np.count_nonzero(kinds == RamFlag.XBZRLE))
        self.compressed_pages += int(np.count_nonzero(kinds == RamFlag.COMPRESS_PAGE))


@dataclass
class Analysis:
    """Everything `harness analyze` reports about one stream."""

    path: str
    size: int
    version: int | None = None
    configuration: Configuration | None = None
    sections: list[dict[str, Any]] = field(default_factory=list)
    blocks: dict[str, BlockStats] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    footers: bool | None = None
    vmdesc_size: int | None = None
    eof: bool = False
    warnings: list[str] = field(default_factory=list)
    return_path: list[dict[str, Any]] | None = None
    preempt: dict[str, Any] | None = None
    multifd: dict[str, Any] | None = None
    #: block migration: per device, the chunk records (data, zero) and the last PROGRESS
    block: dict[str, Any] | None = None
    ram: dict[str, np.ndarray] = field(default_factory=dict)
    descriptions: str = "built-in"  # "vmdesc", "layout FILE", "cache KEY", or "guessed"
    decoder: StreamDecoder | None = field(default=None, repr=False)  # while analysing
    guessed: int = 0  # device sections skipped to a footer found by searching

    def to_json(self) -> dict[str, Any]:
        config = None
        if self.configuration is not None:
            c = self.configuration
            config = {"machine": c.machine,
                      "capabilities": list(c.capabilities) if c.capabilities is not None else None,
                      "uuid": c.uuid.hex() if c.uuid is not None else None}
        doc: dict[str, Any] = {
            "file": self.path,
            "size": self.size,
            "version": self.version,
            "configuration": config,
            "footers": self.footers,
            "sections": self.sections,
            "ram": {"blocks": [vars(b) for b in self.blocks.values()]},
            "commands": self.commands,
            "devices": self.devices,
            "eof": self.eof,
            "vmdesc": {"size": self.vmdesc_size} if self.vmdesc_size is not None else None,
            "warnings": self.warnings,
            "descriptions": self.descriptions,
            "guessed_sections": self.guessed,
        }
        if self.return_path is not None:
            doc["return_path"] = self.return_path
        if self.preempt is not None:
            doc["preempt"] = self.preempt
        if self.multifd is not None:
            doc["multifd"] = self.multifd
        if self.block is not None:
            doc["block"] = self.block
        return doc


def harness_devices() -> list[Any]:
    """The devices a harness guest can have beyond QEMU's -M none set (e.g. its cpu)."""
    from .guest.devices import make_devices
    from .protocol.vmstate import DeviceDescription

    return [DeviceDescription(d.idstr, d.instance_id, d.vmsd)
            for d in make_devices(["cpu"])]


def find_vmdesc(data: bytes | mmap.mmap) -> bytes | None:
    """The VM description JSON at the end of a precopy stream, found as QEMU's analyzer does:
    the last NUL, the first '{' after it, 0x06 and a be32 length just before it."""
    n = len(data)
    nul = data.rfind(b"\x00", max(0, n - (10 << 20)))
    if nul < 0:
        return None
    brace = data.find(b"{", nul)
    if brace < 5 or data[brace - 5] != 0x06:
        return None
    (length,) = unpack_be32(data, brace - 4)
    if brace + length != n:
        return None
    return bytes(data[brace:brace + length])


def analyze_file(path: str | Path, return_path: str | Path | None = None,
                 layout: MachineLayout | str | Path | None = None,
                 use_cache: bool = True, preempt: str | Path | None = None,
                 multifd: list[Path] | None = None) -> Analysis:
    """Decode a stream file (and optionally its return-path, preempt and multifd captures).

    `layout`: a MachineLayout (or a file holding one, or a precopy stream with its vmdesc)
    whose descriptions frame the device sections; `use_cache`: without trailer and
    layout, try the cached layouts of the stream's machine.  Raises ProtocolError for a
    malformed stream, OSError for an unreadable file, LayoutError for a bad layout file.
    """
    p = Path(path)
    if isinstance(layout, (str, Path)):
        layout = read_layout(Path(layout))
    with p.open("rb") as fh:
        if p.stat().st_size == 0:
            result = _analyze(p, b"", return_path, layout, use_cache, multifd)
        else:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                result = _analyze(p, data, return_path, layout, use_cache, multifd)
    if preempt is not None:
        assert result.decoder is not None
        result.preempt = analyze_preempt(preempt, result.decoder)
    result.decoder = None
    return result


def _analyze(p: Path, data: bytes | mmap.mmap, return_path: str | Path | None,
             layout: MachineLayout | None, use_cache: bool,
             multifd: list[Path] | None = None) -> Analysis:
    base = {(d.idstr, d.instance_id): d for d in standard_devices() + harness_devices()}
    warnings: list[str] = []
    trailer = find_vmdesc(data)
    described = _trailer_devices(trailer, warnings) if trailer is not None else None
    if described is not None:
        return _decode(p, data, {**base, **described}, "vmdesc", warnings, return_path,
                       multifd)
    if layout is not None:
        devices = {(d.idstr, d.instance_id): d for d in layout.devices()}
        return _decode(p, data, {**base, **devices}, f"layout {layout.key[:12]}", warnings,
                       return_path, multifd)
    for candidate in _cached_layouts(data) if use_cache else ():
        devices = {(d.idstr, d.instance_id): d for d in candidate.devices()}
        try:
            return _decode(p, data, {**base, **devices}, f"cache {candidate.key[:12]}",
                           warnings, return_path, multifd)
        except ProtocolError:
            continue  # not this machine's device set: the next one, or a guess
    return _decode(p, data, base, "guessed", warnings, return_path, multifd)


def _trailer_devices(trailer: bytes, warnings: list[str]) -> dict[Any, Any] | None:
    try:
        doc = load_vmdesc(trailer)  # bounded: json.loads and the readers recurse on nesting
    except TooDeep:
        warnings.append(f"the VM description trailer nests deeper than {MAX_VMDESC_DEPTH} "
                        f"levels; ignored")
    except LayoutError:
        warnings.append("the VM description trailer is not valid JSON; ignored")
    else:
        return {(d.idstr, d.instance_id): d for d in devices_from_vmdesc(doc)}
    return None


def _cached_layouts(data: bytes | mmap.mmap) -> list[MachineLayout]:
    """Cached layouts of the machine the stream's configuration names (newest first)."""
    machine = _machine(data)
    if machine is None or machine == "none":
        return []
    found = []
    with contextlib.suppress(OSError):
        paths = sorted(cache_dir().glob("*.json"), key=lambda q: q.stat().st_mtime,
                       reverse=True)
        for path in paths[:MAX_CACHED]:
            layout = read_cached(path.stem)
            if layout is not None and layout.machine == machine:
                found.append(layout)
    return found


def _machine(data: bytes | mmap.mmap) -> str | None:
    decoder = StreamDecoder(ram="discard")
    decoder.receive_data(data[:4096])
    with contextlib.suppress(ProtocolError):
        for ev in decoder.events():
            if isinstance(ev, Configuration):
                return ev.machine
    return None


def _decode(p: Path, data: bytes | mmap.mmap, devices: dict[Any, Any], how: str,
            warnings: list[str], return_path: str | Path | None,
            multifd: list[Path] | None = None) -> Analysis:
    result = Analysis(str(p), len(data), descriptions=how, warnings=list(warnings))
    decoder = StreamDecoder(devices=devices.values(), skip_unknown_devices=how == "guessed")
    depth = 0
    with MultifdReplay(multifd or ()) as replay:
        channels = replay if multifd else None
        for start in range(0, len(data), CHUNK):
            decoder.receive_data(data[start:start + CHUNK])
            depth = _collect(decoder, result, depth, devices, channels)
        decoder.receive_data(b"")
        _collect(decoder, result, depth, devices, channels)
        if channels is not None:
            channels.finish(decoder.ram, decoder.loader.block_lengths)
            result.multifd = channels.summary()
    result.footers = decoder.footers
    result.ram = decoder.ram
    result.decoder = decoder
    if return_path is not None:
        result.return_path = analyze_return_path(return_path)
    return result


def _collect(decoder: StreamDecoder, result: Analysis, depth: int,
             devices: dict[Any, Any], multifd: MultifdReplay | None = None) -> int:
    """The events decoded so far, one at a time: at a RAM EOS, the multifd channels'
    pages of that section go into RAM before the decoder reads on."""
    while isinstance(ev := decoder.next_event(), Event):
        if multifd is not None and isinstance(ev, RamEos):
            multifd.section_end(decoder.ram, decoder.loader.block_lengths)
        packaged = depth > 0
        if isinstance(ev, StreamHeader):
            result.version = ev.version
        elif isinstance(ev, Configuration):
            result.configuration = ev
        elif isinstance(ev, SectionHeader):
            result.sections.append({
                "type": _SECTION_NAMES[int(ev.type)], "section_id": ev.section_id,
                "idstr": ev.idstr, "instance_id": ev.instance_id, "version_id": ev.version_id,
                "offset": ev.offset, "packaged": packaged})
        elif isinstance(ev, RamMemSize):
            for b in ev.blocks:
                result.blocks.setdefault(b.idstr, BlockStats(b.idstr, b.used_length))
        elif isinstance(ev, RamPages):
            result.blocks[ev.block].add(ev)
        elif isinstance(ev, DeviceState):
            described = devices.get((ev.idstr, ev.instance_id))
            result.guessed += ev.state is None
            result.devices.append({
                "idstr": ev.idstr, "instance_id": ev.instance_id, "version_id": ev.version_id,
                "section_id": ev.section_id, "size": ev.size, "offset": ev.offset,
                "packaged": packaged,
                "fields": None if ev.state is None else _jsonable(ev.state),
                "layout": None if ev.state is None or described is None
                else field_rows(described.vmsd, ev.state)})
        elif isinstance(ev, Command):
            result.commands.append({**command_json(ev), "offset": ev.offset,
                                    "packaged": packaged})
        elif isinstance(ev, PackagedStart):
            depth += 1
        elif isinstance(ev, PackagedEnd):
            depth -= 1
        elif isinstance(ev, EndOfStream):
            result.eof = result.eof or not ev.packaged
        elif isinstance(ev, VmDescription):
            result.vmdesc_size = len(ev.json_text)
        elif isinstance(ev, StreamWarning):
            result.warnings.append(f"offset {ev.offset}: {ev.message}")
        elif isinstance(ev, (BlockChunk, BlockProgress)):
            _block_record(result, ev)
    return depth


def _block_record(result: Analysis, ev: BlockChunk | BlockProgress) -> None:
    """`block`: {"devices": {NAME: {"chunks", "zero_chunks"}}, "progress": last percent}."""
    block = result.block = result.block or {"devices": {}, "progress": None}
    if isinstance(ev, BlockProgress):
        block["progress"] = ev.percent
        return
    device = block["devices"].setdefault(ev.device, {"chunks": 0, "zero_chunks": 0})
    device["zero_chunks" if ev.zero else "chunks"] += 1


def command_json(cmd: Command) -> dict[str, Any]:
    out: dict[str, Any] = {"name": cmd.cmd.name}
    if isinstance(cmd, Ping):
        out["value"] = cmd.value
    elif isinstance(cmd, PostcopyAdvise):
        out["page_size_summary"] = cmd.page_size_summary
        out["target_page_size"] = cmd.target_page_size
    elif isinstance(cmd, PostcopyRamDiscard):
        out["block"] = cmd.block
        out["ranges"] = [list(r) for r in cmd.ranges]
    elif isinstance(cmd, Packaged):
        out["length"] = cmd.length
    elif isinstance(cmd, RecvBitmapRequest):
        out["block"] = cmd.block
    return out


def rp_json(msg: RpMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"name": msg.msg.name, "offset": msg.offset}
    if isinstance(msg, (Shut, Pong, ResumeAck)):
        out["value"] = msg.value
    elif isinstance(msg, ReqPagesId):
        out.update(start=msg.start, length=msg.length, block=msg.block)
    elif isinstance(msg, ReqPages):
        out.update(start=msg.start, length=msg.length)
    elif isinstance(msg, RecvBitmap):
        out.update(block=msg.block, bitmap_bytes=len(msg.bitmap))
    return out


def analyze_return_path(path: str | Path) -> list[dict[str, Any]]:
    decoder = ReturnPathDecoder()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            decoder.receive_data(chunk)
    decoder.receive_data(b"")
    return [rp_json(m) for m in decoder.events()]


#: the proxy's recording (harness/faults/recording.py): main stream and preempt channel
MAIN_RECORDING, PREEMPT_RECORDING = "stream.fwd.bin", "stream.preempt.bin"


def preempt_pair(stream: Path, preempt: Path | None) -> tuple[Path, Path | None]:
    """(main stream, preempt capture) from what `harness analyze` was given: a recording's
    stream.preempt.bin stands for itself and its stream.fwd.bin; beside a stream.fwd.bin,
    its stream.preempt.bin is read too (an explicit --preempt wins)."""
    if preempt is None and stream.name == PREEMPT_RECORDING:
        return stream.with_name(MAIN_RECORDING), stream
    sibling = stream.with_name(PREEMPT_RECORDING)
    if preempt is None and stream.name == MAIN_RECORDING and sibling.is_file():
        return stream, sibling
    return stream, preempt


def analyze_preempt(path: str | Path, decoder: StreamDecoder) -> dict[str, Any]:
    """The records of a postcopy-preempt capture, placed in the main stream's RAM.

    ProtocolError (its offset in the capture) when a record is malformed; a record cut
    by the end of the capture is reported as `trailing` bytes."""
    loader = decoder.loader.fork()
    loader.last_block, loader.postcopy_mode, loader.present = None, False, None
    p = Path(path)
    data = p.read_bytes()
    reader = Reader(data, 0, len(data), 0)
    blocks: dict[str, dict[str, Any]] = {}
    eos: list[int] = []
    try:
        while True:
            events, ended = loader.load(reader, 0)
            for ev in events:
                if isinstance(ev, RamPages):
                    _preempt_pages(blocks.setdefault(ev.block, {
                        "normal": 0, "zero": 0, "other": 0, "offsets": []}), ev)
            if not ended:
                break
            eos.append(reader.offset - 8)
            loader.last_block = None  # every record on the channel names its block
            if reader.pos >= reader.end:
                break
    except ProtocolError as err:
        raise err.with_context(f"in the preempt channel capture {p}") from None
    return {"file": str(p), "size": len(data),
            "records": sum(b["normal"] + b["zero"] + b["other"] for b in blocks.values()),
            "blocks": blocks, "eos": eos, "trailing": reader.end - reader.pos}


def _preempt_pages(stats: dict[str, Any], ev: RamPages) -> None:
    normal = int(np.count_nonzero(ev.kinds == RamFlag.PAGE))
    zero = int(np.count_nonzero(ev.kinds == RamFlag.ZERO))
    stats["normal"] += normal
    stats["zero"] += zero
    stats["other"] += len(ev) - normal - zero
    stats["offsets"] += [int(x) for x in ev.offsets]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_@]")


def block_file_name(idstr: str) -> str:
    """DESIGN.md: the block idstr with every character other than letters, digits,
    `.`, `-`, `_`, `@` replaced by `_`, plus `.bin`."""
    return _UNSAFE.sub("_", idstr) + ".bin"


def extract_ram(analysis: Analysis, directory: str | Path) -> list[Path]:
    """Each block's final content to DIRECTORY/NAME.bin, as sparse files: a stream of a
    few bytes may declare gigabytes of (zero) RAM. FileExistsError if a NAME.bin exists."""
    out_dir = Path(directory)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {name: out_dir / block_file_name(name) for name in analysis.blocks}
    for target in targets.values():  # a file (or link) already there is not ours to clobber
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "file exists", str(target))
    for name, target in targets.items():
        with target.open("xb") as fh:
            _write_sparse(fh, analysis.ram[name], analysis.blocks[name].used_length)
    return list(targets.values())


def _write_sparse(fh: Any, mem: np.ndarray, length: int) -> None:
    """mem[:length] into `fh` with every all-zero page left out (sought over), then the
    file's size set by truncate, so holes stay holes."""
    for start in range(0, length, CHUNK * 64):
        chunk = mem[start:min(start + CHUNK * 64, length)]
        whole = len(chunk) // PAGE * PAGE
        used = chunk[:whole].reshape(-1, PAGE).view(np.uint64).any(axis=1)
        if whole < len(chunk):
            used = np.append(used, chunk[whole:].any())
        pages = np.flatnonzero(used)
        if not len(pages):
            continue
        breaks = np.flatnonzero(np.diff(pages) != 1)
        for first, last in zip(pages[np.r_[0, breaks + 1]], pages[np.r_[breaks, -1]]):
            fh.seek(start + int(first) * PAGE)
            fh.write(chunk[int(first) * PAGE:(int(last) + 1) * PAGE])
    fh.truncate(length)


def summary_lines(a: Analysis) -> list[str]:
    """The readable report."""
    lines = [f"{a.path}: {a.size} bytes, stream version {a.version}"]
    if a.configuration is not None:
        c = a.configuration
        extra = ""
        if c.capabilities:
            extra += f", capabilities {', '.join(c.capabilities)}"
        if c.uuid is not None:
            extra += f", uuid {c.uuid.hex()}"
        lines.append(f"configuration: machine '{c.machine}'{extra}")
    else:
        lines.append("configuration: none")
    counts: dict[str, int] = {}
    for s in a.sections:
        counts[s["type"]] = counts.get(s["type"], 0) + 1
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("start", "part", "end", "full") if k in counts)
    footers = {True: "with footers", False: "without footers", None: "footers unknown"}[a.footers]
    lines.append(f"sections: {len(a.sections)} ({kinds or 'none'}), {footers}")
    if a.blocks:
        lines.append("RAM blocks:")
        width = max(len(n) for n in a.blocks)
        for b in a.blocks.values():
            extra = ""
            if b.xbzrle_pages:
                extra += f", {b.xbzrle_pages} xbzrle"
            if b.compressed_pages:
                extra += f", {b.compressed_pages} compressed"
            lines.append(f"  {b.idstr:<{width}}  0x{b.used_length:x} bytes: "
                         f"{b.zero_pages} zero, {b.normal_pages} normal pages{extra}")
    if a.devices:
        lines.append(f"devices (described by {a.descriptions}):")
        for d in a.devices:
            how = "decoded" if d["fields"] is not None else \
                "not described: GUESSED, body skipped to a footer found by searching"
            where = " (in PACKAGED)" if d["packaged"] else ""
            lines.append(f"  {d['idstr']} instance {d['instance_id']} v{d['version_id']} "
                         f"section {d['section_id']}: {d['size']} bytes, {how}{where}")
            lines.extend(field_text(d["layout"] or [], "    "))
        if a.guessed:
            lines.append(f"  {a.guessed} device sections were GUESSED (no VM description, no "
                         f"layout: give --layout FILE to frame them exactly)")
    if a.commands:
        lines.append("commands:")
        for cmd in a.commands:
            detail = {k: v for k, v in cmd.items() if k not in ("name", "offset", "packaged")}
            if len(detail.get("ranges", [])) > 3:
                ranges = detail["ranges"]
                detail["ranges"] = f"{ranges[:3]}... ({len(ranges)} ranges)"
            where = " (in PACKAGED)" if cmd["packaged"] else ""
            text = " ".join(f"{k}={v}" for k, v in detail.items())
            lines.append(f"  @{cmd['offset']}: {cmd['name']}{' ' + text if text else ''}{where}")
    lines.append("end: " + ("EOF" if a.eof else "no EOF")
                 + (f", VM description {a.vmdesc_size} bytes" if a.vmdesc_size is not None
                    else ", no VM description"))
    if a.return_path is not None:
        lines.append(f"return path: {len(a.return_path)} messages")
        for m in a.return_path:
            detail = {k: v for k, v in m.items() if k not in ("name", "offset")}
            text = " ".join(f"{k}={v}" for k, v in detail.items())
            lines.append(f"  @{m['offset']}: {m['name']} {text}".rstrip())
    if a.preempt is not None:
        lines.extend(preempt_lines(a.preempt))
    if a.multifd is not None:
        lines.extend(multifd_lines(a.multifd))
    lines.extend(f"warning: {w}" for w in a.warnings)
    return lines


def preempt_lines(pre: dict[str, Any]) -> list[str]:
    """The preempt capture in a few lines: records per block (their offsets), EOS."""
    ends = ", ".join(f"@{o}" for o in pre["eos"]) or "none"
    head = (f"preempt channel: {pre['file']}: {pre['size']} bytes, {pre['records']} page "
            f"records, EOS {ends}")
    lines = [head]
    for name, b in pre["blocks"].items():
        offsets = " ".join(f"0x{o:x}" for o in b["offsets"][:8])
        more = f" ... ({len(b['offsets'])} pages)" if len(b["offsets"]) > 8 else ""
        other = f", {b['other']} other" if b["other"] else ""
        lines.append(f"  {name}: {b['normal']} normal, {b['zero']} zero{other} pages: "
                     f"{offsets}{more}")
    if pre["trailing"]:
        lines.append(f"  {pre['trailing']} bytes after the last whole record (a record cut "
                     "by the end of the capture)")
    return lines


def field_text(rows: list[dict[str, Any]], indent: str) -> list[str]:
    """`field_rows` as indented lines: name type size = value; structs and subsections nest."""
    lines = []
    for row in rows:
        if "subsection" in row:
            lines.append(f"{indent}subsection {row['subsection']} v{row['version']} "
                         f"({row['size']} bytes)")
            lines.extend(field_text(row["fields"], indent + "  "))
            continue
        count = f"[{row['count']}]" if "count" in row else ""
        head = f"{indent}{row['name']}{count} {row['type']} {row['size']}"
        if "fields" not in row:
            lines.append(f"{head} = {row['value']}")
            continue
        lines.append(head)
        groups = row["fields"] if "count" in row else [row["fields"]]
        for i, group in enumerate(groups):
            if "count" in row:
                lines.append(f"{indent}  [{i}]")
            lines.extend(field_text(group, indent + ("    " if "count" in row else "  ")))
    return lines
