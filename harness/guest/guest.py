"""The guest a migration peer owns: RAM, workload, devices, runstate and the oracle.

Strategy: `Guest` ties the pieces together the way QEMU's main loop ties a VM: the RAM
blocks in shared memory (`memory.py`), a vCPU-like workload process (`workload.py`), the
devices (`devices.py`) and a runstate with QEMU's RunState names.  A source guest is
created with its version-0 content; a destination guest with zeroed RAM to be loaded,
in runstate "inmigrate".  The oracle (`content.py`) tells, for every page and its
version, what the page must hold -- so `mismatched_pages()` of an intact guest is empty,
and the runner can compare a destination's `digests()` with the source's.

Thread model: one owner thread drives a Guest (the peer's main loop); the migration
thread may call `harvest_dirty` and read `memory.ram` concurrently -- the workload
handle's lock serialises harvests against stop/cont.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

import numpy as np

from harness.protocol.constants import RUN_STATES
from harness.protocol.errors import RemoteProtocolError
from harness.protocol.vmstate import DeviceDescription, VMStateDescription

from . import content
from .devices import GuestDevice, MigrationBlockedError, make_devices
from .faults import FaultFds
from .machine import layout_devices
from .memory import PAGE_SIZE, BlockSpec, GuestMemory
from .workload import Ctl, Workload, WorkloadSpec, harvest_dirty

DEFAULT_RAM = 16 << 20
CONTENT_KINDS = ("random", "compressible")


def _default_blocks() -> list[BlockSpec]:
    return [BlockSpec("ram", DEFAULT_RAM)]


def _default_devices() -> list[str]:
    return ["timer", "globalstate"]


@dataclass
class GuestSpec:
    """What guest to build (the scenario file's `guest:` section, parsed)."""

    machine: str = "none"
    blocks: list[BlockSpec] = field(default_factory=_default_blocks)
    fill: float = 0.0
    seed: int = 0
    workload: WorkloadSpec | None = None
    devices: list[str] = field(default_factory=_default_devices)
    content: str = "random"  # or "compressible" (content.py: each page repeats one KiB)
    #: a real machine's devices (machine.py: a layout's descriptions), instead of `devices`
    described: tuple[DeviceDescription, ...] | None = None
    #: resizable blocks: name -> used length (the block's size is its maximum)
    used_lengths: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.content not in CONTENT_KINDS:
            raise ValueError(f"content must be one of {', '.join(CONTENT_KINDS)}, "
                             f"got {self.content!r}")
        if not 0.0 <= self.fill <= 1.0:
            raise ValueError(f"fill must be within [0, 1], got {self.fill}")
        if self.described is None:
            make_devices(self.devices)  # validates the names

    @property
    def compressible(self) -> bool:
        return self.content == "compressible"


class SavedDevice(NamedTuple):
    """One device's section as the source writes it."""

    section_id: int
    idstr: str
    instance_id: int
    vmsd: VMStateDescription
    values: dict[str, Any]


class Guest:
    """A simulated VM.  Runstates are QEMU's: prelaunch, running, paused, ...

    Methods take the states they say; `close()` is idempotent and safe at any time.
    """

    def __init__(self, spec: GuestSpec, memory: GuestMemory, runstate: str) -> None:
        self.spec = spec
        self.memory = memory
        self.devices: list[GuestDevice] = (make_devices(spec.devices) if spec.described is None
                                           else layout_devices(spec.described))
        #: loaded values of the devices kept as they came (machine.py: StoredDevice)
        self.device_state: dict[tuple[str, int], dict[str, Any]] = {}
        self.used_lengths = dict(spec.used_lengths)  # resizable blocks: current used length
        self.runstate = runstate
        #: called with True when the guest starts running, False when it stops
        self.on_running: list[Callable[[bool], None]] = []
        self.stored_runstate: str | None = None  # global_state_store()
        self._postcopy: FaultFds | None = None
        self.incoming_runstate: str | None = None  # loaded globalstate
        self.timer: dict[str, int] = {"cpu_ticks_offset": 0, "cpu_clock_offset": 0}
        self.workload: Workload | None = None
        self._closed = False
        atexit.register(self.close)

    @classmethod
    def create(cls, spec: GuestSpec, *, initial_content: bool = True,
               prefault: bool = False) -> Self:
        """A source guest (version-0 content, "prelaunch") or, with
        `initial_content=False`, a destination guest (zeroed RAM, "inmigrate").

        `prefault` backs every page with memory now (one madvise per block), so that
        loading a migration does not pay a page fault per page on its critical path."""
        memory = GuestMemory.create(spec.blocks)
        try:
            if prefault:
                for block in spec.blocks:
                    memory.populate(block.name, 0, block.pages)
            if initial_content:
                content.initial_fill(memory, spec.seed, spec.fill, spec.compressible)
        except BaseException:
            memory.close()
            memory.unlink()
            raise
        return cls(spec, memory, "prelaunch" if initial_content else "inmigrate")

    @property
    def machine(self) -> str:
        """The machine type name sent in the configuration section."""
        return self.spec.machine

    @property
    def ram(self) -> dict[str, np.ndarray]:
        """Each block's RAM (uint8 views of the shared segment), in block order."""
        self._check_open()
        return self.memory.ram

    def block_length(self, name: str) -> int:
        """The block's used length (less than its memory for a resizable block)."""
        return self.used_lengths.get(name, self.memory.blocks[self.memory.block_index(name)].size)

    def loadable_ram(self) -> dict[str, np.ndarray]:
        """Each block's RAM up to its used length: what a load may write."""
        return {name: mem[:self.block_length(name)] for name, mem in self.ram.items()}

    def resize_block(self, name: str, length: int) -> np.ndarray | None:
        """softmmu/physmem.c: qemu_ram_resize, as a load's MEM_SIZE asks it: the block's
        RAM at its new used length, or None when the block is not resizable (the loader
        then refuses with QEMU's "Size mismatch")."""
        if name not in self.used_lengths:
            return None
        size = self.memory.blocks[self.memory.block_index(name)].size
        if length > size:
            raise RemoteProtocolError(f"Size too large: {name}: 0x{length:x} > 0x{size:x}: "
                                      f"Invalid argument")
        if length <= 0 or length % PAGE_SIZE:
            raise RemoteProtocolError(f"RAM block '{name}': used length 0x{length:x} is not "
                                      f"a positive multiple of the page size", qemu=False)
        old, self.used_lengths[name] = self.used_lengths[name], length
        if self.memory.control[Ctl.POSTCOPY]:
            part = self.memory.present[self.memory.page_slice(name)]
            part[old // PAGE_SIZE:length // PAGE_SIZE] = 0  # grown: to be received
            part[length // PAGE_SIZE:] = 1  # beyond the used length: never asked for
        return self.memory.ram[name][:length]

    # ------------------------------------------------------------------ runstate
    def _set_runstate(self, runstate: str) -> None:
        if runstate not in RUN_STATES:
            raise ValueError(f"unknown runstate {runstate!r}; QEMU's are {', '.join(RUN_STATES)}")
        old, self.runstate = self.runstate, runstate
        if (old == "running") != (runstate == "running"):
            for listener in self.on_running:  # QEMU's STOP / RESUME events (vm_state_notify)
                listener(runstate == "running")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("guest is closed")

    def prepare_start(self) -> None:
        """Start the workload's process now, paused, so that `start` only resumes it (QEMU's
        vCPU threads exist before vm_start): a process start (0.1-0.3 s) is then not part
        of a migration's downtime.  A no-op without a workload, once it exists, or once the
        guest is closed; after it, `enable_postcopy` is refused (the faults' fds are given
        at spawn).  Best effort: if the spawn fails, `start` spawns it and reports."""
        if self.spec.workload is None or self.workload is not None or self._closed:
            return
        with contextlib.suppress(OSError):
            self.workload = self._spawn_workload(paused=True)

    def start(self, timeout: float = 30.0) -> None:
        """Run the vCPU (QEMU's vm_start): start or resume the workload, if any."""
        self._check_open()
        if self.spec.workload is not None:
            if self.workload is None:
                self.workload = self._spawn_workload(timeout=timeout)
            else:
                self.workload.resume(timeout)
        self.stored_runstate = None
        self._set_runstate("running")

    cont = start

    def _spawn_workload(self, *, paused: bool = False, timeout: float = 30.0) -> Workload:
        """The workload's process on this guest's memory, with the fault fds once postcopy
        is enabled."""
        assert self.spec.workload is not None
        faults = self._postcopy.for_workload() if self._postcopy else None
        return Workload.start(self.memory, self.spec.workload, content_seed=self.spec.seed,
                              compressible=self.spec.compressible, timeout=timeout,
                              fault_fds=faults, paused=paused)

    def stop(self, runstate: str = "paused", timeout: float = 10.0) -> None:
        """Stop the vCPU (QEMU's vm_stop): returns once no guest write is in flight."""
        self._check_open()
        if self.workload is not None:
            self.workload.pause(timeout)
        self._set_runstate(runstate)

    # ------------------------------------------------------------------ postcopy
    def enable_postcopy(self, request_fd: int | None = None) -> tuple[int | None, int]:
        """From now on pages may be missing: the guest (its workload) faults on them.

        The guest writes its page requests as return-path messages to `request_fd` (the
        return path's socket: no hop in between) or, without one, to a pipe whose read
        end is returned for the owner to relay.  Returns (that read end or None, the wake
        pipe's write end: a byte wakes a waiting guest).  Must come before the guest
        starts.  Every page starts missing (QEMU's ADVISE discards all RAM); the loader
        marks pages present as it places them.  A socket can be replaced later
        (`replace_request_fd`, postcopy recovery).
        """
        self._check_open()
        if self.workload is not None:
            raise RuntimeError("postcopy must be enabled before the guest runs")
        if self._postcopy is None:
            self._postcopy = FaultFds.create(request_fd)
        ctl = self.memory.control
        ctl[Ctl.WAIT_PAGE] = -1
        ctl[Ctl.POSTCOPY] = 1
        ctl[Ctl.REQUEST_FD_GEN] = 0
        self.memory.present[:] = 0
        self.memory.touched[:] = 0
        for name, used in self.used_lengths.items():  # no page beyond it will come
            self.memory.present[self.memory.page_slice(name)][used // PAGE_SIZE:] = 1
        fds = self._postcopy
        return (None if fds.relay_r < 0 else fds.relay_r), fds.wake_w

    def replace_request_fd(self, request_fd: int) -> None:
        """Postcopy recovery: the guest writes its page requests on the socket
        `request_fd` (the new return path) from now on, instead of the broken one.
        Only for a guest that wrote on a socket (see `enable_postcopy`)."""
        self._check_open()
        if self._postcopy is None:
            raise RuntimeError("postcopy is not enabled")
        self._postcopy.handoff_socket(self.memory.control, request_fd,
                                      self.workload is not None)

    @property
    def requests_direct(self) -> bool:
        """Whether the guest writes its page requests on a socket itself (no relay)."""
        return self._postcopy is not None and self._postcopy.direct

    def finish_postcopy(self) -> None:
        """Every page is here: the guest stops checking (the userfaultfd goes away)."""
        if not self.memory.closed:
            self.memory.control[Ctl.POSTCOPY] = 0

    def postcopy_stats(self) -> dict[str, Any]:
        ctl = self.memory.control
        count = int(ctl[Ctl.LAT_COUNT])
        ring = self.memory.latency
        latencies = ring[:min(count, ring.size)].copy()
        return {"blocked-ns": int(ctl[Ctl.BLOCKED_NS]),
                "blocked-count": int(ctl[Ctl.BLOCKED_COUNT]),
                "waiting-page": int(ctl[Ctl.WAIT_PAGE]),
                "requests": int(ctl[Ctl.REQUESTS]),
                "resent": int(ctl[Ctl.RESENT]),
                "latencies-ns": latencies}

    def postcopy_stats_waiting(self) -> int:
        """The global page the guest is blocked on, -1 when none."""
        return int(self.memory.control[Ctl.WAIT_PAGE])

    def page_placed(self, page: int) -> bool:
        """The loader placed global page `page`: if the guest waits for it, note when and
        wake it (the wake pipe) -- once per wait (the guest clears PLACED_NS as it starts
        waiting).  True when it was waited for."""
        ctl = self.memory.control
        if int(ctl[Ctl.WAIT_PAGE]) != page or self._postcopy is None:
            return False
        if not ctl[Ctl.PLACED_NS]:
            ctl[Ctl.PLACED_NS] = time.monotonic_ns()
            os.write(self._postcopy.wake_w, b"!")
        return True

    def arrival_digests(self) -> dict[str, np.ndarray]:
        """Per page, what the guest found there: the digest at its first access after the
        switch when it accessed it, its current digest otherwise."""
        now = self.digests()
        out = {}
        for index, spec in enumerate(self.memory.blocks):
            first = self.memory.page_slice(index).start
            part = slice(first, first + now[spec.name].size)
            touched = self.memory.touched[part].astype(bool)
            digests = now[spec.name].copy()
            digests[touched] = self.memory.touch_digest[part][touched]
            out[spec.name] = digests
        return out

    def global_state_store(self) -> None:
        """Remember the current runstate for the globalstate section
        (migration/global_state.c: global_state_store, called before vm_stop)."""
        self.stored_runstate = self.runstate

    def finish_incoming(self, autostart: bool = True) -> None:
        """What a destination does once loaded (migration.c: process_incoming_migration_bh):
        run if the source ran and autostart is on, else take the source's runstate."""
        state = self.incoming_runstate
        if autostart and state in (None, "running"):
            self.start()
        else:
            self._set_runstate(state if state is not None else "paused")

    # ------------------------------------------------------------------- memory
    def ram_holes(self, block: str, first: int, stop: int) -> np.ndarray | None:
        """Which pages [first, stop) of `block` have no memory (read as zero), or None
        when none (GuestMemory.holes: the source finds such zero pages without reading)."""
        self._check_open()
        return self.memory.holes(block, first, stop)

    def harvest_dirty(self, timeout: float = 10.0) -> dict[str, np.ndarray]:
        """Pages written since the last harvest, per block (bool arrays)."""
        self._check_open()
        return self.memory.split(harvest_dirty(self.memory, self.workload, timeout))

    def versions(self) -> dict[str, np.ndarray]:
        """Each block's page versions (a copy; consistent when the guest is stopped)."""
        self._check_open()
        return {name: v.copy() for name, v in self.memory.split(self.memory.version).items()}

    def set_versions(self, versions: Mapping[str, np.ndarray]) -> None:
        """Adopt another guest's page versions (a destination taking the source's oracle)."""
        self._check_open()
        for name, v in versions.items():
            self.memory.version[self.memory.page_slice(name)] = v

    def digests(self) -> dict[str, np.ndarray]:
        """A 64-bit digest per page of every block (holes are not read: stays sparse)."""
        self._check_open()
        out = {}
        for index, spec in enumerate(self.memory.blocks):
            length = self.block_length(spec.name)
            out[spec.name] = content.page_digests(
                self.memory.ram[spec.name][:length],
                self.memory.backed_pages(index)[:length // PAGE_SIZE])
        return out

    def mismatched_pages(self) -> dict[str, np.ndarray]:
        """Pages differing from the oracle for their version (empty for an intact guest).

        Holes of the segment are known zero pages and are not read (nor allocated)."""
        self._check_open()
        out = {}
        for index, spec in enumerate(self.memory.blocks):
            versions = self.memory.version[self.memory.page_slice(index)]
            out[spec.name] = content.mismatched_pages(self.memory.ram[spec.name],
                                                      self.spec.seed, index, versions,
                                                      self.spec.fill,
                                                      self.memory.backed_pages(index),
                                                      self.spec.compressible)
        return out

    # ------------------------------------------------------------------ devices
    def device(self, idstr: str, instance_id: int = 0) -> GuestDevice:
        for dev in self.devices:
            if dev.idstr == idstr and dev.instance_id == instance_id:
                return dev
        # migration/savevm.c: qemu_loadvm_section_start_full
        raise KeyError(f"Unknown savevm section or instance '{idstr}' {instance_id}. Make "
                       f"sure that your current VM setup matches your saved VM setup, "
                       f"including any hotplugged devices")

    def device_descriptions(self) -> list[DeviceDescription]:
        """The devices a destination decoder must know, as `DeviceDescription`s."""
        return [d.description() for d in self.devices]

    def unmigratable_devices(self) -> list[str]:
        return [d.idstr for d in self.devices if d.unmigratable]

    def save_devices(self) -> list[SavedDevice]:
        """Every device's values, in section-id order (QEMU's handler order).

        Raises MigrationBlockedError when an unmigratable device exists."""
        self._check_open()
        blocked = self.unmigratable_devices()
        if blocked:
            raise MigrationBlockedError(
                f"State blocked by non-migratable device '{blocked[0]}'")
        devs = sorted(self.devices, key=lambda d: d.section_id)
        return [SavedDevice(d.section_id, d.idstr, d.instance_id, d.vmsd, d.save(self))
                for d in devs]

    def load_device(self, idstr: str, instance_id: int, values: Mapping[str, Any]) -> None:
        self._check_open()
        self.device(idstr, instance_id).load(self, values)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop and reap the workload, unmap and (owner) unlink the memory.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self.workload is not None:
                self.workload.stop()
        finally:
            if self._postcopy is not None:
                self._postcopy.close()
                self._postcopy = None
            self.memory.close()
            if self.memory.owner:
                self.memory.unlink()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Guest({self.spec.machine!r}, runstate={self.runstate!r}, "
                f"memory={self.memory.name!r})")
