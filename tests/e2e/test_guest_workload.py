"""The workload as a real process: pacing, dirty log without lost marks, pause, content,
parent death, failures and big guests.  Every process started here is reaped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from harness.guest import BlockSpec, Guest, GuestSpec, Workload, WorkloadError, WorkloadSpec
from harness.guest.leaks import leftover_segments, leftover_workloads, pid_gone
from harness.guest.memory import PAGE_SIZE, GuestMemory
from harness.guest.workload import Ack, Ctl, Pattern
from tests.conftest import REPO

MiB = 1 << 20
DEADLINE = 60.0  # a timeout where the test proves it was not waited out


def _writes_exceed(guest: Guest, writes: int, timeout: float = 30.0) -> bool:
    """Whether the guest's workload wrote more than `writes` pages within `timeout` s."""
    deadline = time.monotonic() + timeout
    while guest.workload.writes <= writes and time.monotonic() < deadline:
        time.sleep(0.01)
    return guest.workload.writes > writes


@pytest.fixture(autouse=True)
def no_leftovers():
    before = set(leftover_segments())
    yield
    assert leftover_workloads() == [], "a workload process outlived its test"
    assert set(leftover_segments()) <= before, "a test left a /dev/shm segment behind"


def make_guest(rate: int, pattern: Pattern = "uniform", hotset: int = 0, fill: float = 0.5,
               blocks: list[BlockSpec] | None = None, devices: list[str] | None = None) -> Guest:
    spec = GuestSpec(blocks=blocks or [BlockSpec("pc.ram", 8 * MiB), BlockSpec("pc.bios", MiB)],
                     fill=fill, seed=17,
                     workload=WorkloadSpec(dirty_rate=rate, pattern=pattern, hotset=hotset,
                                           seed=4),
                     devices=devices or ["timer", "globalstate"])
    return Guest.create(spec)


def test_workload_dirties_at_roughly_its_rate():
    with make_guest(20 * MiB) as guest:
        guest.start()
        guest.workload.rate()
        time.sleep(1.0)
        rate = guest.workload.rate()
        # paced: never much above its rate, whatever the load.  No floor: on a busy machine
        # a paced workload falls far below its rate (its bucket holds 10 ms of tokens, and
        # each wake-up late by more loses the rest: 2 MiB/s of 20 seen with two busy loops)
        assert 0 < rate <= 3 * 20 * MiB, rate / MiB
        assert guest.runstate == "running" and guest.workload.state is Ack.RUNNING


def test_idle_workload_writes_nothing_but_still_serves_syncs():
    with make_guest(0) as guest:
        guest.start()
        time.sleep(0.1)
        before = int(guest.memory.control[Ctl.SYNC_REQUEST])
        assert not any(h.any() for h in guest.harvest_dirty().values())
        assert int(guest.memory.control[Ctl.SYNC_ACK]) == before + 1  # went through it
        assert guest.workload.writes == 0 and guest.memory.version.max() == 0


@pytest.mark.parametrize("pattern", ["uniform", "hotset", "sequential"])
def test_no_dirty_mark_is_lost_and_content_matches_after_pause(pattern):
    with make_guest(200 * MiB, pattern=pattern, hotset=2 * MiB) as guest:
        mem = guest.memory
        guest.start()
        seen = np.zeros(mem.npages, bool)
        harvests = 0
        # at least 0.5 s and 5 harvests that found marks, however slow the machine
        least, deadline = time.monotonic() + 0.5, time.monotonic() + 30
        while (time.monotonic() < least or harvests < 5) and time.monotonic() < deadline:
            dirty = np.concatenate(list(guest.harvest_dirty().values()))
            # a harvested mark always names a page the workload has rewritten
            assert (mem.version[dirty] > 0).all()
            harvests += bool(dirty.any())
            seen |= dirty
            time.sleep(0.005)
        guest.stop()
        seen |= np.concatenate(list(guest.harvest_dirty().values()))
        written = mem.version > 0
        assert harvests >= 5 and written.sum() > 100
        assert not (written & ~seen).any(), f"{int((written & ~seen).sum())} marks lost"
        assert not (seen & ~written).any()
        assert all(p.size == 0 for p in guest.mismatched_pages().values())
        touched = np.flatnonzero(written)
        if pattern == "hotset":
            assert touched[-1] - touched[0] < 2 * MiB // PAGE_SIZE
        if pattern == "sequential":
            assert np.array_equal(touched, np.arange(touched.size))  # from page 0, in order
        assert int(mem.version.sum()) == guest.workload.writes


