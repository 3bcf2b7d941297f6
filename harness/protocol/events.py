"""What the stream decoder reports, one dataclass per kind of record.

Strategy: events are plain frozen dataclasses (typed, never dicts).  Commands on the main
stream (`commands.py`) and return-path messages (`return_path.py`) are events too.  Every
event carries `offset`, the absolute stream offset where its record began, which does not
take part in equality, so an event decoded from bytes compares equal to one built by hand.
Page records never become one object per page: `RamPages` carries a batch as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .constants import SectionType


@dataclass(frozen=True)
class Event:
    offset: int = field(default=-1, compare=False, kw_only=True)


@dataclass(frozen=True)
class StreamHeader(Event):
    version: int = 3


@dataclass(frozen=True)
class Configuration(Event):
    """The configuration section (migration/savevm.c: vmstate_configuration)."""

    machine: str
    capabilities: tuple[str, ...] | None = None  # subsection configuration/capabilities
    uuid: bytes | None = None  # subsection configuration/uuid (16 raw bytes)
    target_page_bits: int | None = None  # subsection configuration/target-page-bits


@dataclass(frozen=True)
class SectionHeader(Event):
    """A START/PART/END/FULL header; PART/END are resolved to their START's idstr."""

    type: SectionType
    section_id: int
    idstr: str
    instance_id: int
    version_id: int


@dataclass(frozen=True)
class SectionFooter(Event):
    """End of a section payload (the 0x7e footer, or the payload end without footers)."""

    section_id: int
    idstr: str
    has_footer: bool = True


@dataclass(frozen=True)
class DeviceState(Event):
    """A device's vmstate payload, decoded.  `state` is None when it was skipped unread.

    Its `offset` is where the payload starts (the header is the SectionHeader before)."""

    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    state: dict[str, Any] | None
    size: int


@dataclass(frozen=True)
class RamBlockInfo:
    idstr: str
    used_length: int
    page_size: int | None = None  # only on the wire for postcopy hugepage blocks
    addr: int | None = None  # only with x-ignore-shared


@dataclass(frozen=True)
class RamMemSize(Event):
    """RAM_SAVE_FLAG_MEM_SIZE: the block list of the setup stage."""

    section_id: int
    total: int
    blocks: tuple[RamBlockInfo, ...]


@dataclass(frozen=True, eq=False)
class RamPages(Event):
    """A batch of page records of one block, already written into RAM.

    `offsets` are byte offsets in the block (uint64), `kinds` the record type of each
    (RamFlag.ZERO / PAGE / XBZRLE / COMPRESS_PAGE, uint16).  A decoder that discards
    pages (`StreamDecoder(ram="discard")`) writes nothing and gives `spans` instead: where
    each record lies in the stream, one row per record (int64: record start, payload
    start, record end; absolute offsets).
    """

    section_id: int
    block: str
    offsets: np.ndarray
    kinds: np.ndarray
    spans: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.offsets.size)


@dataclass(frozen=True)
class RamEos(Event):
    section_id: int


@dataclass(frozen=True)
class PackagedStart(Event):
    """Start of a PACKAGED blob (its MIG_CMD_PACKAGED command is reported before)."""

    length: int


@dataclass(frozen=True)
class PackagedEnd(Event):
    length: int


@dataclass(frozen=True)
class EndOfStream(Event):
    """QEMU_VM_EOF."""

    packaged: bool = False


@dataclass(frozen=True)
class VmDescription(Event):
    """The JSON trailer after EOF (QEMU_VM_VMDESCRIPTION)."""

    json_text: bytes

    @property
    def json(self) -> dict[str, Any]:
        import json

        return json.loads(self.json_text)


@dataclass(frozen=True)
class StreamWarning(Event):
    """Something QEMU logs but accepts (e.g. "Expected vmdescription section, but got 0")."""

    message: str


@dataclass(frozen=True)
class StreamClosed(Event):
    """The input ended where a stream may end."""
