"""harness.control over real zmq sockets inside one process: server in a thread.

What needs no second process: thread-safety of `emit`, frame order on the wire (seen with a
raw DEALER), garbage from a client, a coordinator polling many clients, run-state rules.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from harness.control import (
    GENERIC_ERROR,
    CommandError,
    ControlClient,
    ControlError,
    ControlServer,
    ControlTimeout,
    LinkState,
    PeerGone,
    ProtocolMessageError,
    ServerState,
    new_ipc_address,
)


@pytest.fixture
def serve() -> Iterator[Callable[..., ControlServer]]:
    """Start servers whose loop runs in a thread; stops, joins and closes them afterwards."""
    running: list[tuple[ControlServer, threading.Event, threading.Thread]] = []
    failures: list[BaseException] = []

    def start(server: ControlServer, poll_interval: float = 0.01) -> ControlServer:
        stop = threading.Event()

        def loop() -> None:
            try:
                server.serve_forever(stop, poll_interval)
            except BaseException as exc:  # noqa: BLE001 -- handed to the test, never lost
                failures.append(exc)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        running.append((server, stop, thread))
        return server

    yield start
    stuck = []
    for server, stop, thread in running:
        stop.set()
        server.wakeup()
        thread.join(5)
        if thread.is_alive():  # never close a socket another thread is blocked in
            stuck.append(server.address)
        else:
            server.close()
    assert stuck == [], "serving loops did not stop"
    assert failures == []


@pytest.fixture
def server() -> Iterator[ControlServer]:
    with ControlServer(new_ipc_address("local"), role="local") as srv:
        srv.register("echo", lambda arguments: arguments)
        yield srv


@pytest.fixture
def raw() -> Iterator[Callable[[str], zmq.Socket[Any]]]:
    """Plain DEALER sockets, to see exactly what the server puts on the wire."""
    sockets: list[zmq.Socket[Any]] = []

    def connect(address: str) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close(linger=0)


def _recv_json(sock: zmq.Socket[Any]) -> list[Any]:
    assert sock.poll(5000), "nothing from the server within 5 s"
    frames = sock.recv_multipart()
    return [json.loads(frames[0]), *frames[1:]]


# ---------------------------------------------------------------------- the wire
def test_wire_order_is_greeting_then_handler_events_then_return(server, serve, raw):
    server.register("migrate", lambda arguments: server.emit("MIGRATION", {"status": "setup"}))
    serve(server)
    sock = raw(server.address)
    sock.send(b'{"execute":"migrate","arguments":{"uri":"tcp:h:1"},"id":5}')
    greeting = _recv_json(sock)[0]
    assert greeting["QMP"] == {"version": greeting["QMP"]["version"], "capabilities": []}
    assert greeting["role"] == "local" and isinstance(greeting["pid"], int)
    event = _recv_json(sock)[0]
    assert (event["event"], event["data"]) == ("MIGRATION", {"status": "setup"})
    assert set(event["timestamp"]) == {"seconds", "microseconds"}
    assert _recv_json(sock) == [{"return": None, "id": 5}]


def test_garbage_from_a_client_gets_an_error_and_the_server_keeps_serving(server, serve, raw):
    serve(server)
    sock = raw(server.address)
    sock.send(b"this is not json")
    assert "QMP" in _recv_json(sock)[0]
    reply = _recv_json(sock)[0]
    assert reply["error"]["class"] == GENERIC_ERROR and "not JSON" in reply["error"]["desc"]
    assert "id" not in reply
    sock.send(b'{"return": 1, "id": 8}')
    assert _recv_json(sock)[0]["error"]["desc"] == "Expected 'execute', got a return message"
    sock.send_multipart([b'{"execute":"echo","arguments":{},"id":9}', b"x", b"y"])
    assert "1 or 2 frames" in _recv_json(sock)[0]["error"]["desc"]
    sock.send(b'{"execute":"echo","arguments":{"a":1},"id":10}')
    assert _recv_json(sock) == [{"return": {"a": 1}, "id": 10}]


def test_a_result_that_is_not_json_is_a_generic_error(server, serve):
    server.register("bad", lambda arguments: {"set": {1, 2}})
    serve(server)
    with ControlClient(server.address, timeout=5) as client:
        with pytest.raises(CommandError) as info:
            client.execute("bad")
        assert info.value.error_class == GENERIC_ERROR and "not JSON" in info.value.desc
        assert client.execute("echo", {"still": "alive"}) == {"still": "alive"}


# ---------------------------------------------------------------------- events
def test_emit_from_many_threads_keeps_each_threads_order(server, serve):
    serve(server)
    with ControlClient(server.address, timeout=5) as client:
        client.hello()
        threads = [threading.Thread(target=_emit_burst, args=(server, t, 500))
                   for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:  # deadlines only: 4000 events may crawl on a busy machine
            thread.join(60)
        for t in range(8):
            client.wait_event("DONE", lambda e, t=t: e.data["thread"] == t, timeout=60)
        events = client.events()
    assert len(events) == 8 * 500
    for t in range(8):
        assert [e.data["seq"] for e in events if e.data["thread"] == t] == list(range(500))


def _emit_burst(server: ControlServer, thread: int, count: int) -> None:
    for seq in range(count):
        server.emit("BURST", {"thread": thread, "seq": seq})
    server.emit("DONE", {"thread": thread})


def test_events_and_stop_wake_a_server_that_waits_long(server, serve):
    poll = 60.0  # only the wake-ups can get it out of its recv before this
    serve(server, poll_interval=poll)
    with ControlClient(server.address, timeout=5) as client:
        client.hello()
        for n in range(3):  # each burst needs a fresh wake-up
            start = time.monotonic()
            server.emit("PING", {"n": n})
            assert client.wait_event("PING", timeout=poll / 2).data == {"n": n}
            assert time.monotonic() - start < poll / 2  # woken, not at the poll's end
            time.sleep(0.05)
    # and the fixture's teardown (stop + wakeup) must join within its 5 s


def test_emit_refuses_non_json_in_the_callers_thread(server):
    with pytest.raises(ProtocolMessageError, match="cannot encode event"):
        server.emit("BAD", {"x": object()})


def test_events_reach_only_clients_that_talked(server, serve):
    serve(server)
    with ControlClient(server.address, timeout=5) as talker, \
            ControlClient(server.address, timeout=5) as silent:
        talker.hello()
        server.emit("PING", {"n": 1})
        assert talker.wait_event("PING").data == {"n": 1}
        time.sleep(0.1)
        assert silent.events() == []


def test_a_coordinator_polls_many_clients_with_one_poller(serve):
    servers = [serve(ControlServer(new_ipc_address(f"p{i}"), role=f"p{i}")) for i in range(3)]
    clients = [ControlClient(s.address, timeout=5) for s in servers]
    try:
        poller = zmq.Poller()
        for client in clients:
            client.hello()
            client.register(poller)
        for i, srv in enumerate(servers):
            srv.emit("MIGRATION", {"status": "active", "peer": i})
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            if poller.poll(100):
                for client in clients:
                    client.handle_readable()
                    seen.update((e.data["peer"], e.data["status"]) for e in client.events())
        assert seen == {0: "active", 1: "active", 2: "active"}
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------------- states and deadlines
def test_hello_to_nobody_times_out_naming_command_address_and_deadline():
    address = new_ipc_address("nobody")
    with ControlClient(address, timeout=0.2) as client:
        start = time.monotonic()
        with pytest.raises(ControlTimeout) as info:
            client.hello()
        # waited for its 0.2 s, and ended (any bound tells that from a hang: a generous one)
        assert 0.2 <= time.monotonic() - start < 30
        assert str(info.value) == f"no reply to 'qmp_capabilities' from {address} within 0.2 s"
        with pytest.raises(ControlTimeout, match="no MIGRATION event"):
            client.wait_event("MIGRATION", timeout=0.05)
        assert client.state is LinkState.CONNECTING


def test_mark_peer_gone_fails_fast_with_the_reason(server, serve):
    serve(server)
    with ControlClient(server.address, timeout=5) as client:
        client.hello()
        assert client.state is LinkState.UP
        client.mark_peer_gone("process exited with code -9")
        start = time.monotonic()
        with pytest.raises(PeerGone, match="exited with code -9"):
            client.execute("echo", timeout=60)
        assert time.monotonic() - start < 30  # failed at once, not at the command's deadline


def test_closed_client_and_server_refuse_use(server):
    client = ControlClient(server.address, timeout=1)
    client.close()
    client.close()  # idempotent
    with pytest.raises(ControlError, match="closed"):
        client.execute("echo")
    with pytest.raises(ControlError, match="closed"):
        client.events()
    server.close()
    assert server.state is ServerState.CLOSED
    with pytest.raises(ControlError, match="closed"):
        server.serve_once(0)
    server.emit("LATE", {})  # dropped, not an error: emitters may race with shutdown


def test_serve_once_says_whether_it_did_anything(server, raw):
    assert server.serve_once(0.01) is False
    sock = raw(server.address)
    sock.send(b'{"execute":"echo","arguments":{},"id":1}')
    deadline = time.monotonic() + 5
    while not server.serve_once(0.1):
        assert time.monotonic() < deadline
    assert _recv_json(sock)[0]["QMP"]["capabilities"] == []
    server.emit("TICK", {})
    assert server.serve_once(0) is True


def test_duplicate_command_and_bad_bind_are_refused(server):
    with pytest.raises(ValueError, match="'echo' already has a handler"):
        server.register("echo", lambda arguments: None)
    with pytest.raises(ControlError, match="cannot bind"):
        ControlServer(server.address)  # already bound by `server`


def test_a_stale_ipc_file_is_taken_over_and_removed_on_close():
    address = new_ipc_address("stale")
    path = address.removeprefix("ipc://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # what a killed peer leaves behind: a socket file nobody listens on
    srv = ControlServer(address, role="heir")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(path)  # refused before the takeover, accepted now
    srv.close()
    assert not os.path.exists(path)


def test_a_client_that_left_is_forgotten_and_the_rest_still_served(server, serve):
    serve(server)
    stayer = ControlClient(server.address, timeout=5)
    leaver = ControlClient(server.address, timeout=5)
    try:
        stayer.hello()
        leaver.hello()
        assert len(server.clients) == 2
        leaver.close()
        deadline = time.monotonic() + 5
        seq = 0
        while len(server.clients) == 2:  # the next event to the leaver finds it gone
            assert time.monotonic() < deadline, "a closed client was never forgotten"
            server.emit("TICK", {"seq": seq})
            seq += 1
            time.sleep(0.01)
        server.emit("LAST", {})
        assert stayer.wait_event("LAST").data == {}
        assert [e.data["seq"] for e in stayer.events()] == list(range(seq))
    finally:
        stayer.close()
        leaver.close()
