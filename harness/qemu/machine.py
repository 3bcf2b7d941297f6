"""The command line of a real QEMU machine (pc / q35) as a migration peer, and its accelerator.

Strategy: three small questions, answered from what this host and this binary say.
- Which accelerator?  `resolve_accel` picks KVM for "auto" only when /dev/kvm answers
  KVM_GET_API_VERSION *and* the CPU has hardware virtualization (vmx/svm in
  /proc/cpuinfo): a /dev/kvm without them is a software KVM (PVM here), where the
  harness's real-mode / non-paged guest is emulated instruction by instruction and runs
  about 95x slower than under TCG (facts F1, F14 of qemu-7.2-real-guests.md).  The reason
  is returned as text, for the report.
- Which machine?  `validate_machine` checks a name against `-machine help` of the binary
  (parsed once per binary path and mtime) and accepts the pc and q35 families, their
  aliases and `none`; an unknown name is refused naming the close matches.
- Which arguments?  `machine_args` builds fact F0's line.  Under KVM it adds
  `-cpu qemu64,kvmclock=off` (F35: KVM updates SeaBIOS's pvclock page outside the
  stream) and turns the kvmvapic option ROM off (F36: re-patched on load when the
  accelerators differ).  Nothing here runs QEMU except `-machine help`.
"""

from __future__ import annotations

import difflib
import fcntl
import functools
import os
import re
import subprocess
from pathlib import Path

from harness.errors import ScenarioFailure

from .launch import QEMU_BINARY, find_qemu

__all__ = ["KVM_SLOWDOWN", "MachineError", "hardware_virtualization", "kvm_usable",
           "machine_args", "machine_list", "resolve_accel", "validate_machine"]

ACCELS = ("auto", "kvm", "tcg")
ROLES = ("source", "destination")
#: how much slower the harness guest ran under the software KVM of the measuring host (F14)
KVM_SLOWDOWN = 95
_KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00), linux/kvm.h
_KVM_API_VERSION = 12
_FAMILIES = re.compile(r"^(pc|q35|pc-i440fx-[0-9.]+|pc-q35-[0-9.]+|none)$")
_HELP_LINE = re.compile(r"^(\S+)\s+(.*?)\s*$")
_ALIAS = re.compile(r"\(alias of (\S+)\)")
_HELP_TIMEOUT = 10.0


class MachineError(ScenarioFailure, ValueError):
    """A machine or accelerator that cannot be used here; the message is one clear line."""


