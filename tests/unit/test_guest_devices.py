"""harness.guest.devices and Guest's device API: vmstate round trips, section ids, blocker."""

from __future__ import annotations

import numpy as np
import pytest

from harness.guest import Guest, GuestSpec, MigrationBlockedError, make_devices
from harness.guest.devices import CPU, GLOBALSTATE, SECTION_IDS, TIMER
from harness.guest.leaks import leftover_segments
from harness.guest.memory import PAGE_SIZE, BlockSpec
from harness.guest.workload import Ctl
from harness.protocol import devices as std
from harness.protocol.decoder import decode_all
from harness.protocol.events import DeviceState
from harness.protocol.savevm import DeviceSave, PausedStream
from harness.protocol.vmstate import load_state, save_state
from harness.protocol.wire import Reader

ALL = ["timer", "globalstate", "cpu"]


@pytest.fixture(autouse=True)
def no_leftovers():
    before = set(leftover_segments())
    yield
    assert set(leftover_segments()) <= before, "a test left a /dev/shm segment behind"


@pytest.fixture
def source():
    spec = GuestSpec(blocks=[BlockSpec("ram", 64 * PAGE_SIZE)], fill=0.5, seed=5, devices=ALL)
    with Guest.create(spec) as guest:
        yield guest


def set_cpu(guest: Guest, writes: int) -> None:
    words = guest.memory.control.view(np.uint64)
    words[Ctl.REGS:Ctl.REGS + 16] = np.arange(16, dtype=np.uint64) * 0x1111_1111_1111_1111
    words[Ctl.RIP] = 0xFFFF_FFFF_8100_0000
    words[Ctl.RFLAGS] = 0x246
    guest.memory.control[Ctl.TSC] = -5
    words[Ctl.PAGES_WRITTEN_TOTAL] = writes


def roundtrip(vmsd, values):
    out = bytearray()
    save_state(vmsd, values, out)
    r = Reader(out, 0, len(out), closed=True)
    loaded = load_state(r, vmsd, vmsd.version_id)
    assert r.pos == len(out)
    return bytes(out), loaded


def test_reexports_are_the_protocol_descriptions():
    assert TIMER is std.TIMER and GLOBALSTATE is std.GLOBALSTATE


def test_make_devices_knows_four_names_and_their_section_ids():
    devs = make_devices(["blocker", "cpu", "globalstate", "timer"])
    assert [(d.idstr, d.section_id, d.instance_id) for d in devs] == [
        ("blocker", 6, 0), ("cpu", 5, 0), ("globalstate", 4, 0), ("timer", 0, 0)]
    assert SECTION_IDS["ram"] == 2
    assert [d.unmigratable for d in devs] == [True, False, False, False]
    with pytest.raises(ValueError, match="known devices: timer, globalstate, cpu, blocker"):
        make_devices(["timer", "virtio-net"])
    with pytest.raises(ValueError, match="twice"):
        make_devices(["cpu", "cpu"])


@pytest.mark.parametrize("writes", [0, 12345])
def test_cpu_round_trips_through_vmstate(source, writes):
    set_cpu(source, writes)
    saved = {s.idstr: s for s in source.save_devices()}
    values = saved["cpu"].values
    assert values["regs"][15] == 15 * 0x1111_1111_1111_1111 and values["tsc"] == -5
    raw, loaded = roundtrip(CPU, values)
    assert (b"cpu/harness" in raw) == (writes > 0)
    assert len(raw) == 16 * 8 + 3 * 8 + (0 if writes == 0 else 1 + 1 + 11 + 4 + 8)
    with Guest.create(GuestSpec(blocks=source.spec.blocks, devices=ALL),
                      initial_content=False) as dest:
        dest.load_device("cpu", 0, loaded)
        assert dest.save_devices()[-1].values == values
        assert np.array_equal(dest.memory.control[Ctl.REGS:Ctl.REGS + 16],
                              source.memory.control[Ctl.REGS:Ctl.REGS + 16])
        assert int(dest.memory.control[Ctl.PAGES_WRITTEN_TOTAL]) == writes


def test_timer_and_globalstate_round_trip(source):
    source.timer = {"cpu_ticks_offset": 99, "cpu_clock_offset": -7}
    source.start()  # no workload: just the runstate
    source.global_state_store()
    source.stop("finish-migrate")
    saved = {s.idstr: s for s in source.save_devices()}
    assert [s.section_id for s in source.save_devices()] == [0, 4, 5]
    assert saved["globalstate"].values == std.globalstate_values("running")
    with Guest.create(GuestSpec(devices=ALL), initial_content=False) as dest:
        assert dest.runstate == "inmigrate"
        for name in ("timer", "globalstate"):
            _, loaded = roundtrip(saved[name].vmsd, saved[name].values)
            dest.load_device(name, 0, loaded)
        assert dest.timer == source.timer
        assert dest.incoming_runstate == "running" and dest.runstate == "inmigrate"


def test_globalstate_without_store_saves_the_current_runstate_and_paused_stays_paused():
    with Guest.create(GuestSpec(), initial_content=True) as src, \
            Guest.create(GuestSpec(), initial_content=False) as dest:
        assert src.runstate == "prelaunch"
        src.stop("paused")
        values = {s.idstr: s.values for s in src.save_devices()}["globalstate"]
        dest.load_device("globalstate", 0, values)
        dest.finish_incoming()
        assert dest.runstate == "paused"


def test_unknown_section_is_refused_with_qemus_words(source):
    with pytest.raises(KeyError, match="Unknown savevm section or instance 'cpu' 1"):
        source.load_device("cpu", 1, {})


def test_blocker_makes_the_guest_unmigratable():
    with Guest.create(GuestSpec(devices=["timer", "blocker"])) as guest:
        assert guest.unmigratable_devices() == ["blocker"]
        with pytest.raises(MigrationBlockedError,
                           match="State blocked by non-migratable device 'blocker'"):
            guest.save_devices()
        with pytest.raises(MigrationBlockedError):
            guest.device("blocker").save(guest)
    with Guest.create(GuestSpec()) as guest:
        assert guest.unmigratable_devices() == []


def test_a_paused_stream_carries_ram_and_devices_from_source_to_destination(source):
    """Guest -> protocol encoder -> decoder -> Guest: content and cpu state arrive."""
    set_cpu(source, 77)
    source.stop("paused")
    assert source.machine == "none" and list(source.ram) == ["ram"]
    devices = [DeviceSave(s.section_id, s.idstr, s.vmsd, s.values, s.instance_id)
               for s in source.save_devices()]
    stream = PausedStream(ram=source.memory.ram, devices=devices).encode()
    with Guest.create(GuestSpec(blocks=source.spec.blocks, devices=ALL, seed=5, fill=0.5),
                      initial_content=False) as dest:
        assert dest.mismatched_pages()["ram"].size > 0  # zeroed RAM is not the content
        events = decode_all(stream, ram=dest.memory.ram, devices=dest.device_descriptions())
        for ev in events:
            if isinstance(ev, DeviceState):
                dest.load_device(ev.idstr, ev.instance_id, ev.state)
        assert np.array_equal(dest.digests()["ram"], source.digests()["ram"])
        assert dest.mismatched_pages()["ram"].size == 0
        assert dest.save_devices()[-1].values == source.save_devices()[-1].values
