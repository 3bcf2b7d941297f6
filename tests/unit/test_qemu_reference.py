"""The reference blocks' cache (harness/qemu/reference.py): block names with '/' and '@'
survive, a damaged or oversized file is a miss, never an error."""

from __future__ import annotations

import numpy as np

from harness.qemu import reference


def test_blocks_round_trip_through_the_cache(tmp_path):
    blocks = {"/rom@etc/acpi/tables": np.arange(8192, dtype=np.uint8),
              "pc.rom": np.zeros(4096, dtype=np.uint8)}
    path = tmp_path / "references" / "k.npz"
    reference._write_cache(path, blocks)
    back = reference._read_cache(path)
    assert back is not None and sorted(back) == sorted(blocks)
    for name, data in blocks.items():
        assert np.array_equal(back[name], data)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


def test_a_damaged_or_oversized_cache_file_is_a_miss(tmp_path, monkeypatch):
    path = tmp_path / "k.npz"
    path.write_bytes(b"not a zip file")
    assert reference._read_cache(path) is None
    assert reference._read_cache(tmp_path / "absent.npz") is None
    monkeypatch.setattr(reference, "MAX_CACHED", 10)
    reference._write_cache(tmp_path / "big.npz", {"pc.rom": np.zeros(4096, dtype=np.uint8)})
    assert not (tmp_path / "big.npz").exists()
