"""Every RAM block of a stopped QEMU, read through its own migration stream.

Strategy: `pmemsave` reads guest-physical space only, and the fw_cfg ROM blocks
(/rom@etc/acpi/tables, table-loader, rsdp) are not mapped there (facts F32, F38 of
qemu-7.2-real-guests.md), so the snapshot migrates the VM once more, to a unix socket
the harness listens on (0600 in a 0700 harness-owned directory), and decodes that
stream with the project's own codec (`harness.protocol.StreamDecoder`, which places
every page into one numpy array per block).  Before: the VM must not run (it is
stopped if it does), no migration may be active, and the block list is read from
`x-query-ramblock` and bounded (count, names, sizes); the decoder is given exactly
those arrays, so an unknown block or a size that differs fails the decode.  Every
capability that changes the stream's shape is turned off (postcopy, return path,
xbzrle, compress, multifd, block, ...), `max-bandwidth` is 0 (unlimited, F18) and the
downtime limit large, so the stream is plain precopy; what was set before is put back
afterwards.  All RAM precedes the device sections (QEMU 7.2's
`qemu_savevm_state_complete_precopy`: iterable sections end before the non-iterable
ones are written), so once the ram section's END record is done the rest -- device
sections, EOF, the vmdesc JSON -- is drained to EOF unparsed (bounded in bytes) just so
QEMU's migration completes.  The MIGRATION events this migration causes are dropped
from the QMP client's queue: they are not the run's.  Afterwards the VM is paused in
runstate `postmigrate`, from which `cont` resumes it.  Everything runs against one
deadline.

A QEMU already in `postmigrate` (a source after a completed migration, or a QEMU this
module read once) cannot be migrated again: QEMU 7.2 refuses with "Can't migrate the vm
that was paused due to previous migration".  Its RAM is then read with `pmemsave`, range
by range, where the flat view of the "memory" address space (`info mtree -f`) maps a
block; a block that is not mapped whole (the fw_cfg ROMs are never mapped; pc.ram is
partly hidden by PAM-ROM before the BIOS has run) is left out and named in `notes`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import EnvironmentFailure
from harness.lifeline import owned_dir
from harness.protocol import (
    NEED_DATA,
    Configuration,
    RamMemSize,
    RamPages,
    SectionFooter,
    SectionHeader,
    SectionType,
    StreamDecoder,
)
from harness.protocol.errors import ProtocolError

from .qmp import QMPClient, QMPError

__all__ = ["RamBlock", "Snapshot", "SnapshotError", "flat_ranges", "parse_ramblocks",
           "ram_blocks", "snapshot"]

log = logging.getLogger(__name__)

PAGE = 4096
MAX_BLOCKS = 64
MAX_NAME = 256  # QEMU's RAMBlock idstr is char[256]
MAX_TRAILER = 64 << 20  # device sections + vmdesc after the RAM: tens to hundreds of KiB
_CHUNK = 1 << 20
#: capabilities that change the stream's shape or its side effects; all turned off
STREAM_CAPABILITIES_OFF = (
    "postcopy-ram", "return-path", "xbzrle", "compress", "multifd",
    "pause-before-switchover", "auto-converge", "validate-uuid", "x-ignore-shared",
    "block", "release-ram", "x-colo", "rdma-pin-all", "dirty-bitmaps",
    "background-snapshot", "zero-copy-send", "postcopy-preempt")
PLAIN_PARAMETERS = {"max-bandwidth": 0, "downtime-limit": 2_000_000, "tls-creds": ""}
_BUSY = ("setup", "active", "pre-switchover", "device", "postcopy-active",
         "postcopy-paused", "postcopy-recover", "cancelling", "wait-unplug", "colo")
_RAMBLOCK_LINE = re.compile(
    r"^\s*(\S+)\s+(\d+)\s+([KMG]i?B)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s*$")
_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_FLAT_LINE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (?:ram|rom|romd)\): "
                        r"(\S+)(?: @([0-9a-f]+))?")
POSTMIGRATE_REFUSAL = ("runstate postmigrate: QEMU 7.2 refuses to migrate it again (\"Can't "
                       "migrate the vm that was paused due to previous migration\"), so "
                       "guest-physical space was read with pmemsave")


class SnapshotError(EnvironmentFailure, RuntimeError):
    """The RAM could not be read; the message says where it stopped and why."""


@dataclass(frozen=True)
class RamBlock:
    """One line of `info ramblock` (sizes in bytes)."""

    name: str
    page_size: int
    offset: int
    used: int
    total: int


@dataclass
class Snapshot:
    """What `snapshot` read: the blocks (used length each, stream order) and how."""

    blocks: dict[str, np.ndarray]
    machine: str | None  # the machine named in the stream's configuration section
    listed: list[RamBlock]
    stream_bytes: int = 0
    trailer_bytes: int = 0  # drained after the RAM, unparsed
    seconds: float = 0.0
    runstate_before: str = ""
    pages: int = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- block list
def parse_ramblocks(text: str) -> list[RamBlock]:
    """The rows of `info ramblock` / `x-query-ramblock` text, bounded and checked."""
    rows = [line for line in text.splitlines()[1:] if line.strip()]
    if not rows or len(rows) > MAX_BLOCKS:
        raise SnapshotError(f"info ramblock lists {len(rows)} blocks (1..{MAX_BLOCKS} expected)")
    blocks = []
    for line in rows:
        match = _RAMBLOCK_LINE.match(line)
        if match is None:
            raise SnapshotError(f"info ramblock: cannot read the line {line[:200]!r}")
        name, size, unit, offset, used, total = match.groups()
        block = RamBlock(name, int(size) * _UNITS.get(unit, 0), int(offset, 16),
                         int(used, 16), int(total, 16))
        _check_block(block)
        blocks.append(block)
    if len({b.name for b in blocks}) != len(blocks):
        raise SnapshotError("info ramblock lists a block name twice")
    return blocks


def _check_block(block: RamBlock) -> None:
    if len(block.name) >= MAX_NAME or not block.name.isprintable():
        raise SnapshotError(f"RAM block name {block.name[:80]!r}: not a RAMBlock idstr")
    if block.page_size < PAGE or block.used <= 0 or block.used % PAGE or block.used > block.total:
        raise SnapshotError(f"RAM block {block.name}: page size {block.page_size}, used "
                            f"0x{block.used:x} of 0x{block.total:x} is not a sane block")


def ram_blocks(qmp: QMPClient, timeout: float = 10.0) -> list[RamBlock]:
    """QEMU's RAM blocks (x-query-ramblock; `info ramblock` on a QEMU without it)."""
    try:
        text = qmp.execute("x-query-ramblock", timeout=timeout)["human-readable-text"]
    except QMPError as exc:
        if exc.error_class != "CommandNotFound":
            raise
        text = qmp.hmp("info ramblock", timeout=timeout)
    return parse_ramblocks(str(text))


