"""The scenario's disks (`guest.disks`, `expect.disks`) and what a run with them needs.

Strategy: a disk is `{name, size, fill}`; the runner writes it as a raw image in the run's
work directory (harness/guest/disks.py) and hands it to both peers.  The checks here are
the ones block migration imposes, each one line at the key: a size that is not a whole
number of 1 MiB chunks (QEMU 7.2 breaks on it, B5), a QEMU destination on machine none
(no bus for a writable block device, and a bare `-drive` aborts 7.2's destination, B5;
on a real machine it gets its drive on virtio-blk-pci and the harness source replays the
machine's devices, harness/qemu/replay.py), a real machine with any other pairing or an
agent's host (not implemented here), postcopy (the harness peers refuse block migration
with postcopy-ram), and `expect.disks` without disks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator

from .base import Fraction, Issue, Rate, ScenarioModel, Size, Text

if TYPE_CHECKING:
    from .model import Scenario

CHUNK = 1 << 20  # block.c: BLK_MIG_BLOCK_SIZE
DiskExpectation = Literal["identical"]
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _disk_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a drive id (a letter, then up to 63 letters, "
                         "digits, '-', '.' or '_', as QEMU's -drive id=)")
    return value


def _whole_chunks(value: int) -> int:
    if value <= 0 or value % CHUNK:
        raise ValueError(f"expected a positive multiple of 1MiB, got {value} bytes: block "
                         "migration sends whole 1 MiB chunks and QEMU 7.2 fails to load a "
                         "disk of any other size (its last chunk is still 1 MiB)")
    return value


class Disk(ScenarioModel):
    """One disk: `{name: d0, size: 16MiB, fill: 0.5}`."""

    name: Annotated[Text, AfterValidator(_disk_name)]
    """The drive id (QEMU's -drive id=NAME): what block migration names the device by."""
    size: Annotated[Size, AfterValidator(_whole_chunks)]
    """A multiple of 1MiB."""
    fill: Fraction = 0.5
    """The share of 1 MiB chunks with random bytes from the seed; the others are zeros."""
    write_rate: Rate = 0
    """How fast the source's guest rewrites this disk while it runs (64 KiB writes at seeded
    places): the chunks it marks go again in block migration's dirty phase."""


def disk_issues(sc: Scenario) -> list[Issue]:
    disks = sc.guest.disks
    if not disks:
        if sc.expect.disks is not None:
            return [Issue(("expect", "disks"), "disks: identical needs guest.disks",
                          at_key=True)]
        return []
    issues = []
    where = ("guest", "disks")
    replay = sc.source.kind == "harness" and sc.destination.kind == "qemu"
    if sc.guest.real_machine and not replay:
        issues.append(Issue(where, f"disks on machine {sc.guest.machine} are implemented for "
                            "a harness source to a QEMU destination only (block migration "
                            "otherwise runs on machine none)", at_key=True))
    if sc.destination.kind == "qemu" and not sc.guest.real_machine:
        issues.append(Issue(where, "a QEMU destination on machine none cannot take block "
                            "migration: it has no bus for a writable block device, and 7.2 "
                            "aborts on the first chunk written to a bare -drive (B5)",
                            at_key=True))
    for role in ("source", "destination"):
        if getattr(sc, role).host is not None:
            issues.append(Issue(where, f"disks with a peer on an agent's host ({role}.host) "
                                "are not implemented", at_key=True))
    if sc.source.kind == "qemu" and any(d.write_rate for d in disks):
        issues.append(Issue(where, "write-rate: the guest of a QEMU source here does not "
                            "write its disks (only a harness source's does)", at_key=True))
    if sc.postcopy:
        issues.append(Issue(where, "block migration with postcopy-ram is not implemented by "
                            "the harness peer", at_key=True))
    return issues


def disk_json(disks: Any) -> list[dict[str, Any]]:
    return [{"name": d.name, "size": d.size, "fill": d.fill} for d in disks]