def test_pause_stops_every_write_and_resume_restarts():
    with make_guest(100 * MiB) as guest:
        guest.start()
        time.sleep(0.1)
        guest.stop()
        assert guest.runstate == "paused" and guest.workload.state is Ack.PAUSED
        writes, versions = guest.workload.writes, guest.memory.version.copy()
        requests = int(guest.memory.control[Ctl.SYNC_REQUEST])
        time.sleep(0.1)
        assert guest.workload.writes == writes
        assert np.array_equal(guest.memory.version, versions)
        assert all(p.size == 0 for p in guest.mismatched_pages().values())
        guest.harvest_dirty()  # paused: done by the owner, no sync request
        assert int(guest.memory.control[Ctl.SYNC_REQUEST]) == requests
        guest.cont()
        assert _writes_exceed(guest, writes) and guest.runstate == "running"


def test_a_prepared_workload_waits_paused_and_start_only_resumes_it():
    """A destination starts its vCPU's process early (prepare_start), so the process start
    is not in the downtime: until `start` it writes nothing, then the same process runs."""
    with make_guest(50 * MiB) as guest:
        guest.prepare_start()
        workload = guest.workload
        assert workload is not None and workload.alive and guest.runstate != "running"
        deadline = time.monotonic() + 30
        while workload.state is not Ack.PAUSED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert workload.state is Ack.PAUSED
        time.sleep(0.1)
        assert workload.writes == 0 and guest.memory.version.max() == 0
        pid = workload.pid
        guest.prepare_start()  # once it exists: nothing more
        assert guest.workload is workload
        guest.start()
        assert guest.workload.pid == pid and workload.state is Ack.RUNNING
        deadline = time.monotonic() + 10
        while workload.writes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert workload.writes > 0 and guest.runstate == "running"


def test_a_guest_started_before_its_prepared_workload_is_ready_still_runs():
    with make_guest(50 * MiB) as guest:
        guest.prepare_start()
        guest.start()  # at once: resume waits for the process to come up
        assert guest.workload.state is Ack.RUNNING


def test_throttle_slows_a_paced_workload():
    with make_guest(40 * MiB) as guest:
        guest.start()
        guest.workload.set_throttle(75)
        guest.workload.rate()
        time.sleep(1.0)
        throttled = guest.workload.rate()
        guest.workload.set_throttle(0)
        assert int(guest.memory.control[Ctl.THROTTLE_PCT]) == 0
        time.sleep(1.0)
        free = guest.workload.rate()
        # 75 % throttled: its tokens come at a quarter of its rate, so no load makes it
        # faster than that.  Not compared with `free`: on a busy machine both fall to what
        # the late wake-ups let through (2.9 MiB/s throttled, 2.1 free, with two busy loops)
        assert 0 < throttled < 0.6 * 40 * MiB and free > 0, (throttled / MiB, free / MiB)
        with pytest.raises(ValueError, match="0..99"):
            guest.workload.set_throttle(100)


def test_stop_reaps_and_close_is_idempotent():
    guest = make_guest(50 * MiB)
    name = guest.memory.name
    try:
        guest.start()
        pid = guest.workload.pid
        assert psutil.pid_exists(pid)
        time.sleep(0.05)
    finally:
        guest.close()
    guest.close()
    assert pid_gone(pid) and guest.workload.exitcode == 0
    assert guest.workload.state is Ack.EXITED and guest.workload.writes > 0
    assert not Path("/dev/shm", name).exists()


def test_harvest_names_its_timeout_when_the_workload_hangs():
    with make_guest(10 * MiB) as guest:
        guest.start()
        os.kill(guest.workload.pid, signal.SIGSTOP)
        try:
            with pytest.raises(WorkloadError, match=r"within 0\.3s"):
                guest.harvest_dirty(timeout=0.3)
        finally:
            os.kill(guest.workload.pid, signal.SIGCONT)


def test_a_dead_workload_is_reported_not_waited_for():
    with make_guest(10 * MiB) as guest:
        guest.start()
        assert _writes_exceed(guest, 0)  # marks to harvest below
        os.kill(guest.workload.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WorkloadError, match="process ended"):
            guest.workload.pause(timeout=DEADLINE)
        assert time.monotonic() - t0 < DEADLINE / 2  # seen dead, not waited out
        # nobody writes any more: the owner harvests directly, every mark included
        marks = (guest.memory.dirty | guest.memory.harvest).astype(bool)
        assert marks.any()
        harvested = np.concatenate(list(guest.harvest_dirty(timeout=30).values()))
        assert np.array_equal(harvested, marks) and not guest.memory.dirty.any()