# ---------------------------------------------------------------------- snapshot
def snapshot(qmp: QMPClient, timeout: float = 60.0,
             max_total: int | None = None) -> Snapshot:
    """Read every RAM block of the QEMU behind `qmp` (see the module docstring).

    The VM is stopped first when it runs and is left paused (`postmigrate`).
    `max_total` caps the bytes of all blocks together (default: this host's RAM)."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    before = _runstate(qmp, deadline)
    listed = ram_blocks(qmp, _left(deadline))
    _check_total(listed, max_total)
    arrays = {b.name: np.zeros(b.used, dtype=np.uint8) for b in listed}
    workdir = owned_dir("mhs")
    try:
        if before == "postmigrate":
            result = _from_guest_physical(qmp, arrays, workdir, deadline)
        else:
            result = _through_stream(qmp, arrays, workdir, deadline)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.listed = listed
    result.runstate_before = before
    result.seconds = time.monotonic() - started
    missing = [b.name for b in listed if b.name not in result.blocks]
    if missing:
        result.notes.append(f"listed but not in the stream: {', '.join(missing)}")
    return result


def _through_stream(qmp: QMPClient, arrays: dict[str, np.ndarray], workdir: Path,
                    deadline: float) -> Snapshot:
    mark = len(qmp.events)
    try:
        restore = _plain_stream(qmp, deadline)
        try:
            return _migrate_and_read(qmp, workdir / "ram.sock", arrays, deadline)
        finally:
            _restore(qmp, restore, deadline)
    finally:
        _drop_own_events(qmp, mark)


def _runstate(qmp: QMPClient, deadline: float) -> str:
    status = str(qmp.execute("query-status", timeout=_left(deadline))["status"])
    if status in ("inmigrate", "prelaunch") and _busy(qmp, deadline):
        raise SnapshotError(f"runstate {status}: the incoming migration is not over")
    if _busy(qmp, deadline):
        raise SnapshotError(f"runstate {status}: a migration is still active")
    if status == "inmigrate":
        raise SnapshotError("runstate inmigrate: this QEMU waits for an incoming migration")
    if status == "running":
        qmp.execute("stop", timeout=_left(deadline))
    return status


def _busy(qmp: QMPClient, deadline: float) -> bool:
    info = qmp.execute("query-migrate", timeout=_left(deadline))
    return info.get("status") in _BUSY


def _check_total(listed: list[RamBlock], max_total: int | None) -> None:
    if max_total is None:
        max_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    total = sum(b.used for b in listed)
    if total > max_total:
        raise SnapshotError(f"RAM blocks total 0x{total:x} bytes, more than the cap of "
                            f"0x{max_total:x}")


def _plain_stream(qmp: QMPClient, deadline: float) -> dict[str, Any]:
    """Turn the stream into plain precopy; what to put back afterwards."""
    caps = {c["capability"]: bool(c["state"])
            for c in qmp.execute("query-migrate-capabilities", timeout=_left(deadline))}
    params = qmp.execute("query-migrate-parameters", timeout=_left(deadline))
    on = [name for name in STREAM_CAPABILITIES_OFF if caps.get(name)]
    old_params = {k: params[k] for k in PLAIN_PARAMETERS if k in params}
    if on:
        qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": name, "state": False} for name in on]}, timeout=_left(deadline))
    qmp.execute("migrate-set-parameters", {k: v for k, v in PLAIN_PARAMETERS.items()
                                           if k in params}, timeout=_left(deadline))
    return {"capabilities": on, "parameters": old_params}


def _restore(qmp: QMPClient, restore: dict[str, Any], deadline: float) -> None:
    """Put back what `_plain_stream` changed (best effort: logged when refused)."""
    try:
        qmp.execute("migrate-set-parameters", restore["parameters"],
                    timeout=max(_left(deadline), 5.0))
        if restore["capabilities"]:
            qmp.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": name, "state": True} for name in restore["capabilities"]]},
                timeout=max(_left(deadline), 5.0))
    except (QMPError, OSError) as exc:
        log.warning("snapshot: could not restore the migration settings: %s", exc)


def _drop_own_events(qmp: QMPClient, mark: int) -> None:
    mine = ("MIGRATION", "MIGRATION_PASS")
    qmp.events[mark:] = [e for e in qmp.events[mark:] if e.get("event") not in mine]


# ---------------------------------------------------------------------- the stream
def _migrate_and_read(qmp: QMPClient, path: Path, arrays: dict[str, np.ndarray],
                      deadline: float) -> Snapshot:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.fspath(path))
        os.chmod(path, 0o600)
        listener.listen(1)
        qmp.execute("migrate", {"uri": f"unix:{path}"}, timeout=_left(deadline))
        conn = _accept(qmp, listener, deadline)
        with conn:
            result = _read_stream(conn, arrays, deadline)
        _wait_completed(qmp, deadline)
        return result
    except BaseException:
        with contextlib.suppress(QMPError, OSError):
            qmp.execute("migrate_cancel", timeout=5.0)
        raise
    finally:
        listener.close()


def _accept(qmp: QMPClient, listener: socket.socket, deadline: float) -> socket.socket:
    while True:
        listener.settimeout(min(_left(deadline), 0.5))
        try:
            conn, _ = listener.accept()
            return conn
        except TimeoutError:
            info = qmp.execute("query-migrate", timeout=_left(deadline))
            if info.get("status") == "failed":
                raise SnapshotError(f"migrate to the snapshot socket failed: "
                                    f"{info.get('error-desc', '?')}") from None


def _read_stream(conn: socket.socket, arrays: dict[str, np.ndarray],
                 deadline: float) -> Snapshot:
    """Decode until the ram section's END is complete, then drain to EOF."""
    decoder = StreamDecoder(ram=arrays)
    state = _Progress()
    received = 0
    while not state.ram_done:
        conn.settimeout(_left(deadline))
        n = _recv_into(conn, decoder)
        received += n
        if n == 0:
            decoder.receive_data(b"")
        try:
            _consume(decoder, state)
        except ProtocolError as exc:
            raise SnapshotError(f"snapshot stream: {exc}") from exc
        if n == 0 and not state.ram_done:
            raise SnapshotError(f"snapshot stream ended at byte {decoder.offset} before the "
                                f"RAM was complete")
    trailer = received - decoder.offset + _drain(conn, deadline)
    blocks = {name: decoder.ram[name] for name in state.order}
    return Snapshot(blocks, state.machine, [], stream_bytes=decoder.offset + trailer,
                    trailer_bytes=trailer, pages=state.pages)


