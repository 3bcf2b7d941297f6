"""A real QEMU as a migration peer: launch, QMP client, memory dumps.

Strategy: tests and the runner need a real `qemu-system-x86_64` on either side of a
migration, so this package starts it (`launch.QemuProcess`: own process session, QMP on a
unix socket in the work directory, always reaped), talks to it (`qmp.QMPClient`: blocking,
every read with a deadline) and reads guest memory back (`pmemsave`, `read_phys`).  It
holds no QEMU code, only facts about its command line and QMP.
"""

from __future__ import annotations

from .launch import QemuError, QemuProcess, find_qemu, userfaultfd_available
from .qmp import QMPClient, QMPError, pmemsave, read_phys, wait_migration

__all__ = [
    "QMPClient",
    "QMPError",
    "QemuError",
    "QemuProcess",
    "find_qemu",
    "pmemsave",
    "read_phys",
    "userfaultfd_available",
    "wait_migration",
]
