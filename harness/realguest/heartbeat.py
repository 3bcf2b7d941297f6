"""The real guest's heartbeat: its counters, read from guest memory over QMP.

Strategy: the guest keeps HEARTBEAT_SIZE bytes at HEARTBEAT_GPA (image.py): magic,
ticks (ms of its PM timer), (cursor, gen) -- published together by one 8-byte store --
and a u64 count of pages written.  `read_heartbeat` asks QEMU for them with the HMP command `xp /8wx GPA`
through `human-monitor-command` (no file, a few ms, works while the guest runs) and
parses the text strictly: the reply is bounded, every line must carry the expected
address and words, anything else is a ValueError naming what is wrong.  A running
guest is read without stopping it, so two words written by separate stores (the two
halves of pages_written) can be seen torn once every 2**32 pages.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from typing import Protocol

from .image import (
    HB_CURSOR,
    HB_GEN,
    HB_MAGIC,
    HB_PAGES,
    HB_TICKS,
    HEARTBEAT_GPA,
    HEARTBEAT_MAGIC,
    HEARTBEAT_SIZE,
    PAGE_SIZE,
)

__all__ = ["Heartbeat", "parse_heartbeat", "read_heartbeat", "wait_heartbeat"]

_WORDS = HEARTBEAT_SIZE // 4
_MAX_REPLY = 4096          # `xp /8wx` prints two lines of ~60 characters
_LINE = re.compile(r"([0-9a-f]{1,16}):((?: 0x[0-9a-f]{8})+)")


class _Monitor(Protocol):
    def hmp(self, command_line: str, timeout: float = 10.0) -> str: ...


@dataclass(frozen=True)
class Heartbeat:
    """The guest's counters: ticks (ms of its ACPI PM timer), sweep generation, next
    page's GPA (cursor) and pages written since the loop started."""

    ticks: int
    gen: int
    cursor: int
    pages_written: int


def parse_heartbeat(raw: bytes) -> Heartbeat:
    """Decode HEARTBEAT_SIZE bytes of guest memory; ValueError naming what is wrong."""
    if len(raw) != HEARTBEAT_SIZE:
        raise ValueError(f"heartbeat: {len(raw)} bytes, expected {HEARTBEAT_SIZE}")
    (magic,) = struct.unpack_from("<I", raw, HB_MAGIC)
    (ticks,) = struct.unpack_from("<I", raw, HB_TICKS)
    if magic != HEARTBEAT_MAGIC:
        raise ValueError(f"heartbeat at {HEARTBEAT_GPA:#x}: magic {magic:#010x}, expected "
                         f"{HEARTBEAT_MAGIC:#010x} (guest not booted, still in its init "
                         "pass, or not the harness's guest)")
    (cursor,) = struct.unpack_from("<I", raw, HB_CURSOR)
    (gen,) = struct.unpack_from("<I", raw, HB_GEN)
    (pages,) = struct.unpack_from("<Q", raw, HB_PAGES)
    if cursor % PAGE_SIZE:
        raise ValueError(f"heartbeat: cursor {cursor:#x} is not page-aligned")
    if gen < 1:
        raise ValueError("heartbeat: gen 0 (the guest starts at gen 1)")
    return Heartbeat(ticks=ticks, gen=gen, cursor=cursor, pages_written=pages)


def read_heartbeat(qmp: _Monitor, timeout: float = 5.0) -> Heartbeat:
    """The heartbeat of the guest behind `qmp` (a harness.qemu.QMPClient)."""
    reply = qmp.hmp(f"xp /{_WORDS}wx {HEARTBEAT_GPA:#x}", timeout=timeout)
    return parse_heartbeat(parse_xp_words(reply, HEARTBEAT_GPA, _WORDS))


def wait_heartbeat(qmp: _Monitor, timeout: float = 10.0, interval: float = 0.01) -> Heartbeat:
    """Poll until the guest's heartbeat is valid (its loop runs); ValueError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_heartbeat(qmp, timeout=max(deadline - time.monotonic(), 0.5))
        except ValueError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def parse_xp_words(reply: str, address: int, count: int) -> bytes:
    """The bytes of an HMP `xp /COUNTwx ADDRESS` reply; ValueError on anything else.

    QEMU prints `ADDRESS: 0xWWWWWWWW 0x...` lines, four words each (monitor/hmp-cmds.c,
    memory_dump); every line is checked to start where the previous one stopped.
    """
    if len(reply) > _MAX_REPLY:
        raise ValueError(f"xp reply of {len(reply)} characters (at most {_MAX_REPLY})")
    words: list[int] = []
    for line in reply.strip().splitlines():
        match = _LINE.fullmatch(line.strip())
        if match is None:
            raise ValueError(f"xp reply line not understood: {line[:80]!r}")
        at = int(match.group(1), 16)
        if at != address + 4 * len(words):
            raise ValueError(f"xp reply line at {at:#x}, expected "
                             f"{address + 4 * len(words):#x}")
        words += [int(word, 16) for word in match.group(2).split()]
    if len(words) != count:
        raise ValueError(f"xp reply has {len(words)} words, expected {count}: {reply[:200]!r}")
    return struct.pack(f"<{count}I", *words)