def _recv_into(conn: socket.socket, decoder: StreamDecoder) -> int:
    try:
        return decoder.receive_into(conn.recv_into, _CHUNK)
    except TimeoutError:
        raise SnapshotError("snapshot stream: no data before the deadline") from None


@dataclass
class _Progress:
    machine: str | None = None
    order: list[str] = field(default_factory=list)
    ram_end: bool = False
    ram_done: bool = False
    pages: int = 0


def _consume(decoder: StreamDecoder, state: _Progress) -> None:
    while (event := decoder.next_event()) is not NEED_DATA and event is not None:
        if isinstance(event, Configuration):
            state.machine = event.machine
        elif isinstance(event, RamMemSize):
            state.order = [info.idstr for info in event.blocks]
        elif isinstance(event, RamPages):
            state.pages += len(event)
        elif isinstance(event, SectionHeader):
            if event.idstr != "ram":
                raise SnapshotError(f"section {event.idstr!r} before the RAM was complete")
            state.ram_end = event.type == SectionType.SECTION_END
        elif isinstance(event, SectionFooter) and state.ram_end:
            state.ram_done = True
            return
    if event is None and not state.ram_done:
        raise SnapshotError("snapshot stream: over before the ram section's END")


def _drain(conn: socket.socket, deadline: float) -> int:
    """Read (and drop) what follows the RAM until EOF; at most MAX_TRAILER bytes."""
    buf = bytearray(_CHUNK)
    total = 0
    while True:
        conn.settimeout(_left(deadline))
        try:
            n = conn.recv_into(buf)
        except TimeoutError:
            raise SnapshotError("snapshot stream: no EOF before the deadline") from None
        if n == 0:
            return total
        total += n
        if total > MAX_TRAILER:
            raise SnapshotError(f"snapshot stream: more than {MAX_TRAILER} bytes after the RAM")


