"""Migration settings do what QEMU 7.2 does with them, or are refused: real peer processes.

Peers are `python -m harness source|destination` driven over their control planes
(HarnessPeer, reaped by the context manager also when a test fails) and, for
pause-before-switchover, over the real QMP socket with QEMU's own `qemu.qmp` client.
Each test shows the effect of a setting (tests/unit/test_migration_settings.py lists
which test shows which) or its refusal in QEMU's or the harness's exact words.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.control import CommandError
from harness.runner.peers import HarnessPeer
from tests.e2e.test_qmp_socket import _caps, _connect, _short_dir, _start, _statuses, _stop
from tests.e2e.test_qmp_socket import _wait_status as _qmp_wait_status

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
WAIT = 60.0
GUEST = {"machine": "none", "seed": 5, "fill": 0.5, "blocks": [{"name": "ram", "size": 8 * MiB}],
         "devices": ["timer", "globalstate"]}
UUID_A = "11111111-2222-3333-4444-555555555555"
UUID_B = "66666666-7777-8888-9999-aaaaaaaaaaaa"


@contextmanager
def pair(tmp_path: Path, src_args: list[str] | None = None, dst_args: list[str] | None = None
         ) -> Iterator[tuple[HarnessPeer, HarnessPeer, str]]:
    """A source and a deferred destination; both closed and checked gone at the end."""
    sockdir = _short_dir()
    dst = HarnessPeer("destination", tmp_path, GUEST, ["--incoming", "defer", *(dst_args or [])])
    src = HarnessPeer("source", tmp_path, GUEST, list(src_args or []))
    try:
        dst.start()
        src.start()
        yield src, dst, f"unix:{sockdir}/m.sock"
    finally:
        for peer in (src, dst):
            peer.close()
            assert not peer.alive()
        shutil.rmtree(sockdir, ignore_errors=True)


def _caps_on(peer: HarnessPeer, *names: str) -> None:
    peer.execute("migrate-set-capabilities", _caps(*names))


def _status(peer: HarnessPeer, want: set[str], timeout: float = WAIT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = peer.execute("query-migrate") or {}
        if info.get("status") in want:
            return dict(info)
        assert time.monotonic() < deadline, f"{peer.role}: still {info.get('status')}"
        time.sleep(0.01)


def _statuses_heard(peer: HarnessPeer, last: str) -> list[str]:
    """The MIGRATION statuses the peer sent, in order, up to `last` (an event may arrive
    after query-migrate already shows the status: each is waited for, with a deadline)."""
    seen: list[str] = []
    while last not in seen:
        seen.append(peer.client.wait_event("MIGRATION", timeout=WAIT).data["status"])
    return seen


def _refused(peer: HarnessPeer, command: str, arguments: dict[str, Any]) -> str:
    with pytest.raises(CommandError) as err:
        peer.execute(command, arguments)
    return str(err.value.desc)


def _same_memory(src: HarnessPeer, dst: HarnessPeer) -> None:
    a, b = src.digests(), dst.digests()
    assert a is not None and b is not None and a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), f"block {name} differs"


# ---------------------------------------------------------------------- pause-before-switchover
def test_pause_before_switchover_waits_in_pre_switchover_until_migrate_continue(tmp_path):
    with pair(tmp_path) as (src, dst, uri):
        for peer in (src, dst):
            _caps_on(peer, "events", "pause-before-switchover")
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        _status(src, {"pre-switchover"})
        assert src.runstate() == "finish-migrate"  # stopped for the switch, as QEMU
        time.sleep(0.5)  # it stays paused: nothing moves on without migrate-continue
        assert _status(src, {"pre-switchover"}, timeout=1)["status"] == "pre-switchover"
        assert _status(dst, {"active"}, timeout=1)["status"] == "active"
        assert _refused(src, "migrate-continue", {"state": "active"}) == (
            "Migration not in expected state: pre-switchover")
        assert _refused(src, "migrate-continue", {"state": "bogus"}) == (
            "Parameter 'state' does not accept value 'bogus'")
        assert _refused(src, "migrate-continue", {}) == "Parameter 'state' is missing"
        assert _refused(dst, "migrate-continue", {"state": "pre-switchover"}) == (
            "Migration not in expected state: none")
        src.execute("migrate-continue", {"state": "pre-switchover"})
        assert _status(src, {"completed", "failed"})["status"] == "completed"
        assert _status(dst, {"completed", "failed"})["status"] == "completed"
        assert _statuses_heard(src, "completed") == ["setup", "active", "pre-switchover",
                                                     "device", "completed"]
        assert _refused(src, "migrate-continue", {"state": "pre-switchover"}) == (
            "Migration not in expected state: completed")
        _same_memory(src, dst)


def test_cancel_in_pre_switchover_cancels_and_restarts_the_guest(tmp_path):
    with pair(tmp_path) as (src, dst, uri):
        for peer in (src, dst):
            _caps_on(peer, "events", "pause-before-switchover")
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        _status(src, {"pre-switchover"})
        src.execute("migrate_cancel")
        assert _status(src, {"cancelled", "completed", "failed"})["status"] == "cancelled"
        assert src.runstate() == "running"
        assert _statuses_heard(src, "cancelled")[-3:] == ["pre-switchover", "cancelling",
                                                          "cancelled"]


def test_pause_before_switchover_before_postcopy_then_postcopy_active(tmp_path):
    with pair(tmp_path) as (src, dst, uri):
        for peer in (src, dst):
            _caps_on(peer, "events", "pause-before-switchover", "postcopy-ram")
        _caps_on(dst, "postcopy-ram", "postcopy-blocktime")
        src.execute("migrate-set-parameters", {"max-bandwidth": 1 * MiB})  # stays in precopy
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        _status(src, {"active"})
        src.execute("migrate-start-postcopy")
        _status(src, {"pre-switchover"})
        src.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
        src.execute("migrate-continue", {"state": "pre-switchover"})
        assert _status(src, {"completed", "failed"})["status"] == "completed"
        assert _status(dst, {"completed", "failed"})["status"] == "completed"
        assert _statuses_heard(src, "completed") == ["setup", "active", "pre-switchover",
                                                     "postcopy-active", "completed"]
        _same_memory(src, dst)
        info = dst.execute("query-migrate")  # postcopy-blocktime on: QEMU's figure is there
        assert info["postcopy-blocktime"] == info["x-postcopy"]["blocked-ms"] >= 0


def test_postcopy_blocktime_is_reported_only_with_its_capability(tmp_path):
    with pair(tmp_path) as (src, dst, uri):
        for peer in (src, dst):
            _caps_on(peer, "postcopy-ram")
        src.execute("migrate-set-parameters", {"max-bandwidth": 1 * MiB})
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        _status(src, {"active"})
        src.execute("migrate-start-postcopy")  # postcopy pushes at max-postcopy-bandwidth: 0
        info = _status(dst, {"completed", "failed"})
        assert info["status"] == "completed"
        assert "x-postcopy" in info, info  # it did go through postcopy
        assert "postcopy-blocktime" not in info  # as QEMU 7.2 without blocktime_ctx
        assert info["x-postcopy"]["blocked-ms"] >= 0  # the harness's own figure stays


def test_pause_before_switchover_over_the_real_qmp_socket():
    sockdir = _short_dir()
    peers = []
    try:
        peers.append(_start("destination", sockdir))
        peers.append(_start("source", sockdir))
        dst_peer, src_peer = peers

        async def scenario() -> None:
            src, dst = await _connect(src_peer), await _connect(dst_peer)
            try:
                with src.listener("MIGRATION") as events:
                    for client in (src, dst):
                        await client.execute("migrate-set-capabilities",
                                             _caps("events", "pause-before-switchover"))
                    caps = await src.execute("query-migrate-capabilities")
                    assert {"capability": "pause-before-switchover", "state": True} in caps
                    uri = f"unix:{sockdir}/mig.sock"
                    await dst.execute("migrate-incoming", {"uri": uri})
                    await src.execute("migrate", {"uri": uri})
                    await _qmp_wait_status(src, {"pre-switchover"})
                    assert (await src.execute("query-status"))["status"] == "finish-migrate"
                    await src.execute("migrate-continue", {"state": "pre-switchover"})
                    await _qmp_wait_status(src, {"completed"})
                    await _qmp_wait_status(dst, {"completed"})
                    heard = await _statuses(events, "completed")
                    assert heard == ["setup", "active", "pre-switchover", "device", "completed"]
            finally:
                await src.disconnect()
                await dst.disconnect()

        asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        for peer in peers:
            _stop(peer)
        shutil.rmtree(sockdir, ignore_errors=True)


# ---------------------------------------------------------------------- tls
def test_tls_creds_fail_the_migration_as_qemu_does_without_the_object(tmp_path):
    with pair(tmp_path) as (src, dst, uri):
        _caps_on(src, "events")
        src.execute("migrate-set-parameters", {"tls-creds": "tls0", "tls-hostname": "dst"})
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})  # asynchronous, as QEMU's
        info = _status(src, {"failed", "completed"})
        assert info == {"status": "failed", "error-desc": "No TLS credentials with id 'tls0'"}
        assert src.runstate() == "running"
        assert _statuses_heard(src, "failed") == ["setup", "failed"]


def test_tls_creds_on_the_destination_fail_the_incoming_migration(tmp_path):
    with pair(tmp_path) as (src, dst, uri):
        dst.execute("migrate-set-parameters", {"tls-creds": "tls1"})
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        info = _status(dst, {"failed", "completed"})
        assert info["status"] == "failed"
        assert info["error-desc"] == "No TLS credentials with id 'tls1'"
        assert _status(src, {"failed", "completed"})["status"] == "failed"
        assert dst.runstate() != "running"


# ---------------------------------------------------------------------- validate-uuid
def test_validate_uuid_refuses_a_guest_with_another_uuid(tmp_path):
    with pair(tmp_path, ["--uuid", UUID_A], ["--uuid", UUID_B]) as (src, dst, uri):
        _caps_on(src, "validate-uuid")
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        info = _status(dst, {"failed", "completed"})
        assert info["status"] == "failed"
        assert f"UUID received is {UUID_A} and local is {UUID_B}" in info["error-desc"]


def test_validate_uuid_passes_the_same_uuid_and_without_it_nothing_is_checked(tmp_path):
    with pair(tmp_path, ["--uuid", UUID_A], ["--uuid", UUID_A]) as (src, dst, uri):
        _caps_on(src, "validate-uuid")
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        assert _status(dst, {"failed", "completed"})["status"] == "completed"
        _same_memory(src, dst)
    with pair(tmp_path, ["--uuid", UUID_A], ["--uuid", UUID_B]) as (src, dst, uri):
        dst.execute("migrate-incoming", {"uri": uri})  # validate-uuid off: no UUID is sent
        src.execute("migrate", {"uri": uri})
        assert _status(dst, {"failed", "completed"})["status"] == "completed"


# ---------------------------------------------------------------------- x-ignore-shared
def test_x_ignore_shared_stream_is_well_formed_and_migrates_everything(tmp_path):
    with pair(tmp_path) as (src, dst, uri):
        for peer in (src, dst):
            _caps_on(peer, "x-ignore-shared")
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        assert _status(src, {"failed", "completed"})["status"] == "completed"
        assert _status(dst, {"failed", "completed"})["status"] == "completed"
        _same_memory(src, dst)  # no block is shared: none is skipped


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("capability", ["release-ram", "late-block-activate",
                                        "dirty-bitmaps", "x-colo"])
def test_unimplemented_capabilities_are_refused_and_not_listed(tmp_path, capability):
    with pair(tmp_path) as (src, dst, _):
        for peer in (src, dst):
            assert _refused(peer, "migrate-set-capabilities", _caps(capability)) == (
                f"Capability '{capability}' is not implemented by the harness peer")
            listed = {c["capability"] for c in peer.execute("query-migrate-capabilities")}
            assert capability not in listed and "pause-before-switchover" in listed


def test_unimplemented_parameters_are_refused_but_their_defaults_accepted(tmp_path):
    with pair(tmp_path) as (src, _dst, uri):
        assert _refused(src, "migrate-set-parameters", {"x-checkpoint-delay": 5}) == (
            "Parameter 'x-checkpoint-delay' is not implemented by the harness peer "
            "(only its default 20000)")
        src.execute("migrate-set-parameters", {"x-checkpoint-delay": 20000,
                                               "announce-rounds": 5})
        # multifd with postcopy-preempt: 7.2 accepts it and deadlocks (P7); refused here
        assert _refused(src, "migrate-set-capabilities",
                        _caps("multifd", "postcopy-ram", "postcopy-preempt")) == (
            "multifd with postcopy-preempt is refused by the harness peer: QEMU 7.2 accepts "
            "it, then its destination reads the preempt channel as a multifd channel and "
            "deadlocks")
        # block migration: migrate's blk/inc with the block capability set (B1)
        src.execute("migrate-set-capabilities", _caps("block"))
        for option in ("blk", "inc"):
            assert _refused(src, "migrate", {"uri": uri, option: True}) == (
                "Command options are incompatible with current migration capabilities")
        assert src.execute("query-migrate") == {}  # nothing started


# ---------------------------------------------------------------------- harness validate
def test_harness_validate_refuses_a_harness_scenario_with_tls_or_release_ram(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    path = tmp_path / "tls.yaml"
    path.write_text("name: tls\ncapabilities: {release-ram: true}\n"
                    "parameters: {tls-creds: tls0}\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "validate", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert (f"{path}:2:29: capabilities.release-ram: release-ram is not implemented by the "
            "harness peer") in out
    assert (f"{path}:3:25: parameters.tls-creds: a harness peer gets its TLS objects and "
            "tls-creds from a tls: block; without it `migrate` would fail with \"No TLS "
            "credentials with id 'tls0'\"") in out
