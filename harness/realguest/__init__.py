"""The harness's own real x86 guest for QEMU pc/q35: image, heartbeat, wave checker.

Strategy: `image` builds a raw disk image from annotated machine-code bytes (no toolchain
at install or run time); the guest sweeps its RAM at a paced dirty rate, each page
carrying its generation twice and its own page number, so `wave` can check any dump of
guest RAM on its own (and a source against its destination); `heartbeat` reads the
guest's counters over QMP while it runs.
"""

from __future__ import annotations

from .image import HEARTBEAT_GPA, HEARTBEAT_SIZE, GuestProgram, build_image, write_image

__all__ = ["HEARTBEAT_GPA", "HEARTBEAT_SIZE", "GuestProgram", "build_image", "write_image"]
