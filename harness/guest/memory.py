"""Guest RAM: every RAM block plus the dirty log, in ONE POSIX shared memory segment.

Strategy: a migration peer and its workload process (a "vCPU") must see the same bytes
without copying, so the guest's RAM blocks live in one segment under /dev/shm, mapped
by both.  The segment holds, in order: each block's RAM (page aligned), then per-page
arrays over all pages of all blocks in block order -- `dirty` (uint8, set only by the
workload), `harvest` (uint8, the workload's hand-off of `dirty` to the migration side),
`version` (uint32, how often the workload rewrote the page) -- and a small `control`
area of int64 words (the workload protocol, see `workload.py`).  Everything is a numpy
view of the mapping: nothing is copied and no page is touched until somebody writes it
(ftruncate on tmpfs is sparse), so guests of several GiB cost what they use; `holes()`
tells which pages were never touched (they read as zero), so a migration need not read
them, and `populate()` backs a range in one call where every page will be written.

Why not `multiprocessing.shared_memory.SharedMemory` itself: in Python 3.11 it registers
every *attacher* with the resource tracker, and a "spawn" child shares its parent's
tracker, so the documented workaround (unregister in the child) removes the *owner's*
registration: the tracker then prints a KeyError traceback when the owner unlinks, and
would no longer clean up after a crashed owner.  Its `close()` also raises BufferError
while numpy views exist.  So this module makes the same kind of segment with the same
primitives (`_posixshmem.shm_open`, `mmap`; a `SharedMemory(name=...)` can still attach
to it), registers only the owner with the tracker (crash cleanup) and never an attacher,
and lets the mapping go when the last numpy view of it does.
"""

from __future__ import annotations

import _posixshmem
import ctypes
import errno
import mmap
import os
import secrets
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any, Self

import numpy as np

PAGE_SIZE = 4096
CONTROL_WORDS = 64
SEGMENT_PREFIX = "mh-guest-"
LAYOUT_VERSION = 3
LATENCY_RING = 1 << 16  # postcopy request latencies kept (the most recent ones)
MADV_POPULATE_WRITE = 23  # Linux >= 5.14; not in Python 3.11's mmap constants
HOLE_RUNS = 64  # runs of absent pages `holes()` confirms per call


@dataclass(frozen=True)
class BlockSpec:
    """A RAMBlock: its idstr and its size in bytes (a positive multiple of 4 KiB)."""

    name: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name.encode()) > 255:
            raise ValueError(f"RAM block name must be a non-empty string of at most 255 bytes, "
                             f"got {self.name!r}")
        if not isinstance(self.size, int) or self.size <= 0 or self.size % PAGE_SIZE:
            raise ValueError(f"RAM block '{self.name}': size must be a positive multiple of "
                             f"{PAGE_SIZE}, got {self.size!r}")

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def compute_layout(blocks: list[BlockSpec]) -> dict[str, Any]:
    """Offsets of every area of the segment (the descriptor without the segment name)."""
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise ValueError(f"RAM block names must be unique, got {names}")
    offset = 0
    entries = []
    for b in blocks:
        entries.append([b.name, b.size, offset])
        offset += b.size
    npages = offset // PAGE_SIZE
    dirty = offset
    harvest = dirty + npages
    present = harvest + npages
    touched = present + npages
    version = _align(touched + npages, 8)
    touch_digest = _align(version + 4 * npages, 8)
    latency = _align(touch_digest + 8 * npages, 8)
    control = _align(latency + 8 * LATENCY_RING, 8)
    size = _align(control + 8 * CONTROL_WORDS, PAGE_SIZE)
    return {"layout_version": LAYOUT_VERSION, "blocks": entries, "npages": npages,
            "dirty": dirty, "harvest": harvest, "present": present, "touched": touched,
            "version": version, "touch_digest": touch_digest, "latency": latency,
            "control": control,
            "control_words": CONTROL_WORDS, "size": size}


def _shm_name(name: str) -> str:
    return "/" + name


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int


def _mincore(address: int, length: int, vec: np.ndarray) -> int:
    """mincore(2) into `vec` (one byte per page); 0, or -1 when the kernel refuses."""
    return int(_libc.mincore(address, length, vec.ctypes.data))


def _swap_in_use() -> bool:
    """Whether any swap area is active (/proc/swaps lists more than its header)."""
    try:
        with open("/proc/swaps") as f:
            return len(f.read().splitlines()) > 1
    except OSError:
        return True  # cannot tell: assume it is


def _address_of(buf: mmap.mmap) -> int:
    """Where the mapping starts (the exporting ctypes object is dropped at once, so the
    mapping can still be closed)."""
    view = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view


