"""Numbers of QEMU 7.2's migration stream and return path.

Strategy: every wire constant lives here once, as an enum where QEMU has an enum, with
the QEMU name it mirrors.  Values are facts from `migration/savevm.h`, `migration/savevm.c`
(`enum qemu_vm_cmd`, `mig_cmd_args`), `migration/ram.c` (RAM_SAVE_FLAG_*),
`migration/migration.h` (`enum mig_rp_message_type`, `rp_cmd_args`) of QEMU 7.2, checked
against the streams in `../shared/qemu-vectors`.
"""

from __future__ import annotations

import enum

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION = 3
QEMU_VM_FILE_VERSION_COMPAT = 2

TARGET_PAGE_SIZE = 4096  # x86
TARGET_PAGE_BITS = 12
TARGET_PAGE_MASK = ~(TARGET_PAGE_SIZE - 1) & 0xFFFF_FFFF_FFFF_FFFF

# migration/ram.c: RAM_SAVE_FLAG_* share the be64 word with a page-aligned offset; the
# smallest target page is 1 KiB, so no flag above 0x200 exists.
RAM_FLAG_BITS = 0x3FF


class SectionType(enum.IntEnum):
    """QEMU_VM_* record type bytes (migration/savevm.h)."""

    EOF = 0x00
    SECTION_START = 0x01
    SECTION_PART = 0x02
    SECTION_END = 0x03
    SECTION_FULL = 0x04
    SUBSECTION = 0x05
    VMDESCRIPTION = 0x06
    CONFIGURATION = 0x07
    COMMAND = 0x08
    SECTION_FOOTER = 0x7E


class RamFlag(enum.IntFlag):
    """RAM_SAVE_FLAG_* (migration/ram.c, QEMU 7.2)."""

    FULL = 0x01  # obsolete, never sent
    ZERO = 0x02  # was RAM_SAVE_FLAG_COMPRESS
    MEM_SIZE = 0x04
    PAGE = 0x08
    EOS = 0x10
    CONTINUE = 0x20
    XBZRLE = 0x40
    HOOK = 0x80  # RDMA only
    COMPRESS_PAGE = 0x100
    MULTIFD_FLUSH = 0x200  # 8.0+, unknown to 7.2


#: flags that carry a page (and, without CONTINUE, a block name)
RAM_PAGE_FLAGS = RamFlag.ZERO | RamFlag.PAGE | RamFlag.XBZRLE | RamFlag.COMPRESS_PAGE

RAM_VERSION_ID = 4  # migration/ram.c: register_savevm_live("ram", 0, 4, ...)
ENCODING_FLAG_XBZRLE = 0x01  # migration/ram.c
COMPRESS_BOUND_PAGE = 4110  # zlib compressBound(4096)


class MigCmd(enum.IntEnum):
    """enum qemu_vm_cmd (migration/savevm.c), QEMU 7.2: MIG_CMD_MAX is 11."""

    INVALID = 0
    OPEN_RETURN_PATH = 1
    PING = 2
    POSTCOPY_ADVISE = 3
    POSTCOPY_LISTEN = 4
    POSTCOPY_RUN = 5
    POSTCOPY_RAM_DISCARD = 6
    PACKAGED = 7
    ENABLE_COLO = 8
    POSTCOPY_RESUME = 9
    RECV_BITMAP = 10


MIG_CMD_MAX = 11

#: mig_cmd_args[].len of QEMU 7.2: the fixed payload length, or None for variable
MIG_CMD_LEN: dict[MigCmd, int | None] = {
    MigCmd.OPEN_RETURN_PATH: 0,
    MigCmd.PING: 4,
    MigCmd.POSTCOPY_ADVISE: None,
    MigCmd.POSTCOPY_LISTEN: 0,
    MigCmd.POSTCOPY_RUN: 0,
    MigCmd.POSTCOPY_RAM_DISCARD: None,
    MigCmd.PACKAGED: 4,
    MigCmd.ENABLE_COLO: 0,
    MigCmd.POSTCOPY_RESUME: 0,
    MigCmd.RECV_BITMAP: None,
}

MAX_DISCARDS_PER_COMMAND = 12  # migration/savevm.c
POSTCOPY_RAM_DISCARD_VERSION = 0


class RpMsg(enum.IntEnum):
    """enum mig_rp_message_type (migration/migration.h), QEMU 7.2: MIG_RP_MSG_MAX is 7."""

    INVALID = 0
    SHUT = 1
    PONG = 2
    REQ_PAGES_ID = 3
    REQ_PAGES = 4
    RECV_BITMAP = 5
    RESUME_ACK = 6


MIG_RP_MSG_MAX = 7
RP_MAX_LEN = 512  # the source's receive buffer (migration.c: source_return_path_thread)

#: rp_cmd_args[].len of QEMU 7.2, None for variable
RP_MSG_LEN: dict[RpMsg, int | None] = {
    RpMsg.SHUT: 4,
    RpMsg.PONG: 4,
    RpMsg.REQ_PAGES_ID: None,
    RpMsg.REQ_PAGES: 12,
    RpMsg.RECV_BITMAP: None,
    RpMsg.RESUME_ACK: 4,
}

RECV_BITMAP_ENDING = 0x0123456789ABCDEF  # migration/ram.c
MIGRATION_RESUME_ACK_VALUE = 1

#: QEMU 7.2 RunState names (qapi/run-state.json), the values `globalstate` may carry
RUN_STATES = (
    "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate",
    "prelaunch", "finish-migrate", "restore-vm", "running", "save-vm", "shutdown",
    "suspended", "watchdog", "guest-panicked", "colo",
)

#: the header flags of a CONTINUE page / zero-page record, as plain ints (hot paths)
RAM_PAGE_CONT = int(RamFlag.PAGE | RamFlag.CONTINUE)
RAM_ZERO_CONT = int(RamFlag.ZERO | RamFlag.CONTINUE)
