"""The RAM blocks a QEMU command line gives a booted guest, read from a fresh QEMU.

Strategy: after a completed migration the source QEMU is in `postmigrate`, and QEMU 7.2
refuses to migrate it again, so its ROMs and fw_cfg blobs (not mapped in guest-physical
space) cannot be read from it.  The guest cannot write those blocks, so they are what the
same command line gives any QEMU once SeaBIOS has booted the same image (SeaBIOS's read
of the ACPI tables makes QEMU rebuild them; a QEMU that never booted may differ).  This
module starts that QEMU -- the source's arguments with serial ports to null, no QMP of
the run, its disk behind `-snapshot` -- lets it boot to the guest's loop (its heartbeat),
stops it and reads the asked blocks through a migration stream (harness.qemu.snapshot).
The QEMU is always reaped.  What it read is cached beside the machine layouts, keyed as
they are (binary identity + the arguments that change the machine: layout_key), so a
command line is booted for this once.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .launch import QemuProcess
from .layout import cache_dir, layout_key, probe_args
from .snapshot import snapshot

BOOT_TIMEOUT = 30.0


MAX_CACHED = 64 << 20  # bytes of blocks a cache file may hold


def reference_blocks(binary: str | None, args: list[str], workdir: Path,
                     names: list[str], timeout: float = 60.0) -> dict[str, np.ndarray]:
    """The blocks `names` of a fresh, booted QEMU started with `args` (as the source)."""
    from .launch import find_qemu

    binary = binary or find_qemu() or "qemu-system-x86_64"
    path = cache_dir().parent / "references" / f"{layout_key(binary, args)}.npz"
    cached = _read_cache(path)
    if cached is not None and all(name in cached for name in names):
        return {name: cached[name] for name in names}
    found = _boot_and_read(binary, args, workdir, names, timeout)
    _write_cache(path, found)
    return found


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        if path.stat().st_size > MAX_CACHED:
            return None
        with np.load(path, allow_pickle=False) as doc:
            return {bytes.fromhex(key).decode(): doc[key] for key in doc.files}
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _write_cache(path: Path, blocks: dict[str, np.ndarray]) -> None:
    if sum(b.size for b in blocks.values()) > MAX_CACHED:
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".reference-", suffix=".npz")
    try:
        with open(fd, "wb") as out:
            np.savez_compressed(out, **{name.encode().hex(): data
                                        for name, data in blocks.items()})
        Path(tmp).replace(path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _boot_and_read(binary: str, args: list[str], workdir: Path, names: list[str],
                   timeout: float) -> dict[str, np.ndarray]:
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
