"""MIG_CMD_* commands of the main stream: framing and payloads.

Strategy: one frozen dataclass per command of QEMU 7.2 (`migration/savevm.c`:
`qemu_savevm_command_send` and the `qemu_savevm_send_*` helpers describe the payloads;
`loadvm_process_command` and `loadvm_postcopy_*` the checks).  `encode_command` frames
any of them as `0x08, be16 cmd, be16 len, payload`; `decode_command` checks number and
length with QEMU's messages, then parses the payload.  Commands are decoder events.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import ClassVar

from .constants import (
    MAX_DISCARDS_PER_COMMAND,
    MIG_CMD_LEN,
    MIG_CMD_MAX,
    POSTCOPY_RAM_DISCARD_VERSION,
    MigCmd,
    SectionType,
)
from .errors import LocalProtocolError, RemoteProtocolError
from .events import Event
from .wire import pack_be16, pack_be32, pack_be64, str8, unpack_be32, unpack_be64


@dataclass(frozen=True)
class Command(Event):
    cmd: ClassVar[MigCmd]

    def payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, payload: bytes) -> Command:
        return cls()


@dataclass(frozen=True)
class OpenReturnPath(Command):
    cmd: ClassVar[MigCmd] = MigCmd.OPEN_RETURN_PATH


@dataclass(frozen=True)
class Ping(Command):
    cmd: ClassVar[MigCmd] = MigCmd.PING
    value: int = 0

    def payload(self) -> bytes:
        return pack_be32(self.value)

    @classmethod
    def from_payload(cls, payload: bytes) -> Ping:
        return cls(unpack_be32(payload)[0])


@dataclass(frozen=True)
class PostcopyAdvise(Command):
    """be64 RAM page-size summary, be64 target page size; length 0 means bitmaps only."""

    cmd: ClassVar[MigCmd] = MigCmd.POSTCOPY_ADVISE
    page_size_summary: int | None = 4096
    target_page_size: int | None = 4096

    def payload(self) -> bytes:
        if self.page_size_summary is None:
            return b""
        return pack_be64(self.page_size_summary) + pack_be64(self.target_page_size or 0)

    @classmethod
    def from_payload(cls, payload: bytes) -> PostcopyAdvise:
        if len(payload) == 0:
            return cls(None, None)
        if len(payload) != 16:
            raise RemoteProtocolError(f"CMD_POSTCOPY_ADVISE invalid length ({len(payload)})")
        return cls(unpack_be64(payload, 0)[0], unpack_be64(payload, 8)[0])


@dataclass(frozen=True)
class PostcopyListen(Command):
    cmd: ClassVar[MigCmd] = MigCmd.POSTCOPY_LISTEN


@dataclass(frozen=True)
class PostcopyRun(Command):
    cmd: ClassVar[MigCmd] = MigCmd.POSTCOPY_RUN


@dataclass(frozen=True)
class PostcopyRamDiscard(Command):
    """u8 version 0, str8 block, u8 0, then (be64 start, be64 length) byte ranges."""

    cmd: ClassVar[MigCmd] = MigCmd.POSTCOPY_RAM_DISCARD
    block: str = ""
    ranges: tuple[tuple[int, int], ...] = ()

    def payload(self) -> bytes:
        body = bytearray((POSTCOPY_RAM_DISCARD_VERSION,))
        body += str8(self.block)
        body.append(0)
        for start, length in self.ranges:
            body += pack_be64(start) + pack_be64(length)
        return bytes(body)

    @classmethod
    def from_payload(cls, payload: bytes) -> PostcopyRamDiscard:
        # migration/savevm.c: loadvm_postcopy_ram_handle_discard
        n = len(payload)
        if n < 1 + 1 + 1 + 1 + 2 * 8:
            raise RemoteProtocolError(f"CMD_POSTCOPY_RAM_DISCARD invalid length ({n})")
        if payload[0] != POSTCOPY_RAM_DISCARD_VERSION:
            raise RemoteProtocolError(f"CMD_POSTCOPY_RAM_DISCARD invalid version ({payload[0]})")
        name_len = payload[1]
        if name_len == 0 or 2 + name_len >= n:
            raise RemoteProtocolError("CMD_POSTCOPY_RAM_DISCARD Failed to read RAMBlock ID")
        block = payload[2:2 + name_len].decode("latin-1")
        nil = payload[2 + name_len]
        if nil != 0:
            raise RemoteProtocolError(f"CMD_POSTCOPY_RAM_DISCARD missing nil ({nil})")
        rest = n - 3 - name_len
        if rest % 16:
            raise RemoteProtocolError(f"CMD_POSTCOPY_RAM_DISCARD invalid length ({rest})")
        pos = 3 + name_len
        ranges = tuple(
            (unpack_be64(payload, p)[0], unpack_be64(payload, p + 8)[0])
            for p in range(pos, n, 16)
        )
        return cls(block, ranges)


@dataclass(frozen=True)
class Packaged(Command):
    """be32 length; the blob (an embedded stream without header) follows the command."""

    cmd: ClassVar[MigCmd] = MigCmd.PACKAGED
    length: int = 0

    def payload(self) -> bytes:
        return pack_be32(self.length)

    @classmethod
    def from_payload(cls, payload: bytes) -> Packaged:
        return cls(unpack_be32(payload)[0])


@dataclass(frozen=True)
class EnableColo(Command):
    cmd: ClassVar[MigCmd] = MigCmd.ENABLE_COLO


@dataclass(frozen=True)
class PostcopyResume(Command):
    cmd: ClassVar[MigCmd] = MigCmd.POSTCOPY_RESUME


@dataclass(frozen=True)
class RecvBitmapRequest(Command):
    """MIG_CMD_RECV_BITMAP: str8 block name (payload length must be 1 + n)."""

    cmd: ClassVar[MigCmd] = MigCmd.RECV_BITMAP
    block: str = ""

    def payload(self) -> bytes:
        return str8(self.block)

    @classmethod
    def from_payload(cls, payload: bytes) -> RecvBitmapRequest:
        # migration/savevm.c: loadvm_handle_recv_bitmap
        if not payload or payload[0] + 1 != len(payload):
            raise RemoteProtocolError(
                f"CMD_RECV_BITMAP: invalid length {len(payload)} for its block name"
            )
        return cls(payload[1:].decode("latin-1"))


COMMAND_CLASSES: dict[MigCmd, type[Command]] = {
    c.cmd: c
    for c in (OpenReturnPath, Ping, PostcopyAdvise, PostcopyListen, PostcopyRun,
              PostcopyRamDiscard, Packaged, EnableColo, PostcopyResume, RecvBitmapRequest)
}


def encode_command(command: Command) -> bytes:
    """Frame a command: 0x08, be16 number, be16 payload length, payload."""
    payload = command.payload()
    if len(payload) > 0xFFFF:
        raise LocalProtocolError(f"{command.cmd.name} payload of {len(payload)} bytes is too long")
    return bytes((SectionType.COMMAND,)) + pack_be16(command.cmd) + pack_be16(len(payload)) + payload


def check_command_header(cmd: int, length: int) -> MigCmd:
    """QEMU's checks before a payload is read (migration/savevm.c: loadvm_process_command)."""
    if cmd >= MIG_CMD_MAX or cmd == MigCmd.INVALID:
        raise RemoteProtocolError(f"MIG_CMD 0x{cmd:x} unknown (len 0x{length:x})")
    mc = MigCmd(cmd)
    fixed = MIG_CMD_LEN[mc]
    if fixed is not None and fixed != length:
        raise RemoteProtocolError(
            f"{mc.name} received with bad length - expecting {fixed}, got {length}",
            errno=_errno.ERANGE,
        )
    return mc


def decode_command(cmd: MigCmd, payload: bytes) -> Command:
    return COMMAND_CLASSES[cmd].from_payload(payload)


def discard_commands(block: str, ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]
                     ) -> list[PostcopyRamDiscard]:
    """Split a block's discard ranges into commands of at most 12 ranges, as QEMU batches
    them (migration/savevm.c: MAX_DISCARDS_PER_COMMAND).  QEMU 7.2 destinations need at
    least one range per block (see qemu-7.2-interop.md 4.3), so an empty list becomes (0, 0).
    """
    items = list(ranges) or [(0, 0)]
    return [
        PostcopyRamDiscard(block, tuple(items[i:i + MAX_DISCARDS_PER_COMMAND]))
        for i in range(0, len(items), MAX_DISCARDS_PER_COMMAND)
    ]
