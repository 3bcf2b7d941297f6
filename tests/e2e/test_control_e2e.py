"""harness.control end to end: a ControlServer in a real (spawned) child process.

The child registers a few commands (echo, a CommandError, a ValueError, a 4 MiB blob, an
event burst from a second thread, exit mid-command, quit).  Every child is reaped by the
`peers` fixture, even when the test fails (SIGCONT first, in case it was stopped).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import pytest

from harness.control import (
    COMMAND_NOT_FOUND,
    DEVICE_NOT_ACTIVE,
    GENERIC_ERROR,
    BlobResult,
    CommandError,
    ControlClient,
    ControlServer,
    ControlTimeout,
    LinkState,
    PeerGone,
    ipc_path,
    new_ipc_address,
)

STARTUP = 20.0          # spawn + imports, generous for a loaded CI machine under -n
DEADLINE = 60.0         # a command's timeout where the test proves it was not waited out
DIGEST_WORDS = 4 * 1024 * 1024 // 8  # a 4 MiB blob of uint64


# ---------------------------------------------------------------------- the child peer
def _peer_main(address: str, conn: Any) -> None:
    server = ControlServer(address, role="test-peer")
    stop = threading.Event()
    emitters: list[threading.Thread] = []

    def start_events(arguments: dict[str, Any]) -> dict[str, Any]:
        thread = threading.Thread(target=_emit_ticks, daemon=True, args=(
            server, int(arguments["count"]), float(arguments.get("pause", 0.0))))
        thread.start()
        emitters.append(thread)
        return {}

    def quit_(arguments: dict[str, Any]) -> dict[str, Any]:
        stop.set()
        return {}

    server.register("echo", lambda arguments: arguments)
    server.register("fail", _fail)
    server.register("crash", _crash)
    server.register("digests", lambda arguments: BlobResult(
        {"pages": DIGEST_WORDS}, np.arange(DIGEST_WORDS, dtype="<u8").tobytes()))
    server.register("start-events", start_events)
    server.register("exit", lambda arguments: os._exit(int(arguments["code"])))
    server.register("quit", quit_)
    conn.send(server.address)
    conn.close()
    try:
        server.serve_forever(stop)
        for thread in emitters:
            thread.join(10)
        server.serve_once(0)  # what the emitters queued last
    finally:
        server.close()


def _emit_ticks(server: ControlServer, count: int, pause: float) -> None:
    for seq in range(count):
        server.emit("TICK", {"seq": seq})
        if pause:
            time.sleep(pause)
    server.emit("TICKS_DONE", {"count": count})


def _fail(arguments: dict[str, Any]) -> Any:
    raise CommandError(DEVICE_NOT_ACTIVE, "No migration in progress")


def _crash(arguments: dict[str, Any]) -> Any:
    raise ValueError("disk on fire")


# ---------------------------------------------------------------------- fixtures
@dataclass
class Peer:
    proc: Any  # multiprocessing.Process (spawn context)
    address: str

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


def _start_peer(address: str) -> Peer:
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_peer_main, args=(address, sender), daemon=True)
    proc.start()
    sender.close()
    with receiver:
        if not receiver.poll(STARTUP):
            raise AssertionError(f"peer did not report its address within {STARTUP} s "
                                 f"(exit code {proc.exitcode})")
        return Peer(proc, receiver.recv())


def _reap(peer: Peer) -> None:
    if peer.proc.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(peer.pid, signal.SIGCONT)
        peer.proc.terminate()
        peer.proc.join(5)
    if peer.proc.is_alive():
        peer.proc.kill()
        peer.proc.join(5)
    path = ipc_path(peer.address)
    if path is not None and os.path.exists(path):  # a killed peer cannot clean up
        os.unlink(path)


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(address: str | None = None) -> Peer:
        peer = _start_peer(address or new_ipc_address("peer"))
        started.append(peer)
        return peer

    yield start
    for peer in started:
        _reap(peer)
    assert not [p for p in started if p.proc.is_alive()]


@pytest.fixture
def clients() -> Iterator[Callable[..., ControlClient]]:
    made: list[ControlClient] = []

    def make(address: str, timeout: float = 10.0) -> ControlClient:
        client = ControlClient(address, timeout=timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _quit_and_reap(peer: Peer, client: ControlClient) -> None:
    assert client.execute("quit") == {}
    peer.proc.join(10)
    assert peer.proc.exitcode == 0
    assert not psutil.pid_exists(peer.pid)


# ---------------------------------------------------------------------- tests
def test_replies_match_and_1000_events_arrive_in_order(peers, clients):
    peer = peers()
    client = clients(peer.address)
    hello = client.hello(timeout=STARTUP)
    assert (hello.role, hello.pid) == ("test-peer", peer.pid)

    client.execute("start-events", {"count": 1000, "pause": 0.0005})
    ticks, batches, calls = [], 0, 0
    deadline = time.monotonic() + 60
    while not any(e.name == "TICKS_DONE" for e in ticks):
        assert time.monotonic() < deadline, f"only {len(ticks)} events after 60 s"
        arguments = {"n": calls, "tag": f"call-{calls}", "nested": {"list": [calls] * 3}}
        assert client.execute("echo", arguments) == arguments
        _check_errors(client, calls)
        calls += 1
        arrived = client.events()
        batches += bool(arrived)
        ticks.extend(arrived)

    seqs = [e.data["seq"] for e in ticks if e.name == "TICK"]
    assert seqs == list(range(1000))
    assert ticks[-1].data == {"count": 1000}
    stamps = [e.timestamp for e in ticks]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60
    assert batches >= 2, "events never arrived while commands were running"
    assert client.protocol_errors == 0
    _quit_and_reap(peer, client)


def _check_errors(client: ControlClient, n: int) -> None:
    """Every few echoes, an error reply and a blob in between (replies stay matched)."""
    if n % 5 == 1:
        with pytest.raises(CommandError) as info:
            client.execute("fail")
        assert (info.value.error_class, info.value.desc) == (DEVICE_NOT_ACTIVE,
                                                             "No migration in progress")
    if n % 5 == 3:
        with pytest.raises(CommandError) as info:
            client.execute("crash", {"n": n})
        assert info.value.error_class == GENERIC_ERROR
        assert info.value.desc == "ValueError: disk on fire"
    if n == 4:
        value, blob = client.execute_blob("digests")
        assert value == {"pages": DIGEST_WORDS}
        assert blob is not None and len(blob) == 4 * 1024 * 1024
        assert np.array_equal(np.frombuffer(blob, "<u8"), np.arange(DIGEST_WORDS))


def test_unknown_command_has_qemus_words(peers, clients):
    peer = peers()
    client = clients(peer.address)
    client.hello(timeout=STARTUP)
    with pytest.raises(CommandError) as info:
        client.execute("no-such-command", {"x": 1})
    assert info.value.error_class == COMMAND_NOT_FOUND
    assert info.value.desc == "The command no-such-command has not been found"
    names = {c["name"] for c in client.execute("query-commands")}
    assert {"echo", "digests", "qmp_capabilities", "query-commands"} <= names
    assert "no-such-command" not in names


def test_stopped_peer_times_out_then_answers_fresh_after_sigcont(peers, clients):
    peer = peers()
    client = clients(peer.address, timeout=60)  # the default a 0.5 s timeout overrides
    client.hello(timeout=STARTUP)
    os.kill(peer.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(ControlTimeout) as info:
            client.execute("echo", {"late": True}, timeout=0.5)
        elapsed = time.monotonic() - start
        assert client.state is LinkState.UP  # stopped is not dead
    finally:
        os.kill(peer.pid, signal.SIGCONT)
    assert 0.5 <= elapsed < client.timeout / 2  # the command's 0.5 s, not the default
    text = str(info.value)
    assert "'echo'" in text and peer.address in text and "0.5 s" in text
    # the late reply to {"late": True} arrives now and must not answer this command
    assert client.execute("echo", {"fresh": 1}) == {"fresh": 1}
    _quit_and_reap(peer, client)


def test_killed_peer_is_peer_gone_before_the_deadline(peers, clients):
    peer = peers()
    client = clients(peer.address)
    client.hello(timeout=STARTUP)
    os.kill(peer.pid, signal.SIGKILL)
    peer.proc.join(10)
    start = time.monotonic()
    with pytest.raises(PeerGone):
        client.execute("echo", {}, timeout=DEADLINE)
    assert time.monotonic() - start < DEADLINE / 2  # seen gone, not waited out
    with pytest.raises(PeerGone, match="lost"):
        client.wait_event("TICK", timeout=10)
    assert client.state is LinkState.DOWN


def test_peer_dying_mid_command_is_peer_gone_not_a_hang(peers, clients):
    peer = peers()
    client = clients(peer.address)
    client.hello(timeout=STARTUP)
    start = time.monotonic()
    with pytest.raises(PeerGone, match="'exit'"):
        client.execute("exit", {"code": 3}, timeout=DEADLINE)
    assert time.monotonic() - start < DEADLINE / 2  # seen gone, not waited out
    peer.proc.join(10)
    assert peer.proc.exitcode == 3
    assert client.state is LinkState.DOWN  # known gone: the next command is not even sent
    start = time.monotonic()
    with pytest.raises(PeerGone):
        client.execute("echo", timeout=DEADLINE)
    assert time.monotonic() - start < DEADLINE / 2


def test_two_clients_both_receive_every_event(peers, clients):
    peer = peers()
    first, second = clients(peer.address), clients(peer.address)
    first.hello(timeout=STARTUP)
    second.hello(timeout=STARTUP)
    first.execute("start-events", {"count": 50})
    for client in (first, second):
        done = client.wait_event("TICKS_DONE", timeout=10)
        assert done.data == {"count": 50}
        assert [e.data["seq"] for e in client.events() if e.name == "TICK"] == list(range(50))


def test_client_started_before_its_peer_waits_for_it(peers, clients):
    address = new_ipc_address("late")
    client = clients(address)
    with pytest.raises(ControlTimeout, match="qmp_capabilities"):
        client.hello(timeout=0.2)  # nobody there yet
    assert client.state is LinkState.CONNECTING
    peer = peers(address)
    assert client.hello(timeout=STARTUP).pid == peer.pid
    _quit_and_reap(peer, client)


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_endpoints_and_nothing_left_behind(peers, clients, kind):
    peer = peers(new_ipc_address("ep") if kind == "ipc" else "tcp://127.0.0.1:*")
    if kind == "tcp":
        host, port = peer.address.removeprefix("tcp://").rsplit(":", 1)
        assert host == "127.0.0.1" and 0 < int(port) < 65536
    else:
        assert os.path.exists(ipc_path(peer.address) or "")
    client = clients(peer.address)
    client.hello(timeout=STARTUP)
    assert client.execute("echo", {"kind": kind}) == {"kind": kind}
    assert len(client.execute_blob("digests")[1] or b"") == 8 * DIGEST_WORDS
    _quit_and_reap(peer, client)
    assert peer.proc not in mp.active_children()
    if kind == "ipc":
        assert not os.path.exists(ipc_path(peer.address) or "")
