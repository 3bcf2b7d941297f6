"""The RAM blocks a QEMU command line gives a booted guest, read from a fresh QEMU.

Strategy: after a completed migration the source QEMU is in `postmigrate`, and QEMU 7.2
refuses to migrate it again, so its ROMs and fw_cfg blobs (not mapped in guest-physical
space) cannot be read from it.  The guest cannot write those blocks, so they are what the
same command line gives any QEMU once SeaBIOS has booted the same image (SeaBIOS's read
of the ACPI tables makes QEMU rebuild them; a QEMU that never booted may differ).  This
module starts that QEMU -- the source's arguments with serial ports to null, no QMP of
the run, its disk behind `-snapshot` -- lets it boot to the guest's loop (its heartbeat),
stops it and reads the asked blocks through a migration stream (harness.qemu.snapshot).
The QEMU is always reaped.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .launch import QemuProcess
from .layout import probe_args
from .snapshot import snapshot

BOOT_TIMEOUT = 30.0


def reference_blocks(binary: str | None, args: list[str], workdir: Path,
                     names: list[str], timeout: float = 60.0) -> dict[str, np.ndarray]:
    """The blocks `names` of a fresh, booted QEMU started with `args` (as the source)."""
    from harness.realguest.heartbeat import wait_heartbeat

    where = Path(tempfile.mkdtemp(prefix="reference-", dir=workdir))
    # its own copy of each disk: the run's QEMUs hold their image's lock (fact F12)
    booted = [_own_disk(a, where) if prev == "-drive" else a
              for prev, a in zip(["", *args], args)]
    booted = [a for a in probe_args(booted) if a != "-S"]
    qemu = QemuProcess(booted, where, name="reference", binary=binary)
    try:
        qemu.start(timeout=timeout)
        wait_heartbeat(qemu.qmp, timeout=BOOT_TIMEOUT)
        qemu.qmp.execute("stop", timeout=10)
        deadline = time.monotonic() + timeout
        taken = snapshot(qemu.qmp, timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        qemu.close()
        shutil.rmtree(where, ignore_errors=True)
    return {name: taken.blocks[name] for name in names if name in taken.blocks}


def _own_disk(drive: str, where: Path) -> str:
    """A `-drive` value whose file= is a copy in `where` (the guest never writes it)."""
    parts = drive.split(",")
    for i, part in enumerate(parts):
        if part.startswith("file="):
            source = Path(part[5:])
            copy = where / f"disk{i}-{source.name}"
            shutil.copyfile(source, copy)
            parts[i] = f"file={copy}"
    return ",".join(parts)
