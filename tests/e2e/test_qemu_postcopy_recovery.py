"""Postcopy recovery against a real QEMU 7.2 destination, with the harness source.

The harness source switches a `-M none` QEMU destination to postcopy with a slow
background push, so most pages are still missing.  Then two breaks: migrate-pause on
the harness source, and QMP migrate-pause on QEMU.  Each time both sides pause, QEMU's
`migrate-recover` listens (tcp port 0: its query-migrate names the port) and the source's
`migrate resume=true` runs the handshake: QEMU's RECV_BITMAP answers reload the source's
bitmap, POSTCOPY_RESUME is acknowledged with RESUME_ACK(1).  The migration completes and
QEMU's memory (pmemsave) equals the source's: the wire format of recovery is QEMU's.
"""

from __future__ import annotations

import time

import numpy as np

from harness.guest import BlockSpec, Guest, GuestSpec
from harness.migration.config import MigrationConfig
from harness.qemu import QemuProcess, read_phys
from harness.transport import connect, parse_uri
from source.migration import OutgoingMigration
from tests.qemu_env import COMMON, QEMU_MARKS, USERFAULTFD_MARK

pytestmark = [*QEMU_MARKS, USERFAULTFD_MARK]
MiB = 1 << 20


def _until(predicate, timeout=30.0, what=""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _xp(qemu: QemuProcess, addr: int) -> bytes:
    out = qemu.qmp.hmp(f"xp /8xb {addr:#x}")
    return bytes(int(tok, 16) for tok in out.split(":", 1)[1].split())


def _recover(qemu: QemuProcess, outgoing: OutgoingMigration) -> None:
    """QEMU's migrate-recover on port 0, then the source's migrate resume=true."""
    qemu.qmp.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
    [address] = qemu.qmp.execute("query-migrate")["socket-address"]  # only the new one
    port = address["port"]
    outgoing.resume(f"tcp:127.0.0.1:{port}")
    _until(lambda: str(outgoing.state.status) == "postcopy-active", what="source resumed")
    _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "postcopy-active",
           what="QEMU resumed")


def _both_paused(qemu: QemuProcess, outgoing: OutgoingMigration) -> None:
    _until(lambda: str(outgoing.state.status) == "postcopy-paused", what="source paused")
    _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "postcopy-paused",
           what="QEMU paused")


def test_a_qemu_destination_paused_twice_recovers_with_the_harness_source(tmp_path):
    spec = GuestSpec(machine="none", blocks=[BlockSpec("ram", 16 * MiB)], fill=0.5, seed=43,
                     devices=["timer", "globalstate"])
    guest = Guest.create(spec, initial_content=True, prefault=True)
    qemu = QemuProcess([*COMMON, "-incoming", "defer"], tmp_path, name="dst")
    outgoing = None
    try:
        guest.start()
        qemu.start()
        caps = [{"capability": "postcopy-ram", "state": True},
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
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "postcopy-active",
               what="QEMU postcopy-active")
        ram = guest.ram["ram"]
        assert _xp(qemu, 0xF00000) == ram[0xF00000:0xF00008].tobytes()  # a served fault

        outgoing.pause()  # migrate-pause on the source
        _both_paused(qemu, outgoing)
        _recover(qemu, outgoing)
        assert _xp(qemu, 0xE00000) == ram[0xE00000:0xE00008].tobytes()  # served again

        qemu.qmp.execute("migrate-pause")  # migrate-pause on QEMU, the destination
        _both_paused(qemu, outgoing)
        _recover(qemu, outgoing)

        config.set_parameters({"max-postcopy-bandwidth": 1 << 30}, running=True)
        _until(lambda: str(outgoing.state.status) in ("completed", "failed"), what="end")
        assert str(outgoing.state.status) == "completed", outgoing.error_desc
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "completed",
               what="QEMU completed")
        assert qemu.qmp.execute("query-status")["status"] == "running"
        dump = np.frombuffer(read_phys(qemu.qmp, 0, 16 * MiB, tmp_path), dtype=np.uint8)
        assert np.array_equal(dump, ram), "QEMU's memory differs from the source's"
        statuses = [t.new for t in outgoing.state.history]
        assert statuses == ["setup", "active", "postcopy-active",
                            "postcopy-paused", "postcopy-recover", "postcopy-active",
                            "postcopy-paused", "postcopy-recover", "postcopy-active",
                            "completed"]
    finally:
        if outgoing is not None:
            outgoing.cancel()
            outgoing.join(10)
        qemu.close()
        guest.close()
