"""The guest's disk writes (harness/guest/disk_writer.py): they mark what they change, and
none happens once the guest is stopped -- what block migration's final sync relies on."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from harness.guest.disk_writer import CHUNK, DiskWriter


def _wait(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_writes_mark_their_chunks_and_stop_with_the_guest() -> None:
    guest = SimpleNamespace(runstate="running", on_running=[])
    disk = np.zeros(4 * CHUNK, dtype=np.uint8)
    writer = DiskWriter(guest, {"d0": disk, "d1": np.zeros(CHUNK, dtype=np.uint8)},
                        {"d0": 8 << 20}, seed=1)
    assert list(writer.dirty) == ["d0"]  # a drive without a rate is not written
    writer.start()
    try:
        assert _wait(lambda: writer.writes >= 8)
        guest.runstate = "paused"
        for listener in guest.on_running:  # as Guest._set_runstate: vm_stop's notifier
            listener(False)
        written, image = writer.writes, disk.copy()
        time.sleep(0.1)
        assert writer.writes == written and np.array_equal(disk, image)
        changed = {i for i in range(4) if disk[i * CHUNK:(i + 1) * CHUNK].any()}
        assert changed and changed == set(np.flatnonzero(writer.dirty["d0"]))
    finally:
        writer.close()
