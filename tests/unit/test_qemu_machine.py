"""harness.qemu.machine: accelerator choice, machine names, the command line of a real machine.

Strategy: accel resolution reads two inputs it takes as arguments, so each case gets a
written /proc/cpuinfo and a device path that is a real /dev/kvm, a plain file (opens,
but is no KVM: the ioctl fails) or nothing; the host's own /proc/cpuinfo and /dev/kvm are
checked against what grep and os.open say.  Machine names are checked against the
installed binary's `-machine help` (skipped without QEMU); the command line is compared
with fact F0's line element by element.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.qemu import find_qemu
from harness.qemu.machine import (
    MachineError,
    _machine_list,
    _parse_machine_help,
    hardware_virtualization,
    kvm_usable,
    machine_args,
    machine_list,
    resolve_accel,
    validate_machine,
)
from tests.qemu_env import NO_QEMU

KVM_OK, _ = kvm_usable()
needs_kvm = pytest.mark.skipif(not KVM_OK, reason="/dev/kvm is not usable here")
needs_qemu = pytest.mark.skipif(find_qemu() is None, reason=NO_QEMU)
MiB = 1 << 20


def cpuinfo(tmp_path: Path, *flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    line = " ".join(["fpu", "vme", "hypervisor", *flags])
    path.write_text(f"processor\t: 0\nflags\t\t: {line}\n\nprocessor\t: 1\nflags\t\t: {line}\n")
    return path


# ---------------------------------------------------------------------- accelerator
def test_tcg_is_tcg_whatever_the_host(tmp_path: Path) -> None:
    assert resolve_accel("tcg", cpuinfo=cpuinfo(tmp_path, "vmx"),
                         kvm_device=tmp_path / "none") == ("tcg", "tcg: requested")


def test_an_unknown_accel_is_refused() -> None:
    with pytest.raises(MachineError, match="auto, kvm, tcg"):
        resolve_accel("hvf")


def test_cpuinfo_flags_vmx_and_svm_count_and_other_flags_do_not(tmp_path: Path) -> None:
    assert hardware_virtualization(cpuinfo(tmp_path, "vmx"))
    assert hardware_virtualization(cpuinfo(tmp_path, "svm"))
    assert not hardware_virtualization(cpuinfo(tmp_path, "vmxx", "sse4_2"))


def test_a_plain_file_or_no_file_is_not_a_usable_kvm(tmp_path: Path) -> None:
    plain = tmp_path / "kvm"
    plain.write_bytes(b"")
    usable, why = kvm_usable(plain)
    assert not usable and "KVM_GET_API_VERSION" in why
    usable, why = kvm_usable(tmp_path / "absent")
    assert not usable and "cannot be opened" in why


def test_auto_without_a_usable_kvm_is_tcg_and_says_why(tmp_path: Path) -> None:
    accel, why = resolve_accel("auto", cpuinfo=cpuinfo(tmp_path, "vmx"),
                               kvm_device=tmp_path / "absent")
    assert accel == "tcg"
    assert why.startswith("tcg: ") and "absent" in why and "cannot be opened" in why


def test_kvm_without_a_usable_kvm_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(MachineError) as refused:
        resolve_accel("kvm", cpuinfo=cpuinfo(tmp_path, "vmx"), kvm_device=tmp_path / "absent")
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("accel kvm: ")


@needs_kvm
def test_auto_with_kvm_and_vmx_is_kvm(tmp_path: Path) -> None:
    accel, why = resolve_accel("auto", cpuinfo=cpuinfo(tmp_path, "vmx"))
    assert (accel, why) == ("kvm", "kvm: /dev/kvm is usable and the CPU has vmx/svm")


@needs_kvm
def test_auto_with_a_software_kvm_is_tcg_and_names_the_slowdown(tmp_path: Path) -> None:
    fake = cpuinfo(tmp_path)
    accel, why = resolve_accel("auto", cpuinfo=fake)
    assert accel == "tcg"
    assert why == (f"tcg: /dev/kvm is a software KVM (no vmx/svm in {fake}), where this "
                   f"guest runs ~95x slower than under TCG")
    accel, why = resolve_accel("kvm", cpuinfo=fake)
    assert accel == "kvm" and "although /dev/kvm is a software KVM" in why


def test_this_host_resolves_as_its_cpuinfo_and_kvm_device_say() -> None:
    flags = Path("/proc/cpuinfo").read_text()
    hardware = any(f" {f}" in line for line in flags.splitlines() if line.startswith("flags")
                   for f in ("vmx", "svm"))
    assert hardware_virtualization() == hardware
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and KVM_OK
    accel, why = resolve_accel("auto")
    assert accel == ("kvm" if usable and hardware else "tcg")
    if usable and not hardware:
        assert "software KVM" in why


# ---------------------------------------------------------------------- machine names
HELP = """Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
none                 empty machine
"""


def test_machine_help_is_parsed_into_names_and_what_aliases_stand_for() -> None:
    assert _parse_machine_help(HELP) == {
        "microvm": "microvm", "pc": "pc-i440fx-7.2", "pc-i440fx-7.2": "pc-i440fx-7.2",
        "q35": "pc-q35-7.2", "pc-q35-7.2": "pc-q35-7.2", "none": "none"}


@needs_qemu
@pytest.mark.parametrize("name", ["pc", "q35", "pc-i440fx-7.2", "pc-q35-7.2",
                                  "pc-i440fx-5.1", "none"])
def test_pc_q35_their_versions_and_none_are_accepted(name: str) -> None:
    assert validate_machine(name) == name


@needs_qemu
def test_the_installed_binary_lists_what_pc_and_q35_stand_for() -> None:
    machines = machine_list()
    assert machines["pc"].startswith("pc-i440fx-")
    assert machines["q35"].startswith("pc-q35-")


@needs_qemu
def test_an_unknown_machine_is_refused_naming_the_close_matches() -> None:
    with pytest.raises(MachineError) as refused:
        validate_machine("pc-q35-9.9")
    text = str(refused.value)
    assert "not offered by" in text and "close matches: pc-q35-" in text
    with pytest.raises(MachineError, match="close matches: q35"):
        validate_machine("q53")


@needs_qemu
def test_a_machine_qemu_offers_but_the_harness_cannot_boot_is_refused() -> None:
    with pytest.raises(MachineError, match="offers it, but the harness runs its guest only"):
        validate_machine("microvm")


@needs_qemu
def test_machine_help_runs_once_per_binary() -> None:
    machine_list()
    before = _machine_list.cache_info()
    machine_list()
    after = _machine_list.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


# ---------------------------------------------------------------------- command line
def test_a_source_is_fact_f0s_line(tmp_path: Path) -> None:
    args = machine_args("pc", "tcg", 256 * MiB, tmp_path / "guest.img",
                        tmp_path / "src.serial", "source", paused=False)
    assert args == ["-nodefaults", "-no-user-config", "-display", "none", "-M", "pc",
                    "-accel", "tcg", "-m", "256M",
                    "-drive", f"file={tmp_path}/guest.img,format=raw,if=ide",
                    "-serial", f"file:{tmp_path}/src.serial"]


def test_a_destination_waits_for_defer_and_may_be_paused(tmp_path: Path) -> None:
    args = machine_args("q35", "tcg", 128 * MiB, None, None, "destination", paused=True)
    assert args[-3:] == ["-incoming", "defer", "-S"]
    assert "-drive" not in args and "-serial" not in args


def test_kvm_adds_the_kvmclock_and_vapic_switches(tmp_path: Path) -> None:
    args = machine_args("pc", "kvm", 256 * MiB, None, None, "source", paused=False)
    assert args[args.index("-cpu") + 1] == "qemu64,kvmclock=off"
    globals_ = [args[i + 1] for i, a in enumerate(args) if a == "-global"]
    assert globals_ == ["apic.vapic=off", "kvm-apic.vapic=off"]
    assert "-cpu" not in machine_args("pc", "tcg", 256 * MiB, None, None, "source", False)


def test_none_keeps_the_historical_line() -> None:
    assert machine_args("none", "tcg", 16 * MiB, None, None, "destination", True) == [
        "-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
        "-M", "none", "-m", "16M", "-incoming", "defer", "-S"]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MachineError, match="whole number of MiB"):
        machine_args("pc", "tcg", 256 * MiB + 4096, None, None, "source", False)
    with pytest.raises(MachineError, match="resolve it first"):
        machine_args("pc", "auto", 256 * MiB, None, None, "source", False)
    with pytest.raises(MachineError, match="role"):
        machine_args("pc", "tcg", 256 * MiB, None, None, "proxy", False)
    with pytest.raises(MachineError, match="comma"):
        machine_args("pc", "tcg", 256 * MiB, tmp_path / "a,b.img", None, "source", False)
