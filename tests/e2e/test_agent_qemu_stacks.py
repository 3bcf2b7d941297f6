"""`peer-stacks` of a QEMU an agent runs (kind "qemu") shows QEMU's own threads from /proc
-- the QEMU the wrapper started, by the pid its facts name -- not the wrapper's Python
stack (harness/control/agent_qemu.qemu_stacks)."""

from __future__ import annotations

from tests.e2e.test_agent_qemu import _destination, conn  # noqa: F401 - the fixture
from tests.qemu_env import QEMU_MARKS

pytestmark = QEMU_MARKS


def test_the_stacks_of_a_remote_qemu_peer_are_qemus_threads(conn):  # noqa: F811
    peer = _destination(conn)
    qemu_pid = peer.facts()["qemu-pid"]
    assert qemu_pid is not None and qemu_pid != peer.pid  # QEMU, not its wrapper
    stacks = peer.stacks()
    assert stacks.startswith(f"QEMU pid {qemu_pid} (qemu-system-x86"), stacks
    threads = [line for line in stacks.splitlines() if line.startswith("thread ")]
    assert len(threads) >= 2 and all("waiting in" in t for t in threads), stacks
    assert "most recent call first" not in stacks  # no faulthandler dump of the wrapper
    peer.close()
    assert peer.leftovers == []