def _wait_completed(qmp: QMPClient, deadline: float) -> None:
    while True:
        info = qmp.execute("query-migrate", timeout=_left(deadline))
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise SnapshotError(f"the snapshot migration {status}: "
                                f"{info.get('error-desc', '?')}")
        if time.monotonic() >= deadline:
            raise SnapshotError(f"the snapshot migration is still {status} at the deadline")
        time.sleep(0.01)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SnapshotError("snapshot: deadline passed")
    return left


# ---------------------------------------------------------------------- postmigrate
def flat_ranges(text: str) -> list[tuple[int, int, str, int]]:
    """(guest address, length, region name, offset in the region) of every RAM/ROM range
    of the first flat view of address space "memory" in `info mtree -f` output."""
    ranges: list[tuple[int, int, str, int]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("FlatView"):
            if inside:
                break
            continue
        if line.strip().startswith('AS "memory"'):
            inside = True
        match = _FLAT_LINE.match(line) if inside else None
        if match is not None:
            start, last, name, offset = match.groups()
            ranges.append((int(start, 16), int(last, 16) - int(start, 16) + 1, name,
                           int(offset or "0", 16)))
    return ranges


def _block_of(region: str, names: list[str]) -> str | None:
    """The RAM block a region name is (pc.ram), or ends (0000:00:02.0/vga.vram)."""
    hits = [n for n in names if n == region or n.endswith("/" + region)]
    return hits[0] if len(hits) == 1 else None


def _from_guest_physical(qmp: QMPClient, arrays: dict[str, np.ndarray], workdir: Path,
                         deadline: float) -> Snapshot:
    from .qmp import pmemsave

    covered = {name: np.zeros(mem.size // PAGE, dtype=bool) for name, mem in arrays.items()}
    text = qmp.hmp("info mtree -f", timeout=_left(deadline))
    dump = workdir / "range.bin"
    for addr, length, region, offset in flat_ranges(text):
        name = _block_of(region, list(arrays))
        if name is None or offset % PAGE or length % PAGE or \
                offset + length > arrays[name].size:
            continue
        pmemsave(qmp, addr, length, dump, timeout=_left(deadline))
        with dump.open("rb") as f:
            got = f.readinto(memoryview(arrays[name][offset:offset + length]))
        if got != length:
            raise SnapshotError(f"pmemsave of 0x{addr:x}+0x{length:x} wrote {got} bytes")
        covered[name][offset // PAGE:(offset + length) // PAGE] = True
    blocks, notes = {}, [POSTMIGRATE_REFUSAL]
    for name, pages in covered.items():
        if pages.all():
            blocks[name] = arrays[name]
        elif pages.any():
            notes.append(f"{name}: left out, only {int(pages.sum())} of {pages.size} pages "
                         f"are mapped in guest-physical space")
        else:
            notes.append(f"{name}: left out, not mapped in guest-physical space")
    return Snapshot(blocks, None, [], notes=notes)
