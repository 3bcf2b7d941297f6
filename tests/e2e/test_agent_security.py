"""An agent with CURVE keys does nothing for a client it does not know.

Real agents and real zmq clients: keys from `harness agent keygen`, an agent bound with
`--keys`, then clients without a key, with a wrong server key, and with a valid keypair
nobody authorized each ask it to start a peer -- and get no reply, while the agent starts
no process -- and the authorized client can.  A non-loopback bind without keys is refused
before anything is bound (so the address need not exist).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from harness.control import CommandError
from harness.control.curve import load_client_keys
from harness.runner.agent_peer import AgentPeer
from harness.runner.agents import AgentConnection
from harness.scenario.model import Host
from tests.conftest import REPO
from tests.e2e.test_agent import GUEST, AgentProcess, gone

WAIT = 2.0  # how long a refused client waits for a reply that must not come


def keygen(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "agent", "keygen", str(directory)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def keys(tmp_path) -> Path:
    directory = tmp_path / "keys"
    done = keygen(directory)
    assert done.returncode == 0, done.stderr
    return directory


@pytest.fixture
def curve_agent(keys):
    agent = AgentProcess("--keys", str(keys))
    try:
        yield agent
    finally:
        agent.close()


def test_keygen_writes_both_keypairs_with_private_secrets(keys):
    for name in ("server", "client"):
        assert (keys / f"{name}.key").is_file()
        mode = stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode)
        assert mode == 0o600, oct(mode)
    assert (keys / "authorized" / "client.key").read_text() == (keys / "client.key").read_text()
    again = keygen(keys)  # never overwrites keys someone may have copied already
    assert again.returncode == 2 and "exists already" in again.stderr


def _raw_client(url: str, sockopts: dict[int, Any]) -> zmq.Socket[Any]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in sockopts.items():
        sock.setsockopt(option, value)
    sock.connect(url)
    return sock


def _ask_to_start_a_peer(sock: zmq.Socket[Any]) -> None:
    for msg_id, (command, arguments) in enumerate([
            ("qmp_capabilities", {}), ("agent-hello", {"run-id": "intruder"}),
            ("peer-start", {"peer": "source", "role": "source", "guest": GUEST})], 1):
        sock.send(json.dumps({"execute": command, "arguments": arguments,
                              "id": msg_id}).encode())


def test_clients_without_the_right_keys_get_nothing_done(curve_agent, keys, tmp_path):
    server_public = (keys / "server.key").read_text()
    client = load_client_keys(keys)
    stranger_public, stranger_secret = zmq.curve_keypair()
    wrong_server, _ = zmq.curve_keypair()
    clients = {
        "no key": {},
        "wrong server key": {zmq.CURVE_SERVERKEY: wrong_server,
                             zmq.CURVE_PUBLICKEY: client.public,
                             zmq.CURVE_SECRETKEY: client.secret},
        "valid but unauthorized key": {zmq.CURVE_SERVERKEY: client.server_public,
                                       zmq.CURVE_PUBLICKEY: stranger_public,
                                       zmq.CURVE_SECRETKEY: stranger_secret},
    }
    assert "public-key" in server_public
    socks = {name: _raw_client(curve_agent.url, opts) for name, opts in clients.items()}
    try:
        for sock in socks.values():
            _ask_to_start_a_peer(sock)
        deadline = time.monotonic() + WAIT
        replies: dict[str, list[bytes]] = {name: [] for name in socks}
        while time.monotonic() < deadline:
            for name, sock in socks.items():
                if sock.poll(10, zmq.POLLIN):
                    replies[name].append(sock.recv())
        assert replies == {name: [] for name in socks}
        assert curve_agent.peers() == [], "the agent started a process for a stranger"
    finally:
        for sock in socks.values():
            sock.close(linger=0)
    # ... while the authorized runner is served: its peer starts, and is reaped at the end
    conn = AgentConnection("h", Host(agent=curve_agent.url, keys=keys), "authorized-run")
    try:
        reply = conn.connect()
        assert reply["resynced"] is False and reply["facts"]["agent-pid"] == curve_agent.pid
        peer = AgentPeer("source", conn, GUEST, incoming=False)
        peer.start()
        assert [p.pid for p in curve_agent.peers()] == [peer.pid]
        assert peer.runstate() == "running"
    finally:
        conn.end_run()
    assert gone([peer.pid], timeout=10)


def test_a_runner_with_keys_the_agent_does_not_know_is_told_so(curve_agent, tmp_path):
    other = tmp_path / "other-keys"
    assert keygen(other).returncode == 0  # a whole other pair: server key wrong too
    conn = AgentConnection("h", Host(agent=curve_agent.url, keys=other), "lost-run")
    try:
        with pytest.raises(Exception) as failed:
            conn.connect(timeout=WAIT)
    finally:
        conn.client.close()
    assert "did not answer within" in str(failed.value) and "keys" in str(failed.value)
    assert curve_agent.peers() == []


def test_a_bind_that_is_not_an_endpoint_is_refused_at_startup():
    done = subprocess.run([sys.executable, "-m", "harness", "agent", "--bind",
                           "tcp://127.0.0.1:99999"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "expected tcp://ADDR:PORT" in done.stderr, done.stderr


@pytest.mark.parametrize("bind", ["tcp://198.18.0.1:7000", "tcp://0.0.0.0:0", "tcp://*:7000",
                                  "tcp://agent.example:7000"])
def test_a_non_loopback_bind_without_keys_is_refused_at_startup(bind):
    done = subprocess.run([sys.executable, "-m", "harness", "agent", "--bind", bind], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"--bind {bind} is not a loopback address" in done.stderr
    assert "harness agent keygen DIR" in done.stderr and "Traceback" not in done.stderr


def test_keys_that_are_missing_or_readable_by_others_are_refused(keys, tmp_path):
    os.chmod(keys / "server.key_secret", 0o644)
    done = subprocess.run([sys.executable, "-m", "harness", "agent", "--keys", str(keys)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "harness", "agent", "--keys", str(empty)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "no such key file" in done.stderr, done.stderr


# ---------------------------------------------------------------------- the agent's host
class RawClient:
    """A bare zmq client of an agent: requests with ids, replies matched by id."""

    def __init__(self, url: str) -> None:
        self.sock = _raw_client(url, {})
        self.next_id = 0

    def ask(self, command: str, arguments: dict[str, Any], timeout: float = 30.0
            ) -> dict[str, Any]:
        self.next_id += 1
        self.sock.send(json.dumps({"execute": command, "arguments": arguments,
                                   "id": self.next_id}).encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(50, zmq.POLLIN):
                reply = json.loads(self.sock.recv_multipart()[0])
                if reply.get("id") == self.next_id:
                    return reply
        raise AssertionError(f"no reply to {command} within {timeout} s")

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the agent's directory that nothing may truncate."""
    path = tmp_path / "victim" / "app.log"
    path.parent.mkdir()
    path.write_text("precious\n")
    return path


