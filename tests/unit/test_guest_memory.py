"""harness.guest.memory: block specs, the segment layout, attach, close and unlink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.guest.leaks import leftover_segments, leftover_workloads
from harness.guest.memory import CONTROL_WORDS, PAGE_SIZE, BlockSpec, GuestMemory, compute_layout
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def no_leftovers():
    before = set(leftover_segments())
    yield
    assert set(leftover_segments()) <= before, "a test left a /dev/shm segment behind"
    assert leftover_workloads() == []


@pytest.mark.parametrize("size", [0, -4096, 4095, 4097, 4096.0, "4096"])
def test_block_size_must_be_a_positive_page_multiple(size):
    with pytest.raises(ValueError, match="positive multiple of 4096"):
        BlockSpec("ram", size)


def test_block_name_must_be_a_nonempty_string():
    with pytest.raises(ValueError, match="non-empty"):
        BlockSpec("", 4096)
    assert BlockSpec("pc.ram", 8192).pages == 2


def test_duplicate_block_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        compute_layout([BlockSpec("ram", 4096), BlockSpec("ram", 8192)])


def test_layout_places_blocks_then_per_page_arrays_then_control():
    blocks = [BlockSpec("pc.ram", 5 * PAGE_SIZE), BlockSpec("pc.bios", 3 * PAGE_SIZE)]
    lay = compute_layout(blocks)
    assert lay["blocks"] == [["pc.ram", 5 * PAGE_SIZE, 0], ["pc.bios", 3 * PAGE_SIZE, 5 * PAGE_SIZE]]
    assert all(offset % PAGE_SIZE == 0 for _, _, offset in lay["blocks"])
    assert lay["npages"] == 8
    assert lay["dirty"] == 8 * PAGE_SIZE and lay["harvest"] == lay["dirty"] + 8
    assert lay["version"] % 8 == 0 and lay["version"] >= lay["harvest"] + 8
    assert lay["control"] >= lay["version"] + 4 * 8 and lay["control"] % 8 == 0
    assert lay["size"] % PAGE_SIZE == 0 and lay["size"] >= lay["control"] + 8 * CONTROL_WORDS


def test_views_cover_their_areas_and_do_not_overlap():
    blocks = [BlockSpec("a", 4 * PAGE_SIZE), BlockSpec("b", 2 * PAGE_SIZE)]
    with GuestMemory.create(blocks) as mem:
        assert [b.name for b in mem.blocks] == ["a", "b"] and list(mem.ram) == ["a", "b"]
        assert mem.ram["a"].dtype == np.uint8 and mem.ram["a"].size == 4 * PAGE_SIZE
        assert mem.dirty.size == mem.harvest.size == mem.version.size == 6
        assert mem.version.dtype == np.uint32 and mem.control.dtype == np.int64
        assert mem.page_slice("a") == slice(0, 4) and mem.page_slice("b") == slice(4, 6)
        assert mem.page_slice(1) == mem.page_slice("b")
        mem.ram["a"][:] = 0xAA
        mem.ram["b"][:] = 0xBB
        mem.dirty[:] = 1
        mem.harvest[:] = 2
        mem.version[:] = 0xFFFFFFFF
        mem.control[:] = -1
        # each area still holds exactly what was written into it: no overlap
        assert (mem.ram["a"] == 0xAA).all() and (mem.ram["b"] == 0xBB).all()
        assert (mem.dirty == 1).all() and (mem.harvest == 2).all()
        assert (mem.version == 0xFFFFFFFF).all() and (mem.control == -1).all()
        assert mem.split(mem.version)["b"].size == 2
        with pytest.raises(KeyError, match="no RAM block 'c'"):
            mem.page_slice("c")


def test_a_new_segment_is_zeroed_and_sparse():
    with GuestMemory.create([BlockSpec("ram", 64 << 20)]) as mem:
        st = os.stat(f"/dev/shm/{mem.name}")
        assert st.st_size == mem.size
        assert st.st_blocks * 512 < 1 << 20  # nothing allocated yet
        assert not mem.ram["ram"][:: PAGE_SIZE * 97].any()


def test_descriptor_is_json_and_attach_shares_the_bytes():
    with GuestMemory.create([BlockSpec("ram", 4 * PAGE_SIZE)]) as mem:
        desc = json.loads(json.dumps(mem.descriptor))
        other = GuestMemory.attach(desc)
        try:
            assert not other.owner
            mem.ram["ram"][PAGE_SIZE + 5] = 42
            other.control[3] = 7
            assert other.ram["ram"][PAGE_SIZE + 5] == 42
            assert mem.control[3] == 7
            with pytest.raises(PermissionError):
                other.unlink()
        finally:
            other.close()


def test_attach_refuses_a_descriptor_of_another_layout():
    with GuestMemory.create([BlockSpec("ram", 4 * PAGE_SIZE)]) as mem:
        desc = mem.descriptor
        desc["control"] += 8
        with pytest.raises(ValueError, match="layout"):
            GuestMemory.attach(desc)


def test_unlink_is_idempotent_and_removes_the_name():
    mem = GuestMemory.create([BlockSpec("ram", PAGE_SIZE)])
    desc = mem.descriptor
    assert mem.name in leftover_segments()
    mem.close()
    mem.close()
    mem.unlink()
    mem.unlink()
    assert mem.name not in leftover_segments()
    with pytest.raises(FileNotFoundError):
        GuestMemory.attach(desc)


def test_close_with_a_view_still_held_keeps_that_view_valid():
    with GuestMemory.create([BlockSpec("ram", 2 * PAGE_SIZE)]) as mem:
        view = mem.ram["ram"]
        view[:] = 9
    assert mem.closed and mem.ram == {}
    assert int(view.sum()) == 9 * 2 * PAGE_SIZE  # still mapped: freed with the view


def test_populate_prefaults_only_the_range_asked():
    with GuestMemory.create([BlockSpec("a", 4 * PAGE_SIZE), BlockSpec("b", 256 * PAGE_SIZE)]) as mem:
        if not mem.populate("b", 0, 128):
            pytest.skip("MADV_POPULATE_WRITE needs Linux >= 5.14")
        allocated = os.stat(f"/dev/shm/{mem.name}").st_blocks * 512
        assert 128 * PAGE_SIZE <= allocated < 200 * PAGE_SIZE
        assert not mem.ram["b"].any()
        with pytest.raises(IndexError):
            mem.populate("a", 0, 5)


def test_backed_pages_tells_holes_from_written_pages():
    with GuestMemory.create([BlockSpec("a", 8 * PAGE_SIZE), BlockSpec("b", 300 * PAGE_SIZE)]) as mem:
        assert not mem.backed_pages("b").any()
        mem.ram["b"][5 * PAGE_SIZE + 17] = 1
        mem.ram["b"][100 * PAGE_SIZE:103 * PAGE_SIZE] = 2
        mem.ram["b"][-1] = 3
        mem.ram["a"][0] = 4
        assert np.flatnonzero(mem.backed_pages("b")).tolist() == [5, 100, 101, 102, 299]
        assert np.flatnonzero(mem.backed_pages("a")).tolist() == [0]


CHILD_SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, sys
    from harness.guest.memory import BlockSpec, GuestMemory

    def child(descriptor):
        mem = GuestMemory.attach(descriptor)
        mem.ram["ram"][:16] = 0x5A
        mem.control[0] = 1234
        mem.close()

    if __name__ == "__main__":
        mem = GuestMemory.create([BlockSpec("ram", 1 << 20)])
        procs = [mp.get_context(m).Process(target=child, args=(mem.descriptor,))
                 for m in ("spawn", "forkserver")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, p.exitcode
        assert int(mem.control[0]) == 1234 and bytes(mem.ram["ram"][:16]) == b"\\x5a" * 16
        mem.close()
        mem.unlink()
        print("OK", mem.name)
""")


def test_attaching_children_leave_no_tracker_noise_and_no_segment(tmp_path: Path):
    """Attachers never touch the resource tracker: no KeyError traceback, no "leaked
    shared_memory" warning, and the owner's unlink removes the segment."""
    script = tmp_path / "attach_children.py"
    script.write_text(CHILD_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK mh-guest-")
    assert "Traceback" not in done.stderr and "leaked" not in done.stderr, done.stderr
    assert not Path("/dev/shm", done.stdout.split()[1]).exists()


def test_a_crashed_owner_is_cleaned_up_by_its_resource_tracker(tmp_path: Path):
    code = ("import os; from harness.guest.memory import BlockSpec, GuestMemory; "
            "m = GuestMemory.create([BlockSpec('ram', 4096)]); print(m.name, flush=True); "
            "os._exit(3)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=60, env=env)
    name = done.stdout.strip()
    assert done.returncode == 3 and name.startswith("mh-guest-")
    path = Path("/dev/shm", name)
    try:
        assert not path.exists(), "the owner's tracker did not unlink the crashed segment"
        assert "leaked shared_memory" in done.stderr  # the tracker says what it cleaned
    finally:
        path.unlink(missing_ok=True)
