"""The sending side of the stream framing, sans-IO: every method returns bytes.

Strategy: `StreamEncoder` writes what `migration/savevm.c` writes: the file header
(`qemu_savevm_state_header`), the configuration section, section headers and footers
(`save_section_header`, `save_section_footer`), device sections through vmstate, commands
(`qemu_savevm_command_send`), PACKAGED blobs, EOF and the VM description trailer.  It
records the description of each device it writes, exactly as QEMU builds its JSON while
saving, and renders it in QEMU's layout (Python's default `json.dumps` separators are
QEMU's).  RAM page records come from `ram_saver.RamSaver`, which the encoder owns so that the
"last block" memory spans sections and passes as in QEMU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from . import devices as std
from .commands import Command, Packaged, encode_command
from .constants import (
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    RAM_VERSION_ID,
    TARGET_PAGE_SIZE,
    SectionType,
)
from .events import RamBlockInfo
from .ram_saver import EOS, RamSaver, encode_mem_size
from .vmstate import VMStateDescription, save_state, vmdesc_entry
from .wire import pack_be32, str8


class StreamEncoder:
    """Produces the bytes of a migration stream, piece by piece."""

    def __init__(self, *, footers: bool = True, page_size: int = TARGET_PAGE_SIZE) -> None:
        self.footers = footers
        self.page_size = page_size
        self.ram = RamSaver()
        self._described: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ framing
    @staticmethod
    def header() -> bytes:
        return pack_be32(QEMU_VM_FILE_MAGIC) + pack_be32(QEMU_VM_FILE_VERSION)

    @staticmethod
    def configuration(machine: str, capabilities: tuple[str, ...] | None = None,
                      uuid: bytes | None = None, target_page_bits: int | None = None) -> bytes:
        out = bytearray((SectionType.CONFIGURATION,))
        save_state(std.CONFIGURATION,
                   std.configuration_values(machine, capabilities, uuid, target_page_bits), out)
        return bytes(out)

    @staticmethod
    def section_header(kind: SectionType, section_id: int, idstr: str = "",
                       instance_id: int = 0, version_id: int = 0) -> bytes:
        out = bytes((kind,)) + pack_be32(section_id)
        if kind in (SectionType.SECTION_START, SectionType.SECTION_FULL):
            out += str8(idstr) + pack_be32(instance_id) + pack_be32(version_id)
        return out

    def footer(self, section_id: int) -> bytes:
        if not self.footers:
            return b""
        return bytes((SectionType.SECTION_FOOTER,)) + pack_be32(section_id)

    @staticmethod
    def command(command: Command) -> bytes:
        return encode_command(command)

    @staticmethod
    def packaged(blob: bytes) -> bytes:
        """MIG_CMD_PACKAGED with its blob (an embedded stream: no header, no EOF)."""
        return encode_command(Packaged(len(blob))) + blob

    @staticmethod
    def eof() -> bytes:
        return bytes((SectionType.EOF,))

    # ------------------------------------------------------------------ devices
    def device(self, section_id: int, idstr: str, instance_id: int,
               vmsd: VMStateDescription, values: Mapping[str, Any],
               describe: bool = True) -> bytes:
        """A FULL section of a non-iterative device, recorded for the trailer."""
        out = bytearray(self.section_header(SectionType.SECTION_FULL, section_id, idstr,
                                            instance_id, vmsd.version_id))
        desc = save_state(vmsd, values, out)
        out += self.footer(section_id)
        if describe:
            self._described.append(vmdesc_entry(idstr, instance_id, desc))
        return bytes(out)

    def vmdesc_json(self) -> bytes:
        doc = {"page_size": self.page_size, "devices": self._described}
        return json.dumps(doc).encode()

    def vmdesc(self) -> bytes:
        """QEMU_VM_VMDESCRIPTION: 0x06, be32 length, the JSON of the devices written."""
        text = self.vmdesc_json()
        return bytes((SectionType.VMDESCRIPTION,)) + pack_be32(len(text)) + text

    def forget_descriptions(self) -> None:
        self._described.clear()

    # ------------------------------------------------------------------ ram
    def ram_start(self, section_id: int, blocks: list[RamBlockInfo] | tuple[RamBlockInfo, ...]
                  ) -> bytes:
        """The RAM setup section: START, MEM_SIZE block list, EOS, footer."""
        self.ram.reset()  # ram_state_reset: last_sent_block = NULL
        return (self.section_header(SectionType.SECTION_START, section_id, "ram", 0,
                                    RAM_VERSION_ID)
                + encode_mem_size(blocks) + EOS + self.footer(section_id))

    def ram_section(self, kind: SectionType, section_id: int, records: bytes | bytearray
                    ) -> bytes:
        """A PART or END section of `ram` carrying `records` (then EOS and the footer)."""
        return self.section_header(kind, section_id) + bytes(records) + EOS + \
            self.footer(section_id)