@pytest.mark.parametrize("run_id, peer", [
    ("../../victim/app", "source"), ("ok-run", "../../../victim/app"), ("ok-run", "a/b"),
    ("x" * 65, "source"), ("", "source"), ("ok-run", "sp ace")])
def test_run_ids_and_peer_names_are_plain_names(tmp_path, victim, run_id, peer):
    agent = AgentProcess("--workdir", str(tmp_path / "agent"))
    client = RawClient(agent.url)
    try:
        hello = client.ask("agent-hello", {"run-id": run_id})
        if run_id != "ok-run":
            assert "error" in hello and "is not a name" in hello["error"]["desc"], hello
            assert "[A-Za-z0-9_-]{1,64}" in hello["error"]["desc"]
        else:
            assert "return" in hello, hello
            start = client.ask("peer-start", {"peer": peer, "role": "source", "guest": GUEST})
            assert "error" in start and "is not a name" in start["error"]["desc"], start
        assert agent.peers() == []
    finally:
        client.close()
        agent.close()
    assert victim.read_text() == "precious\n"
    assert [p.name for p in (tmp_path / "agent").rglob("*.log")] == []


def test_the_agent_prunes_only_run_directories_it_made(tmp_path):
    workdir = tmp_path / "work"
    mine = [workdir / f"user-{n:02d}" for n in range(25)]
    for n, directory in enumerate(mine):
        directory.mkdir(parents=True)
        (directory / "data").write_text(str(n))
        os.utime(directory, (n, n))  # older than anything the agent makes
    (workdir / "runs" / "not-a-run").mkdir(parents=True)  # in runs/, but unmarked
    agent = AgentProcess("--workdir", str(workdir))
    client = RawClient(agent.url)
    try:
        for n in range(23):  # more runs than it keeps
            assert "return" in client.ask("agent-hello", {"run-id": f"r{n:02d}"})
            assert "return" in client.ask("agent-end-run", {})
    finally:
        client.close()
        agent.close()
    assert all((d / "data").is_file() for d in mine), "user directories were removed"
    assert (workdir / "runs" / "not-a-run").is_dir()
    runs = sorted(d.name for d in (workdir / "runs").iterdir() if d.name.startswith("r"))
    assert len(runs) == 21 and "r22" in runs, runs  # its own are pruned (KEEP_RUNS + 1)


def test_migrate_incoming_unix_cannot_take_over_a_path_outside_the_run(tmp_path):
    agent = AgentProcess("--workdir", str(tmp_path / "agent"))
    conn = AgentConnection("h", Host(agent=agent.url), "unix-run")
    directory = tempfile.mkdtemp(prefix="mha", dir="/tmp")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(f"{directory}/live")
        live.listen(1)
        stale.bind(f"{directory}/stale")  # bound, never listening: a dead peer's leftover
        inodes = {name: os.stat(f"{directory}/{name}").st_ino for name in ("live", "stale")}
        conn.connect()
        peer = AgentPeer("destination", conn, GUEST, incoming=True)
        peer.start()
        for name, inode in inodes.items():
            with pytest.raises(CommandError) as refused:
                peer.execute("migrate-incoming", {"uri": f"unix:{directory}/{name}"})
            assert "outside the run's directory" in refused.value.desc, refused.value
            assert os.stat(f"{directory}/{name}").st_ino == inode
        fresh = f"{directory}/fresh"  # a new socket where nothing was: allowed
        peer.execute("migrate-incoming", {"uri": f"unix:{fresh}"})
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600
    finally:
        conn.end_run()
        live.close()
        stale.close()
        agent.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_an_oversized_message_ends_one_connection_not_the_agent(tmp_path):
    agent = AgentProcess("--workdir", str(tmp_path / "agent"))
    big = _raw_client(agent.url, {})
    monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    client = RawClient(agent.url)
    try:
        big.send(b"{" + b" " * ((64 << 20) - 2) + b"}", copy=False)
        poller = zmq.Poller()
        poller.register(big, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + 120
        ready: dict[Any, int] = {}
        while not ready and time.monotonic() < deadline:
            ready = dict(poller.poll(100))
        assert monitor in ready, "the agent took a 64 MiB message"
        assert "return" in client.ask("agent-time", {})
    finally:
        big.disable_monitor()
        monitor.close(linger=0)
        big.close(linger=0)
        client.close()
        agent.close()
