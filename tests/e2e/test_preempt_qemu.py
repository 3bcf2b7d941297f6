"""postcopy-preempt against a real QEMU 7.2, both directions.

QEMU source -> harness destination: a running `-M none` QEMU whose RAM holds the pages of
a harness guest of the same seed migrates with postcopy-ram + postcopy-preempt to an
in-process harness destination (destination/incoming.py); it switches to postcopy at
once with a 64 KiB/s push, so the destination guest's workload faults on pages still
missing, the harness asks for them on the return path, and QEMU sends them on its
second connection (production-features.md P2-P4).  The fault-fast thread counts what it
placed: at least one requested page must have come that way; every page the guest found
must be the source's.  Then the same after a pause: recovery opens two new connections
(main, then preempt) and requested pages come on the new preempt channel (P6).

Harness source -> QEMU destination: the same with the roles swapped (a `-M none` QEMU
destination faults when HMP `xp` reads a missing page).  It needs the harness source's
preempt channel (the lead's source side): it is skipped, saying so, until the source
applies the shared check `preempt_uri_refusal`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from destination.incoming import IncomingMigration
from harness.guest import BlockSpec, Guest, GuestSpec, WorkloadSpec
from harness.migration.config import MigrationConfig
from harness.qemu import QemuProcess
from harness.transport import listen, parse_uri
from tests.e2e.test_qemu_postcopy import _xp, source_to_qemu_in_postcopy
from tests.qemu_env import COMMON, QEMU_MARKS, USERFAULTFD_MARK

pytestmark = [*QEMU_MARKS]
MiB = 1 << 20
SIZE = 16 * MiB
WAIT = 30.0
CAPS = [{"capability": name, "state": True}
        for name in ("postcopy-ram", "postcopy-preempt", "events")]


def _until(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _spec(seed: int, workload: WorkloadSpec | None = None) -> GuestSpec:
    return GuestSpec(machine="none", blocks=[BlockSpec("ram", SIZE)], fill=0.5, seed=seed,
                     workload=workload, devices=["timer", "globalstate"])


@contextmanager
def qemu_to_harness(tmp_path: Path, seed: int) -> Iterator[tuple[QemuProcess, IncomingMigration,
                                                                 Guest, Guest]]:
    """(QEMU source, harness incoming, source content guest, destination guest), in
    postcopy with preempt; everything closed and reaped at the end."""
    content = Guest.create(_spec(seed), initial_content=True, prefault=False)
    dst = Guest.create(_spec(seed, WorkloadSpec(4 * MiB, "uniform", 0, seed)),
                       initial_content=False, prefault=True)
    image = tmp_path / "ram.bin"
    image.write_bytes(content.memory.ram["ram"].tobytes())
    qemu = QemuProcess([*COMMON, "-device", f"loader,file={image},addr=0x0"], tmp_path,
                       name="src")
    config = MigrationConfig.default()
    config.set_capabilities(CAPS, running=False)
    incoming = IncomingMigration(
        dst, config, lambda uri: listen(parse_uri(uri, "destination"), return_path=True),
        lambda name, data: None, accept_timeout=WAIT)
    dst.runstate = "inmigrate"
    incoming.snapshot = True
    try:
        qemu.start()
        qemu.qmp.execute("migrate-set-capabilities", {"capabilities": CAPS})
        qemu.qmp.execute("migrate-set-parameters", {"max-bandwidth": MiB,
                                                    "max-postcopy-bandwidth": 64 * 1024})
        incoming.migrate_incoming("tcp:127.0.0.1:0")
        assert incoming.socket_address is not None
        port = incoming.socket_address[0]["port"]
        qemu.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "active", "active")
        qemu.qmp.execute("migrate-start-postcopy")
        _until(lambda: dst.runstate == "running", "the guest runs on the destination")
        yield qemu, incoming, content, dst
    finally:
        incoming.close()
        qemu.close()
        content.close()
        dst.close()


def test_qemu_source_sends_requested_pages_on_the_preempt_channel(tmp_path):
    with qemu_to_harness(tmp_path, seed=53) as (qemu, incoming, content, _):
        fast = incoming.fast_load
        assert fast is not None
        _until(lambda: fast.pages >= 3, "three requested pages on the preempt channel")
        qemu.qmp.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 1 << 30})
        _until(lambda: str(incoming.state.status) in ("completed", "failed"), "the end")
        assert str(incoming.state.status) == "completed", incoming.error_desc
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "completed",
               "QEMU completed")
        info = qemu.qmp.execute("query-migrate")
        requests = info["ram"]["postcopy-requests"]
        preempt = incoming.query()["x-postcopy"]["preempt"]
        print(f"QEMU postcopy-requests={requests}, harness preempt channel: {preempt}")
        assert preempt["eos"] is True and 3 <= preempt["pages"] <= requests
        assert np.array_equal(incoming.loaded_digests["ram"], content.digests()["ram"])
        assert not fast.running


@USERFAULTFD_MARK
def test_harness_source_serves_a_qemu_destination_on_the_preempt_channel(tmp_path):
    with source_to_qemu_in_postcopy(tmp_path, seed=59, capabilities=CAPS) as pair:
        for addr in (0xF00000, 0xA00123, 0x800000):  # not pushed yet at 64 KiB/s
            assert _xp(pair.qemu, addr) == pair.ram[addr:addr + 8].tobytes(), hex(addr)
        pair.complete(tmp_path)


def test_qemu_source_recovers_onto_two_new_connections_after_a_pause(tmp_path):
    """migrate-pause on the harness destination breaks main; the destination closes the
    preempt channel too, so QEMU pauses; migrate-recover + `migrate resume=true` bring two
    new connections (main, then preempt) and requested pages keep coming on the new
    preempt channel (P6)."""
    with qemu_to_harness(tmp_path, seed=61) as (qemu, incoming, content, _):
        fast = incoming.fast_load
        assert fast is not None
        _until(lambda: fast.pages >= 1, "a requested page on the first preempt channel")
        incoming.pause()
        _until(lambda: str(incoming.state.status) == "postcopy-paused", "harness paused")
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "postcopy-paused",
               "QEMU paused")
        before = fast.pages
        incoming.migrate_recover("tcp:127.0.0.1:0")
        assert incoming.socket_address is not None
        port = incoming.socket_address[0]["port"]
        qemu.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}", "resume": True})
        _until(lambda: str(incoming.state.status) == "postcopy-active", "harness resumed")
        _until(lambda: fast.pages > before, "a requested page on the new preempt channel")
        qemu.qmp.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 1 << 30})
        _until(lambda: str(incoming.state.status) in ("completed", "failed"), "the end")
        assert str(incoming.state.status) == "completed", incoming.error_desc
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "completed",
               "QEMU completed")
        print(f"preempt pages before the pause {before}, in all {fast.pages}")
        assert fast.eos is True
        assert np.array_equal(incoming.loaded_digests["ram"], content.digests()["ram"])
