"""The run's disks: images written before the peers start, compared after the run.

Strategy: for `guest.disks` the runner writes two raw images per disk in the work directory,
`disk-NAME.source.img` (the seed's content, harness/guest/disks.py) and
`disk-NAME.destination.img` (zeros, the same size), and hands each peer its own: a harness
peer as `--drive id=NAME,file=PATH`, a QEMU source as `-drive file=PATH,format=raw,
if=none,id=NAME` (machine none has no bus for a block device; the source only reads its
drive, so a bare drive serves, B5/B7), a QEMU on a real machine with the drive on
virtio-blk-pci.  With `expect.disks: identical` the runner compares
the two files of every disk at the end (the destination's as its load left it: nothing
writes the disks after the load), and invariant disks-identical reads that comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.guest.disks import DiskSpec, compare_images, write_image

ROLES = ("source", "destination")


def prepare(workdir: Path, disks: Any, seed: int) -> dict[str, dict[str, Path]]:
    """Write every disk's two images; role -> name -> path (empty without disks)."""
    paths: dict[str, dict[str, Path]] = {role: {} for role in ROLES}
    for disk in disks:
        spec = DiskSpec(disk.name, disk.size, disk.fill)
        for role in ROLES:
            path = workdir / f"disk-{disk.name}.{role}.img"
            write_image(path, spec, seed if role == "source" else None)
            paths[role][disk.name] = path
    return paths


def harness_args(drives: dict[str, Path], disks: Any = ()) -> list[str]:
    """A harness peer's `--drive`s; `disks` (the source's) add each one's write-rate."""
    rates = {d.name: int(d.write_rate) for d in disks if d.write_rate}
    return [arg for name, path in drives.items()
            for arg in ("--drive", f"id={name},file={path}"
                        + (f",write-rate={rates[name]}" if name in rates else ""))]


def qemu_args(drives: dict[str, Path], machine: str = "none") -> list[str]:
    """A QEMU peer's drives; on a real machine each on virtio-blk-pci (a destination's
    drive must be attached to a device that takes write permission, B5/B7)."""
    device = machine != "none"
    return [arg for name, path in drives.items()
            for arg in ("-drive", f"file={path},format=raw,if=none,id={name}",
                        *(("-device", f"virtio-blk-pci,drive={name}") if device else ()))]


def compare(paths: dict[str, dict[str, Path]]) -> dict[str, str | None]:
    """name -> None (identical) or where the destination's image first differs."""
    return {name: compare_images(src, paths["destination"][name])
            for name, src in paths["source"].items()}
