"""Fixtures shared by every tier: where the QEMU vectors are, the pattern file."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_VECTORS = REPO.parent / "shared" / "qemu-vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """../shared/qemu-vectors, or a skip saying why."""
    if not SHARED_VECTORS.is_dir():
        pytest.skip(f"QEMU 7.2 vectors not found at {SHARED_VECTORS} (they live in ../shared)")
    return SHARED_VECTORS


def pattern_bytes() -> bytes:
    """qemu-vectors/precopy/pattern.bin, rebuilt from its documented formula."""
    data = bytearray()
    for i in range(3):
        data.extend(((i * 7 + j) & 0xFF) for j in range(4096))
    data += bytes(4095) + b"\x01"
    return bytes(data)
