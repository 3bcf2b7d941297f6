"""The names a scenario file may use, as QEMU 7.2 spells them.

Strategy: every closed set of names is a `Literal` type (so mypy and the JSON schema know
it) plus a tuple derived from it (so validators can list it in an error). The QEMU facts
come from qapi/migration.json and migration/savevm.c of QEMU 7.2; names that a later QEMU
added are kept apart with their version, so an error can say "appeared in QEMU 8.1" rather
than just "unknown". The MIG_CMD and return-path names repeat harness.protocol.constants
on purpose (this package should not pull the codec in to validate a file); a unit test
keeps the two in step.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

#: MigrationStatus (qapi/migration.json, QEMU 7.2), in the C enum's order
MigrationStatus = Literal[
    "none", "setup", "cancelling", "cancelled", "active", "postcopy-active",
    "postcopy-paused", "postcopy-recover", "completed", "failed", "colo", "pre-switchover",
    "device", "wait-unplug",
]
MIGRATION_STATUSES: tuple[str, ...] = get_args(MigrationStatus)
LATER_STATUSES = {"postcopy-recover-setup": "9.1", "postcopy-device": "10.2"}

#: MigrationCapability (qapi/migration.json, QEMU 7.2), in the C enum's order
Capability = Literal[
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path", "pause-before-switchover",
    "multifd", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
]
CAPABILITIES: tuple[str, ...] = get_args(Capability)
LATER_CAPABILITIES = {"switchover-ack": "8.1", "dirty-limit": "8.1", "mapped-ram": "9.0"}

#: MigrateSetParameters members that QEMU 7.2 does not have yet
LATER_PARAMETERS = {
    "x-vcpu-dirty-limit-period": "8.1", "vcpu-dirty-limit": "8.1",
    "avail-switchover-bandwidth": "8.2", "mode": "8.2", "zero-page-detection": "9.0",
    "direct-io": "9.1",
}

#: enum qemu_vm_cmd (migration/savevm.c) without MIG_CMD_INVALID
MigCmdName = Literal[
    "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_RUN",
    "POSTCOPY_RAM_DISCARD", "PACKAGED", "ENABLE_COLO", "POSTCOPY_RESUME", "RECV_BITMAP",
]
MIG_CMD_NAMES: tuple[str, ...] = get_args(MigCmdName)

#: enum mig_rp_message_type (migration/migration.h) without MIG_RP_MSG_INVALID
RpMessageName = Literal["SHUT", "PONG", "REQ_PAGES_ID", "REQ_PAGES", "RECV_BITMAP", "RESUME_ACK"]
RP_MESSAGE_NAMES: tuple[str, ...] = get_args(RpMessageName)

#: what net.drop / net.duplicate may name: a return-path message or a MIG_CMD
MESSAGE_NAMES: tuple[str, ...] = RP_MESSAGE_NAMES + tuple(
    n for n in MIG_CMD_NAMES if n not in RP_MESSAGE_NAMES)
#: messages that exist only on the return path (RECV_BITMAP exists on both channels)
RETURN_PATH_ONLY = tuple(n for n in RP_MESSAGE_NAMES if n not in MIG_CMD_NAMES)

#: QEMU_VM_* record types (migration/savevm.h) a fault may aim at, besides messages
SECTION_RECORD_NAMES = ("EOF", "SECTION_START", "SECTION_PART", "SECTION_END", "SECTION_FULL",
                        "SUBSECTION", "VMDESCRIPTION", "CONFIGURATION", "COMMAND")
#: a page record of the `ram` section (header: be64 offset|flags [+ block name]; payload)
RAM_PAGE = "RAM_PAGE"
#: the frames of a multifd channel (migration/multifd.h): the 64-byte MultiFDInit_t (all
#: header), then packets: the 1344-byte MultiFDPacket_t header | its pages
MULTIFD_FRAME_NAMES = ("MULTIFD_INIT", "MULTIFD_PACKET")
#: the records of the `block` section (migration/block.c): a 1 MiB chunk (header: be64
#: sector|flags + device name; payload: its data, none for a ZERO_BLOCK), PROGRESS, EOS
BLOCK_FRAME_NAMES = ("BLOCK_CHUNK", "BLOCK_PROGRESS", "BLOCK_EOS")
#: a TLS record, as a proxy that forwards TLS untouched frames it (tls: {proxy: passthrough})
TLS_RECORD = "TLS_RECORD"
FRAME_NAMES: tuple[str, ...] = (MESSAGE_NAMES + SECTION_RECORD_NAMES + (RAM_PAGE,)
                                + MULTIFD_FRAME_NAMES + BLOCK_FRAME_NAMES + (TLS_RECORD,))
#: what a `frame:` trigger may count: whole frames (a page is a record inside a section,
#: a subsection a part of a device's payload)
FRAME_TRIGGER_NAMES: tuple[str, ...] = tuple(
    n for n in FRAME_NAMES if n not in (RAM_PAGE, "SUBSECTION"))

PeerName = Literal["source", "destination"]
PEER_NAMES: tuple[str, ...] = get_args(PeerName)
PeerKind = Literal["harness", "qemu"]
PEER_KINDS: tuple[str, ...] = get_args(PeerKind)
#: `preempt`: postcopy-preempt's second connection (QEMU 7.2: requested pages only)
ChannelName = Literal["main", "return-path", "preempt"]
CHANNEL_NAMES: tuple[str, ...] = get_args(ChannelName)
PREEMPT_CHANNEL = "preempt"
#: `multifd-N`: the multifd connection whose MultiFDInit_t says id N (the id QEMU's own
#: messages print, migration/multifd.c), whatever order the source opened it in
MULTIFD_CHANNEL = re.compile(r"multifd-(0|[1-9][0-9]{0,2})")
MULTIFD_CHANNEL_FORM = "multifd-N (N: a multifd channel id, 0 to multifd-channels - 1)"


def multifd_channel_id(channel: str | None) -> int | None:
    """N of a `multifd-N` channel name, None for any other name."""
    found = MULTIFD_CHANNEL.fullmatch(channel) if isinstance(channel, str) else None
    return int(found.group(1)) if found else None
#: what travels on the preempt channel (migration/ram.c: bare page records, one EOS)
PREEMPT_FRAME_NAMES = (RAM_PAGE,)
Direction = Literal["forward", "backward", "both"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
FramePart = Literal["header", "payload"]
FRAME_PARTS: tuple[str, ...] = get_args(FramePart)

TransportScheme = Literal["tcp", "unix", "exec", "fd", "file"]
TRANSPORT_SCHEMES: tuple[str, ...] = get_args(TransportScheme)

DeviceName = Literal["timer", "globalstate", "cpu", "blocker"]
DEVICE_NAMES: tuple[str, ...] = get_args(DeviceName)
DEFAULT_DEVICES: tuple[DeviceName, ...] = ("timer", "globalstate")

WorkloadPattern = Literal["uniform", "hotset", "sequential"]
WORKLOAD_PATTERNS: tuple[str, ...] = get_args(WorkloadPattern)

#: guest page content: random, or each page repeating one KiB (harness/guest/content.py)
ContentKind = Literal["random", "compressible"]
CONTENT_KINDS: tuple[str, ...] = get_args(ContentKind)

EventName = Literal["page-request", "pong", "section", "command"]
EVENT_NAMES: tuple[str, ...] = get_args(EventName)

#: actions written as a bare name (`do: migrate-cancel`)
PlainActionName = Literal["migrate-start-postcopy", "migrate-cancel", "migrate-pause",
                          "migrate-recover", "migrate-continue", "stop", "cont"]
PLAIN_ACTIONS: tuple[str, ...] = get_args(PlainActionName)
#: actions written as a one-key mapping (`do: {migrate-set-parameters: {...}}`)
MAPPING_ACTIONS = ("migrate-set-parameters",)
#: actions QEMU refuses without the postcopy-ram capability
POSTCOPY_ACTIONS = ("migrate-start-postcopy", "migrate-pause", "migrate-recover")

ProcessFaultKind = Literal["kill", "stop", "crash"]
NetFaultKind = Literal["net.reset", "net.half-close", "net.blackhole", "net.delay", "net.jitter",
                       "net.bandwidth", "net.drop", "net.duplicate", "net.corrupt",
                       "net.truncate"]
LinkFaultKind = Literal["link.down", "link.blackhole", "link.bandwidth", "link.delay"]
PROCESS_FAULT_KINDS: tuple[str, ...] = get_args(ProcessFaultKind)
NET_FAULT_KINDS: tuple[str, ...] = get_args(NetFaultKind)
LINK_FAULT_KINDS: tuple[str, ...] = get_args(LinkFaultKind)
FAULT_KINDS = PROCESS_FAULT_KINDS + NET_FAULT_KINDS + LINK_FAULT_KINDS

MemoryExpectation = Literal["identical", "source-intact", "consistent"]
MEMORY_EXPECTATIONS: tuple[str, ...] = get_args(MemoryExpectation)
GuestPlace = Literal["destination", "source", "nowhere"]
GUEST_PLACES: tuple[str, ...] = get_args(GuestPlace)

#: what a real QEMU peer can be here: `-M none -m SIZE` has one RAM block and two devices
QEMU_MACHINE = "none"
#: real machines a QEMU peer can run (with the harness's own x86 guest, harness/realguest):
#: the aliases and the versioned names QEMU 7.2 lists in `-machine help`
REAL_MACHINE = re.compile(r"pc|q35|pc-i440fx-\d+\.\d+|pc-q35-\d+\.\d+")
REAL_MACHINE_FORMS = "pc, q35, pc-i440fx-X.Y or pc-q35-X.Y"
#: how a real machine runs its vCPU: KVM only with hardware virtualization (auto)
Accel = Literal["auto", "kvm", "tcg"]
ACCELS: tuple[str, ...] = get_args(Accel)
QEMU_RAM_BLOCK = "ram"  # hw/core/null-machine.c: mc->default_ram_id
QEMU_DEVICES = ("timer", "globalstate")

TARGET_PAGE_SIZE = 4096  # x86_64
