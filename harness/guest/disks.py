"""The guest's disks for block migration: raw image files, their content, their comparison.

Strategy: a disk is a raw image file (what QEMU's `-drive file=X,format=raw` reads), sized a
whole number of 1 MiB chunks -- block migration sends whole 1 MiB chunks and QEMU 7.2 fails
to load a disk of any other size (B5).  The runner writes the source's image from the seed
before the peers start: `fill` is the share of 1 MiB chunks with random (non-zero) bytes, the
others stay zero (a sparse hole), so ZERO_BLOCK records and data records both occur; the
destination's image has the same size and is all zeros.  Peers open images as numpy memmaps
(`open_drive`), so chunks are read and written without a copy through Python objects.  At
the end the runner compares the two files chunk by chunk, then names the first differing
512-byte sector (`compare_images`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK = 1 << 20  # BLK_MIG_BLOCK_SIZE
SECTOR = 512

__all__ = ["CHUNK", "DiskSpec", "Drive", "compare_images", "open_drive", "parse_drive",
           "parse_drives",
           "size_refusal", "write_image"]


@dataclass(frozen=True)
class DiskSpec:
    name: str
    size: int
    fill: float = 0.5


def size_refusal(size: int) -> str | None:
    """Why a disk of `size` bytes cannot be block-migrated (None when it can)."""
    if size <= 0 or size % CHUNK:
        return (f"{size} bytes is not a positive multiple of 1 MiB: block migration sends "
                "whole 1 MiB chunks and QEMU 7.2 fails to load any other size (B5)")
    return None


def chunk_is_data(spec: DiskSpec, seed: int) -> np.ndarray:
    """Which chunks of the disk hold random bytes: `fill` of them, drawn from the seed."""
    chunks = spec.size // CHUNK
    rng = np.random.default_rng([seed, *spec.name.encode()])
    return rng.random(chunks) < spec.fill


def write_image(path: Path, spec: DiskSpec, seed: int | None) -> None:
    """A new raw image of `spec.size` bytes: zeros (`seed` None), or the seed's content.
    Refuses to overwrite an existing file (the harness deletes only what it created)."""
    refusal = size_refusal(spec.size)
    if refusal:
        raise ValueError(f"disk {spec.name}: {refusal}")
    with path.open("xb") as f:
        f.truncate(spec.size)
        if seed is None:
            return
        rng = np.random.default_rng([seed, 1, *spec.name.encode()])
        for index in np.flatnonzero(chunk_is_data(spec, seed)):
            f.seek(int(index) * CHUNK)
            f.write(rng.integers(1, 256, CHUNK, dtype=np.uint8).tobytes())


@dataclass(frozen=True)
class Drive:
    """A peer's `--drive`: its image, and how fast the guest rewrites it (bytes/s)."""

    path: Path
    write_rate: int = 0


_FORM = "expected id=NAME,file=PATH[,write-rate=BYTES_PER_SECOND]"


def parse_drive(text: str) -> tuple[str, Drive]:
    """`--drive id=NAME,file=PATH[,write-rate=N]` (QEMU's -drive ...,id=NAME,file=PATH;
    write-rate is the harness's own: the source's guest rewrites the disk that fast)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("id", "file", "write-rate") or key in fields or not value:
            raise ValueError(f"--drive {text}: {_FORM}")
        fields[key] = value
    if not {"id", "file"} <= set(fields):
        raise ValueError(f"--drive {text}: {_FORM}")
    if len(fields["id"].encode()) > 255:
        raise ValueError(f"--drive {text}: the id travels with a u8 length (at most 255 bytes)")
    rate = fields.get("write-rate", "0")
    if not rate.isdigit():
        raise ValueError(f"--drive {text}: write-rate is a whole number of bytes per second")
    return fields["id"], Drive(Path(fields["file"]), int(rate))


def parse_drives(texts: list[str] | None) -> dict[str, Drive]:
    """Every `--drive`: name -> Drive; a name given twice is refused."""
    drives: dict[str, Drive] = {}
    for text in texts or ():
        name, drive = parse_drive(text)
        if name in drives:
            raise ValueError(f"--drive id={name}: given twice (drive ids are unique)")
        drives[name] = drive
    return drives


def open_drive(name: str, path: Path, writable: bool) -> np.ndarray:
    """A peer's drive as a uint8 memmap; ValueError (one line) when it cannot be one."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ValueError(f"--drive id={name}: {path}: {err.strerror}") from None
    refusal = size_refusal(size)
    if refusal:
        raise ValueError(f"--drive id={name}: {path}: {refusal}")
    try:
        return np.memmap(path, dtype=np.uint8, mode="r+" if writable else "r", shape=(size,))
    except OSError as err:
        raise ValueError(f"--drive id={name}: {path}: {err.strerror or err}") from None


def _chunk_digests(path: Path) -> list[bytes]:
    out = []
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            out.append(hashlib.blake2b(chunk, digest_size=16).digest())
    return out


def compare_images(source: Path, destination: Path) -> str | None:
    """None when both images hold the same bytes; else where they first differ (the chunk
    and the 512-byte sector) and how many 1 MiB chunks differ."""
    a, b = source.stat().st_size, destination.stat().st_size
    if a != b:
        return f"{a} bytes on the source, {b} on the destination"
    da, db = _chunk_digests(source), _chunk_digests(destination)
    bad = [i for i, (x, y) in enumerate(zip(da, db)) if x != y]
    if not bad:
        return None
    with source.open("rb") as fa, destination.open("rb") as fb:
        fa.seek(bad[0] * CHUNK)
        fb.seek(bad[0] * CHUNK)
        x = np.frombuffer(fa.read(CHUNK), dtype=np.uint8)
        y = np.frombuffer(fb.read(CHUNK), dtype=np.uint8)
    first = bad[0] * CHUNK + int(np.flatnonzero(x != y)[0])
    return (f"{len(bad)} of {len(da)} 1 MiB chunks differ; the first differing sector is "
            f"{first // SECTOR} (chunk {bad[0]}, byte 0x{first:x})")
