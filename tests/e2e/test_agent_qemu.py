"""A QEMU an agent runs (kind "qemu", harness/qemu/served.py), driven as the runner does.

One loopback agent starts a real `-M none` QEMU destination through its wrapper: QMP
commands are relayed with QEMU's own error classes, QEMU's events arrive on the runner's
clock with QEMU's timestamps, and when a garbage stream makes QEMU's load fail, the
wrapper exits with QEMU's status and its log holds QEMU's stderr, so the coordinator's
`outcome.dead_peer_status` reads `failed` exactly as for a local QEMU.  Bad options are refused
before anything starts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from harness.control import CommandError
from harness.control.agent_qemu import QemuSpec
from harness.runner.agents import AgentConnection
from harness.runner.outcome import dead_peer_status
from harness.runner.remote_qemu import RemoteQemuPeer
from harness.scenario.model import Host
from tests.e2e.test_agent import AgentProcess, gone
from tests.qemu_env import QEMU_MARKS

pytestmark = QEMU_MARKS


@pytest.fixture
def conn(tmp_path) -> Iterator[AgentConnection]:
    agent = AgentProcess("--orphan-grace", "5", "--workdir", str(tmp_path / "agent"))
    connection = AgentConnection("h", Host(agent=agent.url), "qemu-run")
    try:
        connection.connect()
        yield connection
    finally:
        connection.end_run()
        agent.close()
    assert connection.leftovers == []


def _destination(conn: AgentConnection) -> RemoteQemuPeer:
    spec = QemuSpec.from_options("destination", {"machine": "none", "memory": 16 << 20})
    peer = RemoteQemuPeer("destination", conn, spec, program=None)
    peer.start()
    return peer


def _until(peer: RemoteQemuPeer, done, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    seen: list = []
    while time.monotonic() < deadline and not done(seen):
        seen += peer.poll_events()
        time.sleep(0.02)
    return seen


def test_qmp_is_relayed_with_qemus_error_classes_and_event_timestamps(conn):
    peer = _destination(conn)
    assert peer.runstate() == "inmigrate"
    facts = peer.facts()
    assert facts["host"] == "h" and facts["qemu-version"].startswith("7.")
    with pytest.raises(CommandError) as refused:
        peer.execute("qom-get", {"path": "/nowhere", "property": "type"})
    assert refused.value.error_class == "DeviceNotFound"  # QEMU's class, not ours
    peer.execute("migrate-set-capabilities",
                 {"capabilities": [{"capability": "events", "state": True}]})
    before = time.time()
    peer.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    [setup] = [e for e in _until(peer, lambda s: any(e.name == "MIGRATION" for e in s))
               if e.name == "MIGRATION"]
    assert setup.data == {"status": "setup"}
    assert before - 1 <= setup.timestamp <= time.time() + 1  # QEMU's clock, moved to ours
    peer.close()
    assert gone([peer.pid], timeout=10)


def test_a_failed_load_exits_with_qemus_status_and_its_stderr_reaches_the_runner(conn):
    peer = _destination(conn)
    peer.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    port = next(a["port"] for a in peer.execute("query-migrate")["socket-address"])
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
        s.sendall(b"QEVM\x00\x00\x00\x03" + b"\xff" * 64)  # a header, then garbage
    deadline = time.monotonic() + 10
    while peer.alive() and time.monotonic() < deadline:
        peer.poll_events()
        time.sleep(0.02)
    assert not peer.alive()
    assert peer.exit_code() == 1
    tail = peer.stderr_tail(5)
    assert "load of migration failed" in tail, tail
    assert dead_peer_status(True, "destination", "active", 1, tail) == "failed"


@pytest.mark.parametrize("options, says", [
    ({"memory": 16 << 20, "machine": "pc", "bogus": 1}, "member 'bogus' is unexpected"),
    ({"machine": "pc"}, "memory"),
    ({"memory": 16 << 20, "accel": "hvf"}, "accel"),
    ({"memory": 16 << 20, "args": ["-m", 5]}, "args"),
    ({"memory": 16 << 20, "program": {"memory": 3}}, "program"),
])
def test_bad_qemu_options_are_refused_before_anything_starts(conn, options, says):
    from harness.control import agent_messages as am

    with pytest.raises(CommandError, match=says):
        conn.request(am.PeerStart("destination", "destination", {}, kind="qemu",
                                  options=options), timeout=10)
