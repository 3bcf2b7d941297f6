"""The invariants over a real guest's evidence (harness/invariants): where it runs is
where its heartbeat advanced (or where it is blocked in a paused postcopy), and
`memory: consistent` judges the wave and every other block."""

from __future__ import annotations

import numpy as np

from harness.guest.content import page_digests
from harness.invariants import check_all
from harness.invariants.base import Evidence, Expectations
from harness.realguest.image import GuestProgram
from harness.runner.result import PeerOutcome, TimelineEntry
from tests.unit.test_realguest_wave import wave_ram

MiB = 1 << 20
PROGRAM = GuestProgram(memory=16 * MiB, dirty_rate=MiB)


def _beat(advanced: bool) -> dict:
    before = {"ticks": 100, "gen": 2, "cursor": 0x200000, "pages_written": 10}
    after = {**before, "ticks": 500 if advanced else 100}
    return {"before": before, "after": after, "window": 0.4, "advanced": advanced}


def _evidence(src_runs: bool, dst_runs: bool, dst_status: str = "completed",
              **expect: str) -> Evidence:
    src = PeerOutcome(kind="qemu", status="completed", runstate="postmigrate",
                      heartbeat=_beat(src_runs))
    dst = PeerOutcome(kind="qemu", status=dst_status, runstate="running",
                      heartbeat=_beat(dst_runs))
    ev = Evidence(Expectations(**expect), src, dst)
    ev.timeline = [TimelineEntry(0.1, "destination", "started", {"runstate": "inmigrate"}, 1.0),
                   TimelineEntry(0.2, "source", "started", {"runstate": "running"}, 2.0),
                   TimelineEntry(0.5, "source", "STOP", {}, 3.0),
                   TimelineEntry(0.6, "destination", "RESUME", {}, 4.0)]
    return ev


def _result(ev: Evidence, name: str):
    return {r.name: r for r in check_all(ev)}[name]


def test_the_guest_runs_where_its_heartbeat_advanced():
    ok = _result(_evidence(False, True, guest_runs_on="destination"), "guest-runs-on")
    assert ok.ok and "destination running, heartbeat +400 ticks" in ok.detail
    # QEMU says running, but the guest's code does not run: nowhere
    still = _result(_evidence(False, False, guest_runs_on="destination"), "guest-runs-on")
    assert not still.ok and still.detail.startswith("runs nowhere")


def test_both_heartbeats_advancing_is_a_split_brain():
    ev = _evidence(True, True, guest_runs_on="destination")
    assert not _result(ev, "guest-runs-on").ok
    assert "split brain" in _result(ev, "guest-runs-on").detail
    assert not _result(ev, "one-runner").ok


def test_a_guest_blocked_in_a_paused_postcopy_is_on_the_destination():
    ev = _evidence(False, False, dst_status="postcopy-paused", guest_runs_on="destination")
    result = _result(ev, "guest-runs-on")
    assert result.ok and "blocked waiting for pages" in result.detail
    assert _result(ev, "one-runner").ok


def _memory(ev: Evidence, src_ram: np.ndarray, dst_ram: np.ndarray, rom: bytes = b"") -> None:
    ev.program = PROGRAM
    rom_src = np.zeros(4096, dtype=np.uint8)
    rom_dst = rom_src.copy()
    rom_dst[: len(rom)] = np.frombuffer(rom, dtype=np.uint8)
    ev.source_memory = {"pc.ram": src_ram, "pc.rom": rom_src}
    ev.destination_memory = {"pc.ram": dst_ram, "pc.rom": rom_dst}
    # as the runner does (runner/real_guest.py): per-page digests of every block read
    ev.source_digests = {k: page_digests(v) for k, v in ev.source_memory.items()}
    ev.destination_digests = {k: page_digests(v) for k, v in ev.destination_memory.items()}


def test_consistent_passes_a_destination_ahead_and_names_a_changed_rom_page():
    src = wave_ram(PROGRAM, gen=3, cursor_page=10)
    dst = wave_ram(PROGRAM, gen=4, cursor_page=2)
    ev = _evidence(False, True, memory="consistent")
    _memory(ev, src, dst)
    good = _result(ev, "memory-consistent")
    assert good.ok and "unbroken wave" in good.detail
    _memory(ev, src, dst, rom=b"\x01")
    bad = _result(ev, "memory-consistent")
    assert not bad.ok and "pc.rom: 1 pages differ (first at 0x0)" in bad.detail


def test_source_intact_of_a_real_guest_is_its_wave():
    ev = _evidence(True, False, memory="source-intact")
    ram = wave_ram(PROGRAM, gen=3, cursor_page=10)
    _memory(ev, ram, ram)
    assert _result(ev, "memory-source-intact").ok
    broken = ram.copy()
    broken[0x300000] ^= 0xFF  # the gen word of one swept page
    _memory(ev, broken, ram)
    result = _result(ev, "memory-source-intact")
    assert not result.ok and "0x300000" in result.detail
