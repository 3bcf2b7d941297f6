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

from harness.qemu import QemuProcess
from source.migration import OutgoingMigration
from tests.e2e.test_qemu_postcopy import _until, _xp, source_to_qemu_in_postcopy
from tests.qemu_env import QEMU_MARKS, USERFAULTFD_MARK

pytestmark = [*QEMU_MARKS, USERFAULTFD_MARK]


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
    with source_to_qemu_in_postcopy(tmp_path, seed=43) as pair:
        qemu, outgoing, ram = pair.qemu, pair.outgoing, pair.ram
        assert _xp(qemu, 0xF00000) == ram[0xF00000:0xF00008].tobytes()  # a served fault

        outgoing.pause()  # migrate-pause on the source
        _both_paused(qemu, outgoing)
        _recover(qemu, outgoing)
        assert _xp(qemu, 0xE00000) == ram[0xE00000:0xE00008].tobytes()  # served again

        qemu.qmp.execute("migrate-pause")  # migrate-pause on QEMU, the destination
        _both_paused(qemu, outgoing)
        _recover(qemu, outgoing)

        pair.complete(tmp_path)
        statuses = [t.new for t in outgoing.state.history]
        assert statuses == ["setup", "active", "postcopy-active",
                            "postcopy-paused", "postcopy-recover", "postcopy-active",
                            "postcopy-paused", "postcopy-recover", "postcopy-active",
                            "completed"]