class GuestMemory:
    """The RAM blocks, dirty log, page versions and control words of one guest.

    Create with `GuestMemory.create(blocks)` (the owner: creates, and unlinks at the end)
    or `GuestMemory.attach(descriptor)` (any other process: maps an existing segment).
    """

    def __init__(self, name: str, layout: dict[str, Any], buf: mmap.mmap, fd: int,
                 owner: bool) -> None:
        self.name = name
        self.owner = owner
        self._fd = fd  # kept for lseek(SEEK_DATA/SEEK_HOLE): which pages are backed
        self._layout = layout
        self._mmap: mmap.mmap | None = buf
        self._address = _address_of(buf)  # for mincore
        self._unlinked = False
        self.blocks = [BlockSpec(n, s) for n, s, _ in layout["blocks"]]
        self._first_page = {}
        self.ram: dict[str, np.ndarray] = {}
        npages = layout["npages"]
        for name_, size, offset in layout["blocks"]:
            self.ram[name_] = np.frombuffer(buf, np.uint8, size, offset)
            self._first_page[name_] = offset // PAGE_SIZE
        self.dirty = np.frombuffer(buf, np.uint8, npages, layout["dirty"])
        self.harvest = np.frombuffer(buf, np.uint8, npages, layout["harvest"])
        self.version = np.frombuffer(buf, np.uint32, npages, layout["version"])
        # postcopy (the userfaultfd of this guest): `present` says a page may be accessed
        # (written only by the loader while postcopy runs, which sets it after the page's
        # content); `touched` / `touch_digest` keep what each page held when the guest
        # first accessed it after the switch (written only by the workload)
        self.present = np.frombuffer(buf, np.uint8, npages, layout["present"])
        self.touched = np.frombuffer(buf, np.uint8, npages, layout["touched"])
        self.touch_digest = np.frombuffer(buf, np.uint64, npages, layout["touch_digest"])
        #: request sent -> page placed, ns, of the guest's page requests (a ring)
        self.latency = np.frombuffer(buf, np.int64, LATENCY_RING, layout["latency"])
        self.control = np.frombuffer(buf, np.int64, layout["control_words"], layout["control"])

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, blocks: list[BlockSpec]) -> Self:
        """A new zeroed segment for `blocks`, owned (and later unlinked) by this process."""
        layout = compute_layout(list(blocks))
        name = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        fd = _posixshmem.shm_open(_shm_name(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, layout["size"])  # sparse: no page is allocated yet
            buf = mmap.mmap(fd, layout["size"])
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink(_shm_name(name))
            raise
        resource_tracker.register(_shm_name(name), "shared_memory")  # crash cleanup
        return cls(name, layout, buf, fd, owner=True)

    @classmethod
    def attach(cls, descriptor: dict[str, Any]) -> Self:
        """Map the segment `descriptor` names (never registered with the resource tracker)."""
        blocks = [BlockSpec(str(n), int(s)) for n, s, _ in descriptor["blocks"]]
        layout = compute_layout(blocks)
        theirs = {k: descriptor.get(k) for k in layout}
        theirs["blocks"] = [list(e) for e in descriptor["blocks"]]
        if theirs != layout:
            raise ValueError(f"segment '{descriptor.get('name')}': descriptor layout differs "
                             f"from this version's layout {layout}")
        name = str(descriptor["name"])
        fd = _posixshmem.shm_open(_shm_name(name), os.O_RDWR, mode=0o600)
        try:
            if os.fstat(fd).st_size < layout["size"]:
                raise ValueError(f"segment '{name}' is smaller than its layout says")
            buf = mmap.mmap(fd, layout["size"])
        except BaseException:
            os.close(fd)
            raise
        return cls(name, layout, buf, fd, owner=False)

    @property
    def descriptor(self) -> dict[str, Any]:
        """What another process needs to attach: JSON-able, small."""
        return {"name": self.name, **self._layout,
                "blocks": [list(e) for e in self._layout["blocks"]]}

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def close(self) -> None:
        """Drop this object's views; the mapping goes when the last view of it does."""
        if self._mmap is None:
            return
        self.ram = {}
        for attr in ("dirty", "harvest", "present", "touched", "version", "touch_digest",
                     "latency", "control"):
            setattr(self, attr, None)
        buf, self._mmap = self._mmap, None
        os.close(self._fd)
        try:
            buf.close()
        except BufferError:
            pass  # a caller still holds a numpy view: unmapped when it is collected

    def unlink(self) -> None:
        """Remove the segment's name (owner only; idempotent).  Mappings stay valid."""
        if not self.owner:
            raise PermissionError(f"segment '{self.name}' is not owned by this object")
        if self._unlinked:
            return
        self._unlinked = True
        try:
            _posixshmem.shm_unlink(_shm_name(self.name))
        except FileNotFoundError:
            pass
        resource_tracker.unregister(_shm_name(self.name), "shared_memory")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.owner:
            self.unlink()

    # ------------------------------------------------------------------- layout
    @property
    def npages(self) -> int:
        return int(self._layout["npages"])

    @property
    def size(self) -> int:
        """Bytes of the whole segment (RAM, per-page arrays and control)."""
        return int(self._layout["size"])

    def block_index(self, block: str | int) -> int:
        if isinstance(block, int):
            if not 0 <= block < len(self.blocks):
                raise IndexError(f"no RAM block #{block} (have {len(self.blocks)})")
            return block
        for i, b in enumerate(self.blocks):
            if b.name == block:
                return i
        raise KeyError(f"no RAM block '{block}' (have {[b.name for b in self.blocks]})")

    def page_slice(self, block: str | int) -> slice:
        """The pages of `block` in the per-page arrays (`dirty`, `harvest`, `version`)."""
        spec = self.blocks[self.block_index(block)]
        first = self._first_page[spec.name]
        return slice(first, first + spec.pages)

    def block_starts(self) -> np.ndarray:
        """First global page index of every block, then the total page count."""
        starts = [self._first_page[b.name] for b in self.blocks] + [self.npages]
        return np.asarray(starts, dtype=np.int64)

    def populate(self, block: str | int, first: int, stop: int) -> bool:
        """Pre-fault pages [first, stop) of `block` for writing, in one syscall.

        Much cheaper than faulting 4 KiB at a time when nearly every page of a range is
        about to be written (bulk fill, a destination's RAM).  False when the kernel
        cannot (before Linux 5.14): the pages then fault in on first write as usual.
        """
        spec = self.blocks[self.block_index(block)]
        if self._mmap is None:
            raise ValueError(f"segment '{self.name}' is closed")
        if not 0 <= first <= stop <= spec.pages:
            raise IndexError(f"pages [{first}, {stop}) outside block '{spec.name}'")
        base = self._first_page[spec.name] * PAGE_SIZE
        try:
            self._mmap.madvise(MADV_POPULATE_WRITE, base + first * PAGE_SIZE,
                               (stop - first) * PAGE_SIZE)
        except OSError:
            return False
        return True

    def backed_pages(self, block: str | int) -> np.ndarray:
        """Which pages of `block` have memory behind them (bool per page).

        A page without (a hole of the sparse segment) reads as zero, and reading it
        through the mapping would allocate it: checkers use this to skip holes
        (lseek SEEK_DATA / SEEK_HOLE, one pair of calls per backed extent).
        """
        spec = self.blocks[self.block_index(block)]
        if self._mmap is None:
            raise ValueError(f"segment '{self.name}' is closed")
        start = self._first_page[spec.name] * PAGE_SIZE
        end = start + spec.size
        out = np.zeros(spec.pages, dtype=bool)
        pos = start
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            if data >= end:
                break
            hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), end)
            out[(data - start) // PAGE_SIZE:(hole - start + PAGE_SIZE - 1) // PAGE_SIZE] = True
            pos = hole
        return out

    def holes(self, block: str | int, first: int, stop: int) -> np.ndarray | None:
        """Which pages of [first, stop) of `block` are holes (no memory behind them: they
        read as zero, and reading one would allocate it), or None when none is.

        mincore says which pages have memory (one syscall over the range; a resident
        page is never a hole).  Without swap the others are the holes; with swap (a page
        swapped out is not resident but holds data) each run of them is confirmed with
        lseek(SEEK_DATA), at most HOLE_RUNS runs: the rest counts as backed.  A sparse
        source migrates its untouched memory this way without reading it.
        """
        spec = self.blocks[self.block_index(block)]
        if self._mmap is None:
            raise ValueError(f"segment '{self.name}' is closed")
        if not 0 <= first <= stop <= spec.pages:
            raise IndexError(f"pages [{first}, {stop}) outside block '{spec.name}'")
        base = (self._first_page[spec.name] + first) * PAGE_SIZE
        vec = np.empty(stop - first, dtype=np.uint8)
        if _mincore(self._address + base, (stop - first) * PAGE_SIZE, vec) != 0:
            return None  # cannot tell: read every page
        absent = (vec & 1) == 0
        if not absent.any():
            return None
        if not _swap_in_use():  # then a page without memory is a hole: nothing to confirm
            return absent
        return self._confirm_holes(absent, base)

    def _confirm_holes(self, absent: np.ndarray, base: int) -> np.ndarray:
        """Keep, of each run of absent pages, the part lseek confirms is a hole."""
        edges = np.flatnonzero(np.diff(absent.astype(np.int8), prepend=0, append=0))
        holes = np.zeros(absent.size, dtype=bool)
        for lo, hi in edges.reshape(-1, 2)[:HOLE_RUNS].tolist():
            try:
                data = os.lseek(self._fd, base + lo * PAGE_SIZE, os.SEEK_DATA)
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise
                data = base + hi * PAGE_SIZE  # no data after it: a hole to the end
            holes[lo:min(hi, (data - base) // PAGE_SIZE)] = True
        return holes

    def split(self, per_page: np.ndarray) -> dict[str, np.ndarray]:
        """A per-page array over all blocks, as views per block name."""
        return {b.name: per_page[self.page_slice(b.name)] for b in self.blocks}

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"GuestMemory({self.name!r}, blocks={[(b.name, b.size) for b in self.blocks]}, "
                f"owner={self.owner}, {state})")
