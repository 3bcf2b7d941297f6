"""The real guest in a real QEMU (TCG): it boots on pc and q35, keeps time, holds its rate.

Strategy: each test writes the image, starts QEMU with F0's command line through
`QemuProcess` (always reaped), waits for 'S' on the serial file, then measures through
the heartbeat (HMP `xp`, the guest keeps running): ticks (ms of the guest's ACPI PM
timer) against wall time and pages written against wall time (the dirty rate, +-20 %),
each over about a second.  A
stopped guest's RAM (pmemsave) must be a perfect wave at the heartbeat's position, and
its serial letters must count its sweeps.  An idle guest (rate 0) writes no page and
leaves the host core alone (it halts between ticks).  One precopy migration QEMU -> QEMU
(F0's sequence) shows `check_consistent` passing on real source and destination RAM.
Under KVM (here PVM, which emulates this guest: 3-4 s to boot, F16) one test checks the
rate too, when /dev/kvm is usable.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest

from harness.qemu import QemuProcess, pmemsave, wait_migration
from harness.realguest.heartbeat import Heartbeat, read_heartbeat, wait_heartbeat
from harness.realguest.image import GuestProgram, write_image
from harness.realguest.wave import check_consistent, pages_ahead, read_wave
from tests.qemu_env import QEMU_MARKS

pytestmark = [*QEMU_MARKS]

MiB = 1 << 20
BOOT_DEADLINE = 10.0       # spawn to 'S': 0.1-0.7 s measured (F16), the machine is shared
MEASURE = 1.0              # seconds a rate is measured over
TOLERANCE = 0.20


KVM_ARGS = ["-cpu", "qemu64,kvmclock=off", "-global", "apic.vapic=off",
            "-global", "kvm-apic.vapic=off"]  # F0: what a KVM peer adds (F35, F36)


def qemu_line(image: Path, machine: str, program: GuestProgram, serial: Path,
              accel: str = "tcg") -> list[str]:
    """F0's command line without the QMP option QemuProcess adds."""
    return ["-nodefaults", "-display", "none", "-M", machine, "-accel", accel,
            *(KVM_ARGS if accel == "kvm" else []),
            "-m", str(program.memory // MiB), "-drive", f"file={image},format=raw,if=ide",
            "-serial", f"file:{serial}"]


@contextmanager
def running_guest(workdir: Path, machine: str, program: GuestProgram, accel: str = "tcg",
                  boot_deadline: float = BOOT_DEADLINE) -> Iterator[tuple[QemuProcess, Path]]:
    """QEMU (F0's line) running `program`, its loop started; reaped on every path."""
    image = write_image(program, workdir / f"{machine}.img")
    serial = workdir / f"{machine}.serial"
    qemu = QemuProcess(qemu_line(image, machine, program, serial, accel), workdir,
                       name=machine)
    with qemu:
        wait_for_serial(serial, b"S", boot_deadline, qemu)
        wait_heartbeat(qemu.qmp, timeout=boot_deadline)
        yield qemu, serial


def wait_for_serial(serial: Path, wanted: bytes, timeout: float, qemu: QemuProcess) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in _read(serial):
        if qemu.returncode is not None or time.monotonic() >= deadline:
            pytest.fail(f"no {wanted!r} on serial after {timeout}s (serial "
                        f"{_read(serial)[:80]!r}, QEMU exit {qemu.returncode}, stderr "
                        f"{qemu.stderr_text()[-500:]!r})")
        time.sleep(0.01)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        return b""


def sample(qemu: QemuProcess) -> tuple[float, Heartbeat]:
    before = time.monotonic()
    beat = read_heartbeat(qemu.qmp)
    return (before + time.monotonic()) / 2, beat


def rates(qemu: QemuProcess, seconds: float = MEASURE) -> tuple[float, float]:
    """(ticks per second, bytes written per second) over `seconds` of wall time."""
    t0, first = sample(qemu)
    time.sleep(seconds)
    t1, last = sample(qemu)
    elapsed = t1 - t0
    return ((last.ticks - first.ticks) / elapsed,
            (last.pages_written - first.pages_written) * 4096 / elapsed)


def within(measured: float, target: float) -> bool:
    return abs(measured - target) <= TOLERANCE * target


# ---------------------------------------------------------------------- boot, time, rate
@pytest.mark.parametrize(("machine", "rate"), [
    ("pc", 4 * MiB), ("pc", 64 * MiB), ("pc", 512 * MiB), ("q35", 64 * MiB)])
def test_guest_boots_ticks_at_1khz_and_holds_its_dirty_rate(
        tmp_path: Path, machine: str, rate: int) -> None:
    program = GuestProgram(memory=256 * MiB, dirty_rate=rate)
    with running_guest(tmp_path, machine, program) as (qemu, serial):
        time.sleep(0.1)               # past the first ticks' catch-up
        tick_hz, bytes_per_s = rates(qemu)
        print(f"{machine} {rate // MiB} MiB/s: {tick_hz:.0f} ticks/s "
              f"({tick_hz / 1000 - 1:+.1%}), {bytes_per_s / MiB:.2f} MiB/s "
              f"({bytes_per_s / program.paced_rate - 1:+.1%})")
        assert within(tick_hz, 1000), f"{tick_hz:.0f} ticks/s, 1000 wanted"
        assert within(bytes_per_s, program.paced_rate), (
            f"{bytes_per_s / MiB:.2f} MiB/s written, {rate / MiB} MiB/s asked")
        assert b"." in _read(serial), "a '.' every 1000 ticks"


# ---------------------------------------------------------------------- the wave
@pytest.mark.parametrize(("machine", "program"), [
    ("pc", GuestProgram(memory=256 * MiB, dirty_rate=512 * MiB)),
    ("q35", GuestProgram(memory=256 * MiB, dirty_rate=512 * MiB, pattern="hotset",
                         hotset=16 * MiB))], ids=["pc-uniform", "q35-hotset"])
def test_a_stopped_guest_is_a_perfect_wave_at_its_heartbeat(
        tmp_path: Path, machine: str, program: GuestProgram) -> None:
    with running_guest(tmp_path, machine, program) as (qemu, serial):
        time.sleep(0.5)
        qemu.qmp.execute("stop")
        beat = read_heartbeat(qemu.qmp)
        pmemsave(qemu.qmp, 0, program.memory, tmp_path / "ram.bin")
        letters = _read(serial)
    wave = read_wave(np.fromfile(tmp_path / "ram.bin", np.uint8), program)
    assert wave.ok, wave.problems
    assert pages_ahead(wave, beat.gen, beat.cursor, program) in (0, 1), (
        f"memory at (gen {wave.gen}, {wave.cursor:#x}), heartbeat at "
        f"(gen {beat.gen}, {beat.cursor:#x})")
    assert beat.gen >= 2 or program.pattern == "uniform"
    sweeps = bytes(c for c in letters if ord("a") <= c <= ord("p"))
    assert len(sweeps) == beat.gen - 1, "one letter per finished sweep"
    if sweeps:
        assert sweeps[-1] == ord("a") + ((beat.gen - 1) & 15)


def test_an_idle_guest_writes_nothing_and_halts(tmp_path: Path) -> None:
    program = GuestProgram(memory=256 * MiB, dirty_rate=0)
    with running_guest(tmp_path, "pc", program) as (qemu, _):
        process = psutil.Process(qemu.pid)
        cpu0, (t0, first) = sum(process.cpu_times()[:2]), sample(qemu)
        time.sleep(MEASURE)
        cpu1, (t1, last) = sum(process.cpu_times()[:2]), sample(qemu)
        qemu.qmp.execute("stop")
        pmemsave(qemu.qmp, 0, program.memory, tmp_path / "ram.bin")
    assert last.ticks - first.ticks >= (1 - TOLERANCE) * 1000 * (t1 - t0)
    assert (first.pages_written, last.pages_written) == (0, 0)
    assert (cpu1 - cpu0) / (t1 - t0) < 0.5, "an idle guest halts: QEMU uses < half a core"
    wave = read_wave(np.fromfile(tmp_path / "ram.bin", np.uint8), program)
    assert wave.ok, wave.problems
    assert (wave.gen, wave.cursor) == (1, program.start), "every page still at gen 0"


def test_a_precopy_migrated_guest_is_consistent(tmp_path: Path) -> None:
    program = GuestProgram(memory=256 * MiB, dirty_rate=64 * MiB)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    uri = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    image = write_image(program, tmp_path / "guest.img")
    destination = QemuProcess([*qemu_line(image, "pc", program, tmp_path / "dst.serial"),
                               "-incoming", "defer", "-S"], tmp_path, name="dst")
    with running_guest(tmp_path, "pc", program) as (source, _), destination:
        time.sleep(0.2)
        source.qmp.execute("migrate-set-parameters", {"max-bandwidth": 0})
        destination.qmp.execute("migrate-incoming", {"uri": uri})
        source.qmp.execute("migrate", {"uri": uri})
        assert wait_migration(source.qmp, timeout=60)["status"] == "completed"
        pmemsave(source.qmp, 0, program.memory, tmp_path / "src.bin")
        destination.qmp.execute("cont")
        time.sleep(0.3)
        destination.qmp.execute("stop")
        pmemsave(destination.qmp, 0, program.memory, tmp_path / "dst.bin")
    before = np.fromfile(tmp_path / "src.bin", np.uint8)
    after = np.fromfile(tmp_path / "dst.bin", np.uint8)
    assert check_consistent(before, after, program) == []
    left = read_wave(before, program)
    assert pages_ahead(read_wave(after, program), left.gen, left.cursor, program) > 1000, (
        "the destination ran the guest on")


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm not usable")
def test_under_kvm_the_guest_boots_and_holds_its_dirty_rate(tmp_path: Path) -> None:
    program = GuestProgram(memory=256 * MiB, dirty_rate=4 * MiB)
    with running_guest(tmp_path, "pc", program, accel="kvm", boot_deadline=30) as (qemu, _):
        tick_hz, bytes_per_s = rates(qemu)
    print(f"kvm pc 4 MiB/s: {tick_hz:.0f} ticks/s, {bytes_per_s / MiB:.2f} MiB/s")
    assert within(tick_hz, 1000)
    assert within(bytes_per_s, program.paced_rate)
