"""Postcopy against a real QEMU 7.2: the harness source serves a QEMU destination's faults.

A CPU-less `-M none` QEMU destination faults when its monitor reads guest memory (HMP
`xp`) while postcopy is active (qemu-7.2-interop.md 4.2): that is a deterministic page
request.  The harness source must answer it with its own bytes, finish the push, and get
SHUT 0; QEMU's memory must then equal the source's.  The other direction (QEMU source,
harness destination) is the shipped scenario `postcopy-qemu-source.yaml`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from harness.guest import BlockSpec, Guest, GuestSpec
from harness.migration.config import MigrationConfig
from harness.protocol import ReqPagesId
from harness.qemu import QemuProcess, read_phys
from harness.transport import connect, parse_uri
from source.migration import OutgoingMigration
from tests.qemu_env import COMMON, QEMU_MARKS, USERFAULTFD_MARK

pytestmark = [*QEMU_MARKS, USERFAULTFD_MARK]
MiB = 1 << 20


def _until(predicate, timeout=20.0, what=""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _xp(qemu: QemuProcess, addr: int) -> bytes:
    out = qemu.qmp.hmp(f"xp /8xb {addr:#x}")
    return bytes(int(tok, 16) for tok in out.split(":", 1)[1].split())


@dataclass
class SourceToQemu:
    guest: Guest
    qemu: QemuProcess
    outgoing: OutgoingMigration
    config: MigrationConfig

    @property
    def ram(self) -> np.ndarray:
        return self.guest.ram["ram"]

    def qemu_status(self) -> str:
        return str(self.qemu.qmp.execute("query-migrate").get("status"))

    def complete(self, tmp_path) -> None:
        """Lift the push limit, wait for both ends, and compare QEMU's memory with ours."""
        self.config.set_parameters({"max-postcopy-bandwidth": 1 << 30}, running=True)
        _until(lambda: str(self.outgoing.state.status) in ("completed", "failed"), what="end")
        assert str(self.outgoing.state.status) == "completed", self.outgoing.error_desc
        _until(lambda: self.qemu_status() == "completed", what="QEMU completed")
        assert self.qemu.qmp.execute("query-status")["status"] == "running"
        dump = np.frombuffer(read_phys(self.qemu.qmp, 0, 16 * MiB, tmp_path), dtype=np.uint8)
        assert np.array_equal(dump, self.ram), "QEMU's memory differs from the source's"


@contextmanager
def source_to_qemu_in_postcopy(tmp_path, seed: int, capabilities: list[dict] | None = None
                               ) -> Iterator[SourceToQemu]:
    """A harness source (16 MiB, 64 KiB/s push) and a `-M none` QEMU destination, switched to
    postcopy with most pages still missing; everything closed at the end.  `capabilities`
    (both sides) default to postcopy-ram and events."""
    spec = GuestSpec(machine="none", blocks=[BlockSpec("ram", 16 * MiB)], fill=0.5, seed=seed,
                     devices=["timer", "globalstate"])
    guest = Guest.create(spec, initial_content=True, prefault=True)
    qemu = QemuProcess([*COMMON, "-incoming", "defer"], tmp_path, name="dst")
    outgoing = None
    try:
        guest.start()
        qemu.start()
        caps = capabilities or [{"capability": "postcopy-ram", "state": True},
                                {"capability": "events", "state": True}]
        qemu.qmp.execute("migrate-set-capabilities", {"capabilities": caps})
        qemu.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = qemu.qmp.execute("query-migrate")["socket-address"][0]["port"]
        config = MigrationConfig.default()
        config.set_capabilities(caps, running=False)
        config.set_parameters({"max-bandwidth": 1 * MiB, "max-postcopy-bandwidth": 64 * 1024})
        outgoing = OutgoingMigration(
            guest, config, lambda uri, t: connect(parse_uri(uri, "source"), timeout=t,
                                                 return_path=True), lambda n, d: None)
        outgoing.migrate(f"tcp:127.0.0.1:{port}")
        _until(lambda: str(outgoing.state.status) == "active", what="active")
        outgoing.start_postcopy()
        pair = SourceToQemu(guest, qemu, outgoing, config)
        _until(lambda: pair.qemu_status() == "postcopy-active", what="QEMU postcopy-active")
        yield pair
    finally:
        if outgoing is not None:
            outgoing.cancel()
            outgoing.join(10)
        qemu.close()
        guest.close()


def test_harness_source_serves_a_qemu_destinations_faults(tmp_path):
    with source_to_qemu_in_postcopy(tmp_path, seed=41) as pair:
        qemu, outgoing, ram = pair.qemu, pair.outgoing, pair.ram
        for addr in (0xF00000, 0xA00123, 0x800000, 0xF00008):  # not pushed yet at 64 KiB/s
            assert _xp(qemu, addr) == ram[addr:addr + 8].tobytes(), hex(addr)
        requests = [m for m in outgoing._rp.messages if isinstance(m, ReqPagesId)]
        assert requests and requests[0].block == "ram" and requests[0].length == 4096
        assert outgoing.postcopy.requests == 3  # the fourth read hit an arrived page
        pair.complete(tmp_path)
        assert outgoing._rp.shut == 0