def test_a_workload_that_cannot_attach_fails_start_quickly():
    mem = GuestMemory.create([BlockSpec("ram", MiB)])
    try:
        mem.unlink()  # the name is gone: the child's attach fails
        t0 = time.monotonic()
        with pytest.raises(WorkloadError, match="process ended"):
            Workload.start(mem, WorkloadSpec(dirty_rate=MiB), timeout=DEADLINE)
        assert time.monotonic() - t0 < DEADLINE / 2  # seen dead, not waited out
    finally:
        mem.close()


def test_destination_workload_continues_from_the_loaded_cpu():
    devices = ["timer", "globalstate", "cpu"]
    with make_guest(50 * MiB, devices=devices) as src:
        src.start()
        assert _writes_exceed(src, 0)
        src.global_state_store()
        src.stop("finish-migrate")
        saved = {s.idstr: s.values for s in src.save_devices()}
        assert saved["cpu"]["tsc"] > 0 and saved["cpu"]["cpu/harness"]["writes"] > 0
        spec = GuestSpec(blocks=src.spec.blocks, seed=17, fill=0.5,
                         workload=src.spec.workload, devices=devices)
        with Guest.create(spec, initial_content=False) as dest:
            for idstr, values in saved.items():
                dest.load_device(idstr, 0, values)
            for name, ram in src.memory.ram.items():  # what RAM migration would do
                dest.memory.ram[name][:] = ram
            dest.set_versions(src.versions())
            dest.finish_incoming()
            assert dest.runstate == "running"
            assert _writes_exceed(dest, dest.workload.writes)
            dest.stop()
            after = {s.idstr: s.values for s in dest.save_devices()}["cpu"]
            assert after["tsc"] > saved["cpu"]["tsc"]
            assert after["cpu/harness"]["writes"] > saved["cpu"]["cpu/harness"]["writes"]
            assert all(p.size == 0 for p in dest.mismatched_pages().values())


ORPHAN_SCRIPT = """
import sys, time
from harness.guest import BlockSpec, Guest, GuestSpec, WorkloadSpec
g = Guest.create(GuestSpec(blocks=[BlockSpec("ram", 1 << 20)],
                           workload=WorkloadSpec(dirty_rate=1 << 20)))
g.start()
print(g.workload.pid, g.memory.name, flush=True)
time.sleep(120)
"""


def test_workload_exits_when_its_parent_is_killed():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    pid, name = None, None
    try:
        line = parent.stdout.readline()  # the parent prints once the workload runs
        pid, name = int(line.split()[0]), line.split()[1]
        workload = psutil.Process(pid)
        assert workload.ppid() == parent.pid
        parent.kill()
        parent.wait(30)
        workload.wait(10)  # raises TimeoutExpired if the orphan keeps running
        assert pid_gone(pid)
        deadline = time.monotonic() + 10  # the dead owner's tracker unlinks its segment
        while Path("/dev/shm", name).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path("/dev/shm", name).exists()
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.communicate(timeout=30)
        if pid is not None and not pid_gone(pid):
            psutil.Process(pid).kill()
        if name is not None:
            Path("/dev/shm", name).unlink(missing_ok=True)


def test_a_2gib_guest_costs_only_what_it_touches():
    shm = shutil.disk_usage("/dev/shm")
    if shm.total < 3 << 30 or shm.free < 3 << 30:
        pytest.skip(f"/dev/shm has {shm.free >> 20} MiB free of {shm.total >> 20} MiB; "
                    f"this test needs 3 GiB")
    me = psutil.Process()
    rss0 = me.memory_info().rss
    spec = GuestSpec(blocks=[BlockSpec("ram", 2 << 30), BlockSpec("vga.vram", 16 * MiB)],
                     fill=0.001, seed=3,
                     workload=WorkloadSpec(dirty_rate=64 * MiB, pattern="hotset",
                                           hotset=8 * MiB, seed=1))
    with Guest.create(spec) as guest:
        guest.start()
        time.sleep(0.2)
        guest.stop()
        allocated = os.stat(f"/dev/shm/{guest.memory.name}").st_blocks * 512
        worker = psutil.Process(guest.workload.pid).memory_info().rss
        assert me.memory_info().rss - rss0 < 128 * MiB
        assert worker < 256 * MiB
        assert allocated < 64 * MiB, allocated / MiB
        assert guest.memory.npages == (2 << 30) // PAGE_SIZE + 4096
        assert guest.harvest_dirty()["ram"].sum() > 0
        # the oracle check and the digests read only backed RAM pages: still sparse
        backed = guest.memory.backed_pages("ram")
        assert all(p.size == 0 for p in guest.mismatched_pages().values())
        assert guest.digests()["ram"].size == (2 << 30) // PAGE_SIZE
        assert np.array_equal(guest.memory.backed_pages("ram"), backed)
        assert backed.sum() * PAGE_SIZE < 64 * MiB
        assert me.memory_info().rss - rss0 < 256 * MiB
