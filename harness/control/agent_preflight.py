"""`agent-preflight`: what this host offers a migration run, measured on the host itself.

Strategy: `harness hosts check` asks each agent for facts it can only learn there -- cores
and free memory, /dev/kvm usable (opened read-write and asked KVM_GET_API_VERSION), whether
this process may create a userfaultfd (`harness.qemu.userfaultfd_available`, what a QEMU
postcopy destination needs, with vm.unprivileged_userfaultfd beside it), the QEMU binary
(the host's `qemu:` or the PATH's) and its `-version`, and whether the tbf and netem
qdiscs can be used (link.bandwidth and link.delay).  A qdisc is loaded when
/sys/module/sch_NAME exists; otherwise it is added to `lo` inside a network namespace of
its own (`unshare --net`, as `faults.link.netem_available` probes netem), which vanishes
with the probe: no existing qdisc or device is touched, and kernels without the dummy
device (this one) answer too.  Every probe has a deadline and a failure is a fact
("ok": false, "detail": why), never an exception.  The agent's loop must not wait on
them, so `PreflightJobs` runs each request in a thread and the loop collects the answers.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from harness import __version__

__all__ = ["PreflightJobs", "preflight_facts"]

PROBE_TIMEOUT = 5.0  # s per probe that runs a command
CAP_NET_ADMIN = 12
QDISC_PROBES = {"tbf": ("tbf", "rate", "1mbit", "burst", "32k", "latency", "50ms"),
                "netem": ("netem", "delay", "1ms")}
QEMU_BINARY = "qemu-system-x86_64"


def preflight_facts(qemu: str | None) -> dict[str, Any]:
    """Every fact `harness hosts check` shows; `qemu`: the host's binary (None: PATH's)."""
    memory = psutil.virtual_memory()
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(), "harness": __version__, "uid": os.geteuid(),
        "cores": len(os.sched_getaffinity(0)), "memory-available": memory.available,
        "memory-total": memory.total}
    probes: dict[str, Callable[[], tuple[bool, str]]] = {
        "kvm": _kvm, "userfaultfd": _userfaultfd, "net-admin": _net_admin,
        "tbf": lambda: _qdisc("tbf"), "netem": lambda: _qdisc("netem")}
    for name, probe in probes.items():
        facts[name] = _fact(probe)
    facts["qemu"] = _qemu(qemu)
    return facts


def _fact(probe: Callable[[], tuple[bool, str]]) -> dict[str, Any]:
    try:
        ok, detail = probe()
    except Exception as err:  # noqa: BLE001 - a probe that breaks is a fact, not a crash
        ok, detail = False, f"the probe failed: {type(err).__name__}: {err}"
    return {"ok": ok, "detail": detail}


def _kvm() -> tuple[bool, str]:
    from harness.qemu.machine import kvm_usable  # what the runner itself checks

    return kvm_usable()


def _userfaultfd() -> tuple[bool, str]:
    from harness.qemu import userfaultfd_available

    try:
        sysctl = Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip()
    except OSError:
        sysctl = "?"
    ok = userfaultfd_available()
    return ok, (f"{'allowed' if ok else 'refused'} for uid {os.geteuid()} "
                f"(vm.unprivileged_userfaultfd={sysctl})")


def _net_admin() -> tuple[bool, str]:
    """CAP_NET_ADMIN in the effective set: link faults change routes and qdiscs."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            ok = bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
            return ok, "CAP_NET_ADMIN " + ("held" if ok else "missing (link.* faults need "
                                                            "root or CAP_NET_ADMIN)")
    return False, "no CapEff in /proc/self/status"


def _qdisc(name: str) -> tuple[bool, str]:
    if Path(f"/sys/module/sch_{name}").exists():
        return True, f"sch_{name} is loaded"
    if shutil.which("tc") is None:
        return False, "tc not found (iproute2)"
    if shutil.which("unshare") is None:
        return False, f"sch_{name} is not loaded and unshare (util-linux) is missing to probe it"
    command = ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root",
               *QDISC_PROBES[name]]
    done = _run(command)
    if isinstance(done, str):
        return False, done
    if done.returncode == 0:
        return True, f"{name} works (added to lo in a throwaway network namespace)"
    text = (done.stderr or done.stdout).strip().splitlines()
    said = text[-1] if text else f"exit status {done.returncode}"
    if "unknown" in said.lower():
        return False, f"the kernel has no sch_{name} ({said})"
    return False, f"could not probe {name}: {' '.join(command)}: {said}"


def _qemu(binary: str | None) -> dict[str, Any]:
    path = binary or shutil.which(QEMU_BINARY)
    if path is None:
        return {"ok": False, "binary": None, "version": None,
                "detail": f"{QEMU_BINARY} not found on the agent's PATH"}
    if "/" not in path:
        path = shutil.which(path) or path
    if not os.access(path, os.X_OK):
        why = errno.EACCES if os.path.exists(path) else errno.ENOENT
        return {"ok": False, "binary": path, "version": None,
                "detail": f"{path}: {os.strerror(why)}"}
    done = _run([path, "-version"])
    if isinstance(done, str):
        return {"ok": False, "binary": path, "version": None, "detail": done}
    first = (done.stdout.strip().splitlines() or [""])[0]
    ok = done.returncode == 0 and "version" in first
    return {"ok": ok, "binary": path, "version": first.split("version", 1)[1].strip()
            if ok else None, "detail": first if ok else f"{path} -version: exit status "
            f"{done.returncode}: {done.stderr.strip()[:200]}"}


def _run(command: list[str]) -> subprocess.CompletedProcess[str] | str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{' '.join(command)}: no answer within {PROBE_TIMEOUT:g} s"
    except OSError as err:
        return f"{' '.join(command)}: {err.strerror or err}"


class PreflightJobs:
    """Preflight requests in threads; the agent's loop collects the finished ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: list[tuple[bytes, int, dict[str, Any]]] = []
        self.running = 0

    def start(self, client: bytes, msg_id: int, qemu: str | None) -> None:
        def work() -> None:
            facts = preflight_facts(qemu)
            with self._lock:
                self._done.append((client, msg_id, facts))

        self.running += 1
        threading.Thread(target=work, name="agent-preflight", daemon=True).start()

    def finished(self) -> list[tuple[bytes, int, dict[str, Any]]]:
        with self._lock:
            done, self._done = self._done, []
        self.running -= len(done)
        return done
