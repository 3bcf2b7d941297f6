"""What tests with a real QEMU share: the skip reasons and the minimal command line."""

from __future__ import annotations

import pytest

from harness.qemu import find_qemu, userfaultfd_available

NO_QEMU = "qemu-system-x86_64 not installed (CI installs Debian's qemu-system-x86)"
NO_USERFAULTFD = ("userfaultfd is not available to this process (a QEMU postcopy "
                  "destination needs it: root, or vm.unprivileged_userfaultfd=1)")

#: QEMU 7.2 under TCG sometimes loses the heartbeat page's writes (README's fault matrix):
#: a known QEMU flake a real-guest test may meet, under load, on either side
STALE_0x6000 = "memory-identical: pc.ram: 1 pages differ (first at 0x6000)"

#: module marks of a test file that runs QEMU
QEMU_MARKS = [pytest.mark.qemu, pytest.mark.timeout(120),
              pytest.mark.skipif(find_qemu() is None, reason=NO_QEMU)]
#: ... and of one whose QEMU is a postcopy destination
USERFAULTFD_MARK = pytest.mark.skipif(not userfaultfd_available(), reason=NO_USERFAULTFD)

#: a QEMU with nothing but 16 MiB of RAM, no display and no default devices
COMMON = ["-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
          "-M", "none", "-m", "16"]
