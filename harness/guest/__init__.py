"""The simulated VM a migration peer owns.

Strategy: RAM blocks and the dirty log in one shared-memory segment (`memory`), a
workload process that dirties pages like a vCPU (`workload`), a deterministic oracle of
page contents (`content`), devices as vmstate sections (`devices`), and `Guest`, which
owns them all with QEMU's runstates (`guest`).
"""

from __future__ import annotations

from .content import (
    expected_digests,
    initial_content_array,
    initial_fill,
    mismatched_pages,
    page_digests,
    write_pages,
)
from .devices import GuestDevice, MigrationBlockedError, make_devices
from .guest import Guest, GuestSpec, SavedDevice
from .memory import PAGE_SIZE, BlockSpec, GuestMemory
from .workload import Workload, WorkloadError, WorkloadSpec, harvest_dirty, split_by_block

__all__ = [
    "PAGE_SIZE", "BlockSpec", "Guest", "GuestDevice", "GuestMemory", "GuestSpec",
    "MigrationBlockedError", "SavedDevice", "Workload", "WorkloadError", "WorkloadSpec",
    "expected_digests", "harvest_dirty", "initial_content_array", "initial_fill", "make_devices", "mismatched_pages",
    "page_digests", "split_by_block", "write_pages",
]