# ---------------------------------------------------------------------- accelerator
def kvm_usable(device: str | os.PathLike[str] = "/dev/kvm") -> tuple[bool, str]:
    """Whether this process can open `device` read-write and it answers KVM's API
    version 12 (what QEMU checks first); the reason when it cannot."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"{os.fspath(device)} cannot be opened read-write ({exc.strerror})"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as exc:
        return False, f"{os.fspath(device)} does not answer KVM_GET_API_VERSION ({exc.strerror})"
    finally:
        os.close(fd)
    if version != _KVM_API_VERSION:
        return False, f"{os.fspath(device)} speaks KVM API {version}, not {_KVM_API_VERSION}"
    return True, f"{os.fspath(device)} is usable"


def hardware_virtualization(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """Whether any `flags` line of `cpuinfo` has vmx (Intel VT-x) or svm (AMD-V)."""
    with open(cpuinfo, encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "flags" and {"vmx", "svm"} & set(value.split()):
                return True
    return False


def resolve_accel(requested: str, *, cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo",
                  kvm_device: str | os.PathLike[str] = "/dev/kvm") -> tuple[str, str]:
    """("kvm" | "tcg", why) for `requested` in auto | kvm | tcg.

    "auto" is KVM only with a usable /dev/kvm on a CPU with vmx/svm; "kvm" is refused
    (MachineError) when /dev/kvm is not usable, and taken, with a warning in `why`, on
    a software KVM."""
    if requested not in ACCELS:
        raise MachineError(f"accel {requested!r}: expected one of {', '.join(ACCELS)}")
    if requested == "tcg":
        return "tcg", "tcg: requested"
    usable, device_why = kvm_usable(kvm_device)
    hardware = usable and hardware_virtualization(cpuinfo)
    software = (f"{os.fspath(kvm_device)} is a software KVM (no vmx/svm in "
                f"{os.fspath(cpuinfo)}), where this guest runs ~{KVM_SLOWDOWN}x slower "
                f"than under TCG")
    if requested == "kvm":
        if not usable:
            raise MachineError(f"accel kvm: {device_why}; use accel tcg or auto")
        return "kvm", ("kvm: requested; /dev/kvm has hardware virtualization" if hardware
                       else f"kvm: requested, although {software}")
    if hardware:
        return "kvm", f"kvm: {os.fspath(kvm_device)} is usable and the CPU has vmx/svm"
    return "tcg", f"tcg: {software}" if usable else f"tcg: {device_why}"


# ---------------------------------------------------------------------- machine names
def machine_list(binary: str | None = None) -> dict[str, str]:
    """Every machine `binary -machine help` lists: name -> the name it is an alias of
    (itself when it is no alias).  Cached per binary path and modification time."""
    path = _binary_path(binary)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise MachineError(f"QEMU binary {path}: {exc.strerror}") from None
    return dict(_machine_list(path, mtime))


@functools.lru_cache(maxsize=8)
def _machine_list(path: str, mtime: int) -> tuple[tuple[str, str], ...]:
    del mtime  # part of the cache key only
    try:
        out = subprocess.run([path, "-machine", "help"], capture_output=True, text=True,
                             timeout=_HELP_TIMEOUT, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise MachineError(f"{path} -machine help failed: {exc}") from None
    return tuple(_parse_machine_help(out).items())


def _parse_machine_help(text: str) -> dict[str, str]:
    """`-machine help` output -> name -> canonical name.  The format, as printed by
    softmmu/vl.c (machine_help_func): a title line, then "NAME  DESCRIPTION", the
    description ending in "(alias of X)" for an alias."""
    machines: dict[str, str] = {}
    for line in text.splitlines()[1:]:  # the first line is "Supported machines are:"
        match = _HELP_LINE.match(line)
        if match is None:
            continue
        alias = _ALIAS.search(match.group(2))
        machines[match.group(1)] = alias.group(1) if alias else match.group(1)
    return machines


def validate_machine(machine: str, binary: str | None = None) -> str:
    """`machine` when the binary offers it and it is pc / q35 (any version) / none;
    MachineError naming the close matches otherwise."""
    known = machine_list(binary)
    if machine in known and _FAMILIES.match(machine):
        return machine
    supported = sorted(name for name in known if _FAMILIES.match(name))
    close = difflib.get_close_matches(machine, supported, n=4, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else \
        "; supported: pc, q35, pc-i440fx-X.Y, pc-q35-X.Y, none"
    if machine in known:
        return _refuse(f"machine {machine!r}: {_binary_path(binary)} offers it, but the "
                       f"harness runs its guest only on pc, q35 and none{hint}")
    return _refuse(f"machine {machine!r}: not offered by {_binary_path(binary)}{hint}")


def _refuse(message: str) -> str:
    raise MachineError(message)


def _binary_path(binary: str | None) -> str:
    return binary or find_qemu() or QEMU_BINARY


# ---------------------------------------------------------------------- command line
def machine_args(machine: str, accel: str, memory: int, image: Path | None,
                 serial_path: Path | None, role: str, paused: bool) -> list[str]:
    """QEMU arguments of a peer (without -qmp, which QemuProcess adds).

    `memory` is in bytes (a whole number of MiB); `accel` is resolved ("kvm" | "tcg");
    `image` is the raw boot disk (None: no disk, SeaBIOS then loops "No bootable
    device"); the destination waits with `-incoming defer`; `paused` adds `-S`.
    `-M none` keeps the harness's historical line (no disk, no serial)."""
    if role not in ROLES:
        raise MachineError(f"role {role!r}: expected source or destination")
    if accel not in ("kvm", "tcg"):
        raise MachineError(f"accel {accel!r}: resolve it first (kvm or tcg)")
    if machine == "none":  # as the -M none peer always was (-m truncates to MiB)
        args = ["-accel", accel, "-display", "none", "-nodefaults", "-no-user-config",
                "-M", "none", "-m", f"{memory >> 20}M"]
    else:
        if memory <= 0 or memory % (1 << 20):
            raise MachineError(f"memory {memory}: must be a positive whole number of MiB")
        args = ["-nodefaults", "-no-user-config", "-display", "none", "-M", machine,
                "-accel", accel, "-m", f"{memory >> 20}M"]
        if accel == "kvm":
            args += ["-cpu", "qemu64,kvmclock=off",
                     "-global", "apic.vapic=off", "-global", "kvm-apic.vapic=off"]
        if image is not None:
            args += ["-drive", f"file={_option_value(image)},format=raw,if=ide"]
        if serial_path is not None:
            args += ["-serial", f"file:{_option_value(serial_path)}"]
    if role == "destination":
        args += ["-incoming", "defer"]
    if paused:
        args.append("-S")
    return args


def _option_value(path: Path) -> str:
    """A path inside a QEMU option, made absolute (QEMU runs in its workdir).  A comma
    would split -drive's options and is kept literally by -serial: refused."""
    value = os.path.abspath(os.fspath(path))
    if "," in value:
        raise MachineError(f"path {value!r}: QEMU options cannot carry a comma here")
    return value
