"""Postcopy recovery between real peer processes: `python -m harness source|destination`
driven over their control planes, as the runner drives them.

migrate-pause breaks the channel during postcopy; both peers pause (the guest keeps
running on the destination), migrate-recover on a tcp port 0 and `migrate` with
`resume: true` recover it, and the migration completes with the memory the destination
guest found on each page equal to the source's.  Every process is reaped, also when the
test fails.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from harness.control import CommandError
from harness.migration.status import MIGRATE_PAUSE_REFUSED, MIGRATE_RECOVER_REFUSED
from harness.runner.peers import HarnessPeer, short_dir
from tests.e2e.harness_pair import harness_pair

MiB = 1 << 20
WAIT = 60.0
GUEST = {"machine": "none", "seed": 5, "fill": 0.5, "blocks": [{"name": "ram", "size": 32 * MiB}],
         "devices": ["timer", "globalstate", "cpu"],
         "workload": {"dirty_rate": 8 * MiB, "pattern": "uniform", "hotset": 0, "seed": 5}}


def _status(peer: HarnessPeer, want: set[str], timeout: float = WAIT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = peer.execute("query-migrate") or {}
        if info.get("status") in want:
            return dict(info)
        assert time.monotonic() < deadline, f"{peer.role} still {info.get('status')}"
        time.sleep(0.01)


@pytest.fixture
def peers(tmp_path) -> Iterator[tuple[HarnessPeer, HarnessPeer]]:
    with harness_pair(tmp_path, GUEST) as pair:
        yield pair


def _statuses(peer: HarnessPeer) -> list[str]:
    return [e.data["status"] for e in peer.poll_events() if e.name == "MIGRATION"]


def test_migrate_pause_then_recover_completes_with_identical_memory(peers):
    src, dst = peers
    sockdir = short_dir("mhr")
    try:
        caps = {"capabilities": [{"capability": "postcopy-ram", "state": True},
                                 {"capability": "events", "state": True}]}
        for peer in (src, dst):
            peer.execute("migrate-set-capabilities", caps)
        src.execute("migrate-set-parameters", {"max-bandwidth": 8 * MiB,
                                               "max-postcopy-bandwidth": 4 * MiB})
        dst.execute("x-incoming-snapshot", {"enable": True})
        uri = f"unix:{sockdir}/m.sock"
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate", {"uri": uri})
        _status(src, {"active"})
        src.execute("migrate-start-postcopy")
        _status(src, {"postcopy-active"})
        _status(dst, {"postcopy-active"})

        src.execute("migrate-pause")
        paused = _status(src, {"postcopy-paused"})
        _status(dst, {"postcopy-paused"})
        assert dst.runstate() == "running" and src.runstate() == "finish-migrate"
        requests = paused["ram"]["postcopy-requests"]
        with pytest.raises(CommandError) as refused:
            src.execute("migrate-pause")
        assert refused.value.desc == MIGRATE_PAUSE_REFUSED

        dst.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
        address = dst.execute("query-migrate")["socket-address"][0]
        assert int(address["port"]) > 0
        src.execute("migrate", {"uri": f"tcp:127.0.0.1:{address['port']}", "resume": True})
        done = _status(src, {"completed"})
        _status(dst, {"completed"})
        with pytest.raises(CommandError) as refused:
            dst.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
        assert refused.value.desc == MIGRATE_RECOVER_REFUSED

        assert done["ram"]["postcopy-requests"] >= requests
        assert dst.runstate() == "running" and src.runstate() == "postmigrate"
        source, arrived = src.digests(), dst.digests(at_incoming=True)
        assert source is not None and arrived is not None
        assert np.array_equal(source["ram"], arrived["ram"])
        expected = ["setup", "active", "postcopy-active", "postcopy-paused",
                    "postcopy-recover", "postcopy-active", "completed"]
        assert _statuses(src) == expected
        # QEMU 7.2 announces "setup" when migrate-recover starts listening
        # (qemu_start_incoming_migration); the destination stays postcopy-paused
        assert _statuses(dst) == [*expected[:4], "setup", *expected[4:]]
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
