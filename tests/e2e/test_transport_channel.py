"""Channel and listener behaviour on real sockets, pipes and `exec:` children.

Strategy: both ends live in the test process (threads where one side must block), so
each test provokes exactly one situation: scatter-gather beyond IOV_MAX, a thread stuck
in recv/send woken by `shutdown()`, an `accept()` interrupted by `close()`, timeouts,
EOF in the middle of `read_exact`, connection errors and failing `exec:` commands.  The
assertions are on what a caller sees (error class, exact message, bytes) and on the
process table afterwards (`no_leftover_processes`, autouse, from the transfer tests).
The "within 1 s" checks are the brief's contract for `migrate_cancel`, with a generous
bound; nothing else depends on timing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from harness.transport import (
    Channel,
    ChannelClosed,
    ChannelTimeout,
    ConnectFailed,
    ExecFailed,
    FdChannel,
    ListenerState,
    ListenFailed,
    SocketChannel,
    TransportError,
    UriError,
    connect,
    listen,
    socketpair_for_fd_uri,
)
from harness.transport.channel import IOV_MAX
from tests.e2e import test_transport_transfer as transfer
from tests.e2e.test_transport_transfer import MARKER, _tagged

pytestmark = pytest.mark.timeout(120)

WAKE_BOUND = 1.0  # seconds a woken thread may take to leave send/recv

# the shared fixtures: leftover-process check (autouse) and a short temporary directory
no_leftover_processes = transfer.no_leftover_processes
short_tmp = transfer.short_tmp


# -- helpers -----------------------------------------------------------------------------

def socket_pair(kind: str, tmp: Path) -> tuple[Channel, Channel]:
    """(source side, destination side) connected over `kind` ("tcp" or "unix")."""
    uri = "tcp:127.0.0.1:0" if kind == "tcp" else f"unix:{tmp}/s.sock"
    with listen(uri) as listener:
        accepted: list[Channel] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept(10)))
        thread.start()
        source = connect(listener.address, timeout=10)
        thread.join(10)
    return source, accepted[0]


def pipe_pair() -> tuple[Channel, Channel]:
    """(writer, reader) over a pipe, as exec: and fd: pipes are."""
    read, write = os.pipe()
    return (FdChannel("pipe-writer", read_fd=None, write_fd=write),
            FdChannel("pipe-reader", read_fd=read, write_fd=None))


@pytest.fixture(params=["tcp", "unix", "pipe"])
def pair(request, short_tmp) -> Iterator[tuple[Channel, Channel]]:
    ends = pipe_pair() if request.param == "pipe" else socket_pair(request.param, short_tmp)
    try:
        yield ends
    finally:
        for end in ends:
            end.close()


@pytest.fixture(params=["tcp", "unix"])
def sockets(request, short_tmp) -> Iterator[tuple[Channel, Channel]]:
    ends = socket_pair(request.param, short_tmp)
    try:
        yield ends
    finally:
        for end in ends:
            end.close()


class Blocked:
    """Runs `call` on a thread and records how it ended."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.returned = False
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            call()
            self.returned = True
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            self.error = exc

    def settled(self, within: float) -> bool:
        self._thread.join(within)
        return not self._thread.is_alive()


def end_of_stream(writer: Channel) -> None:
    """Let the reader see EOF: half-close a socket, close a pipe's write end."""
    if isinstance(writer, SocketChannel):
        writer.sock.shutdown(socket.SHUT_WR)
    else:
        writer.close()


def drain(channel: Channel, into: bytearray) -> None:
    buffer = bytearray(1 << 20)
    while count := channel.recv_into(buffer):
        into += buffer[:count]


# -- scatter-gather ----------------------------------------------------------------------

def test_send_buffers_beyond_iov_max_arrive_in_order(pair):
    writer, reader = pair
    sizes = [(i * 7919) % 9000 for i in range(3 * IOV_MAX + 17)]  # some empty, 13 MiB total
    buffers: list = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    buffers[1] = memoryview(bytearray(b"x" * 5000))[100:4100]
    buffers[2] = bytearray(b"y" * 7)
    expected = b"".join(bytes(b) for b in buffers)
    got = bytearray()
    receiver = Blocked(lambda: drain(reader, got))
    writer.send_buffers(buffers)
    assert writer.bytes_sent == len(expected) > 8 * 1024 * 1024  # > the socket buffers
    end_of_stream(writer)
    assert receiver.settled(30) and receiver.error is None, receiver.error
    assert bytes(got) == expected
    assert reader.bytes_received == len(expected)


def test_send_buffers_refuses_what_is_not_bytes(pair):
    writer, _ = pair
    with pytest.raises(TypeError, match="buffer 1 is a str, not a bytes-like object"):
        writer.send_buffers([b"ok", "text"])
    with pytest.raises(TypeError, match="takes a list of buffers, not a single buffer"):
        writer.send_buffers(b"abc")
    assert writer.bytes_sent == 0


# -- shutdown wakes blocked threads (migrate_cancel) -------------------------------------

def test_shutdown_wakes_a_thread_blocked_in_recv_into(pair):
    _, reader = pair
    blocked = Blocked(lambda: reader.recv_into(bytearray(4096)))
    assert not blocked.settled(0.2)  # it really waits for data
    reader.shutdown()
    assert blocked.settled(WAKE_BOUND)
    assert isinstance(blocked.error, ChannelClosed)
    assert str(blocked.error).endswith("the channel was shut down")


def test_shutdown_wakes_a_thread_blocked_in_sendall(pair):
    writer, _ = pair  # nobody reads: the kernel buffers fill up
    blocked = Blocked(lambda: writer.sendall(bytes(64 * 1024 * 1024)))
    assert not blocked.settled(0.3)
    writer.shutdown()
    assert blocked.settled(WAKE_BOUND)
    assert isinstance(blocked.error, ChannelClosed)
    assert writer.bytes_sent < 64 * 1024 * 1024
    with pytest.raises(ChannelClosed, match="the channel was shut down"):
        writer.sendall(b"more")


def test_close_from_another_thread_wakes_a_blocked_reader(pair):
    _, reader = pair
    blocked = Blocked(lambda: reader.read_exact(10))
    assert not blocked.settled(0.2)
    reader.close()
    assert blocked.settled(WAKE_BOUND)
    assert isinstance(blocked.error, ChannelClosed)
    with pytest.raises(ChannelClosed, match="the channel is closed"):
        reader.recv_into(bytearray(1))
    reader.close()  # idempotent


def test_socket_shutdown_is_seen_by_the_peer_as_eof(sockets):
    source, destination = sockets
    source.shutdown()
    assert destination.recv_into(bytearray(10)) == 0


def test_a_shutdown_reaches_the_peer_even_when_a_dup_lives_on_and_close_won_the_race(
        sockets, monkeypatch):
    """migrate-pause on a destination whose vCPU process holds a dup of the socket: the
    thread that shuts the channel down is preempted before the socket's own shutdown, the
    woken loader closes the channel first.  The peer must still see the end (it hung)."""
    source, destination = sockets
    dup = os.dup(destination.fileno())  # as the destination's vCPU process holds one
    try:
        monkeypatch.setattr(destination, "_interrupt", lambda: None)  # preempted there
        destination.shutdown()
        monkeypatch.undo()
        destination.close()  # what the woken loader does next
        source.set_timeout(10.0)
        assert source.recv_into(bytearray(10)) == 0
    finally:
        os.close(dup)


# -- return path while the stream flows --------------------------------------------------

def test_return_path_messages_flow_while_the_stream_is_sent(sockets):
    source, destination = sockets
    total, step = 32 * 1024 * 1024, 4 * 1024 * 1024
    acks: list[bytes] = []
    reader = Blocked(lambda: acks.extend(source.read_exact(8) for _ in range(total // step)))
    received = 0
    sender = Blocked(lambda: [source.sendall(bytes(1 << 20)) for _ in range(total >> 20)])
    while received < total:
        chunk = destination.read_exact(step)
        received += len(chunk)
        destination.sendall(received.to_bytes(8, "big"))  # like a page request
    assert sender.settled(30) and sender.error is None
    assert reader.settled(30) and reader.error is None
    assert [int.from_bytes(a, "big") for a in acks] == list(range(step, total + 1, step))
    assert source.bytes_received == destination.bytes_sent == 8 * (total // step)


# -- deadlines, EOF ----------------------------------------------------------------------

def test_timeouts_raise_channel_timeout(pair):
    writer, reader = pair
    with pytest.raises(ChannelTimeout, match=r"receive timed out after 0\.05 s"):
        reader.read_exact(1, timeout=0.05)
    reader.set_timeout(0.05)
    with pytest.raises(ChannelTimeout):
        reader.recv_into(bytearray(1))
    writer.set_timeout(0.1)
    with pytest.raises(ChannelTimeout, match=r"send timed out after 0\.1 s"):
        writer.sendall(bytes(64 * 1024 * 1024))
    with pytest.raises(ValueError, match="a timeout must be a finite number of seconds"):
        reader.set_timeout(-1)


def test_read_exact_reports_eof_in_the_middle(pair):
    writer, reader = pair
    writer.sendall(b"abc")
    end_of_stream(writer)
    with pytest.raises(ChannelClosed, match="connection closed after 3 of 10 bytes"):
        reader.read_exact(10, timeout=10)


def test_a_channel_has_one_reader_at_a_time(sockets):
    _, destination = sockets
    blocked = Blocked(lambda: destination.recv_into(bytearray(1)))
    assert not blocked.settled(0.2)
    with pytest.raises(TransportError, match="two threads tried to receive at once"):
        destination.recv_into(bytearray(1))
    destination.shutdown()
    assert blocked.settled(WAKE_BOUND)


# -- socket options ----------------------------------------------------------------------

def _sysctl(name: str) -> int:
    return int(Path(f"/proc/sys/net/core/{name}").read_text())


def test_unix_sockets_get_4mib_buffers_and_tcp_gets_nodelay(short_tmp):
    source, destination = socket_pair("unix", short_tmp)
    with source, destination:
        for end in (source, destination):
            # Linux reports twice the requested size (bookkeeping), capped by the sysctl
            want_snd = 2 * min(4 << 20, _sysctl("wmem_max"))
            want_rcv = 2 * min(4 << 20, _sysctl("rmem_max"))
            assert end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= want_snd
            assert end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= want_rcv
    source, destination = socket_pair("tcp", short_tmp)
    with source, destination:
        for end in (source, destination):
            assert end.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert end.has_return_path


def test_prefer_latency_shrinks_socket_queues_and_data_still_flows(sockets):
    from harness.transport.channel import LATENCY_SOCKET_BUFFER, LATENCY_UNSENT, TCP_NOTSENT_LOWAT

    source, destination = sockets
    before = source.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    for end in sockets:
        end.prefer_latency()
    after = source.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert after == 2 * LATENCY_SOCKET_BUFFER  # Linux reports twice the request
    if source.sock.family == socket.AF_UNIX:
        assert after < before  # down from the 4 MiB of a bulk stream
    assert destination.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == after
    if source.sock.family == socket.AF_INET:
        assert source.sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == LATENCY_UNSENT
    data = os.urandom(4 * LATENCY_SOCKET_BUFFER)
    sender = threading.Thread(target=source.sendall, args=(data,))
    sender.start()
    try:
        assert destination.read_exact(len(data), timeout=10) == data
    finally:
        sender.join(10)


def test_prefer_latency_is_harmless_on_a_pipe(short_tmp):
    source, destination = pipe_pair()
    with source, destination:
        source.prefer_latency()
        source.sendall(b"still works")
        assert destination.read_exact(11, timeout=5) == b"still works"



def test_wait_writable_says_when_a_full_socket_takes_more(sockets):
    """The postcopy push waits here, outside its lock, instead of blocking in a send."""
    source, destination = sockets
    for end in sockets:
        end.prefer_latency()
    assert source.wait_writable(0.5)
    source.sock.setblocking(False)
    queued = 0
    try:
        while True:  # fill both socket queues
            queued += source.sock.send(b"\0" * 65536)
    except BlockingIOError:
        pass
    finally:
        source.sock.setblocking(True)
    assert not source.wait_writable(0.05)
    destination.read_exact(queued, timeout=10)
    assert source.wait_writable(5)


def test_wait_writable_is_true_on_a_pipe_and_after_close(short_tmp):
    source, destination = pipe_pair()
    with destination:
        assert source.wait_writable(0.01)
        source.close()
    left, right = socket_pair("unix", short_tmp)
    right.close()
    left.close()
    assert left.wait_writable(0.01)  # the send that follows reports the closed channel
# -- listeners ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_accept_is_interrupted_by_close(kind, short_tmp):
    uri = "tcp:127.0.0.1:0" if kind == "tcp" else f"unix:{short_tmp}/a.sock"
    listener = listen(uri)
    blocked = Blocked(lambda: listener.accept())
    assert not blocked.settled(0.2)
    listener.close()
    assert blocked.settled(WAKE_BOUND)
    assert isinstance(blocked.error, ChannelClosed)
    assert str(blocked.error) == (f"listener on {listener.address} was closed while waiting "
                                  "for the incoming migration")
    assert listener.state is ListenerState.CLOSED
    assert not (short_tmp / "a.sock").exists()


def test_accept_times_out(short_tmp):
    expected = rf"no incoming migration connection on unix:{short_tmp}/t.sock within 0.1 s"
    with listen(f"unix:{short_tmp}/t.sock") as listener, \
            pytest.raises(ChannelTimeout, match=expected):
        listener.accept(timeout=0.1)


def test_tcp_port_0_reports_the_actual_address():
    with listen("tcp:127.0.0.1:0") as listener:
        port = listener.uri.port
        assert port and port > 0
        assert listener.address == f"tcp:127.0.0.1:{port}"
        assert listener.socket_address == {"type": "inet", "host": "127.0.0.1",
                                           "port": str(port), "ipv4": True}


def test_ipv6_listener_and_connect():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        listener = listen("tcp:[::1]:0")
    except ListenFailed as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with listener:
        assert listener.address == f"tcp:[::1]:{listener.uri.port}"
        assert listener.socket_address["ipv6"] is True
        source = connect(listener.address, timeout=10)
        with source, listener.accept(10) as destination:
            source.sendall(b"v6")
            assert destination.read_exact(2, timeout=10) == b"v6"


def test_a_listener_accepts_one_connection_then_stops_listening(short_tmp):
    path = short_tmp / "one.sock"
    listener = listen(f"unix:{path}")
    source = connect(f"unix:{path}", timeout=10)
    with listener, source, listener.accept(10) as destination:
        assert listener.state is ListenerState.ACCEPTED
        assert not path.exists()  # QEMU closes its listener after the main channel
        with pytest.raises(TransportError, match="already accepted its one connection"):
            listener.accept(0.1)
        source.sendall(b"ok")
        assert destination.read_exact(2) == b"ok"


def test_a_stale_unix_socket_is_replaced_but_a_regular_file_is_not(short_tmp):
    stale = short_tmp / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()  # leaves the socket file behind, as a killed peer would
    with listen(f"unix:{stale}") as listener:
        assert listener.state is ListenerState.LISTENING
    regular = short_tmp / "regular"
    regular.write_text("keep me")
    with pytest.raises(ListenFailed) as caught:
        listen(f"unix:{regular}")
    assert str(caught.value) == (f"Failed to bind socket to {regular}: the path exists and "
                                 "is not a socket (not removing it)")
    assert regular.read_text() == "keep me"


def test_listen_on_a_port_in_use_says_so():
    with listen("tcp:127.0.0.1:0") as first, pytest.raises(ListenFailed) as caught:
        listen(first.address)
    assert str(caught.value) == ("Failed to find an available port: Address already in use "
                                 f"({first.address})")


def test_listen_in_a_missing_directory_uses_qemus_words(short_tmp):
    path = short_tmp / "missing" / "x.sock"
    with pytest.raises(ListenFailed) as caught:
        listen(f"unix:{path}")
    assert str(caught.value) == f"Failed to bind socket to {path}: No such file or directory"


# -- connect errors ----------------------------------------------------------------------

def test_connect_to_a_closed_port_names_the_address():
    holder = socket.socket()  # bound, not listening: refused, and no other test can take it
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    with holder, pytest.raises(ConnectFailed) as caught:
        connect(f"tcp:127.0.0.1:{port}", timeout=5)
    assert str(caught.value) == f"Failed to connect to '127.0.0.1:{port}': Connection refused"


def test_connect_to_a_missing_unix_socket_names_the_path(short_tmp):
    path = short_tmp / "nobody.sock"
    with pytest.raises(ConnectFailed) as caught:
        connect(f"unix:{path}", timeout=5)
    assert str(caught.value) == f"Failed to connect to '{path}': No such file or directory"


def test_connect_parses_strings_for_the_source_role():
    with pytest.raises(UriError, match="^Parameter 'uri' expects a valid migration protocol$"):
        connect("bogus:1", timeout=1)
    with pytest.raises(UriError, match="^fd 'x' not found: the peer was started with fds: a$"):
        connect("fd:x", timeout=1, fds={"a": 0})


# -- fd: ---------------------------------------------------------------------------------

def test_an_fd_is_consumed_by_its_first_use():
    mine, theirs = socketpair_for_fd_uri()
    fds = {"mig": mine.detach()}
    with theirs, connect("fd:mig", timeout=1, fds=fds) as channel:
        assert channel.has_return_path
        channel.sendall(b"hi")
        assert theirs.recv(2) == b"hi"
        with pytest.raises(UriError, match="fd 'mig' .* already used by an earlier migration"):
            connect("fd:mig", timeout=1, fds=fds)
    with pytest.raises(UriError, match=r"fd 'mig' \(fd \d+\) is not open in this process"):
        connect("fd:mig", timeout=1, fds=fds)


def test_an_inherited_listening_socket_is_accepted_on(short_tmp):
    path = short_tmp / "pre.sock"
    prebound = socket.socket(socket.AF_UNIX)
    prebound.bind(str(path))
    prebound.listen(1)  # what a runner does to hand out an address without a race
    with listen("fd:lst", fds={"lst": prebound.detach()}) as listener:
        assert listener.socket_address == {"type": "unix", "path": str(path)}
        with connect(f"unix:{path}", timeout=5) as source, listener.accept(10) as destination:
            destination.sendall(b"rp")
            assert source.read_exact(2, timeout=10) == b"rp"


def test_an_fd_pipe_must_point_the_right_way():
    read, write = os.pipe()
    try:
        with pytest.raises(UriError, match=r"is open read-only; the source writes"):
            connect("fd:r", timeout=1, fds={"r": read})
        with pytest.raises(UriError, match=r"is open write-only; the destination reads"):
            listen("fd:w", fds={"w": write})
    finally:
        os.close(read)
        os.close(write)


# -- file: -------------------------------------------------------------------------------

def test_a_file_channel_has_no_return_path(short_tmp):
    path = short_tmp / "stream.bin"
    with connect(f"file:{path}", timeout=1) as source:
        assert not source.has_return_path
        source.sendall(b"QEVM")
        with pytest.raises(ChannelClosed, match="cannot receive: the channel is write-only"):
            source.recv_into(bytearray(1))
    with listen(f"file:{path}") as listener, listener.accept() as destination:
        assert destination.read_exact(4) == b"QEVM"
        assert destination.recv_into(bytearray(1)) == 0
    with pytest.raises(ListenFailed, match=f"Failed to open file '{short_tmp}/no': No such"):
        listen(f"file:{short_tmp}/no")


# -- exec: -------------------------------------------------------------------------------

def _pid_gone(pid: int) -> bool:
    return not psutil.pid_exists(pid)


def test_a_failing_exec_command_is_reported_when_the_channel_is_used():
    channel = connect("exec:exit 3", timeout=5)
    pid = channel.child.pid
    with pytest.raises(ExecFailed) as caught:
        channel.sendall(bytes(16 * 1024 * 1024))  # more than a pipe holds
    assert str(caught.value) == "migration command 'exit 3' exited with status 3"
    assert caught.value.status == 3
    channel.close()  # reported once: no second error
    assert _pid_gone(pid)


def test_a_failing_exec_command_is_reported_on_close():
    channel = connect("exec:echo 'no space left' >&2; exit 3", timeout=5)
    assert channel.child.wait(30) == 3
    with pytest.raises(ExecFailed) as caught:
        channel.close()
    assert str(caught.value) == ("migration command 'echo 'no space left' >&2; exit 3' exited "
                                 "with status 3; its stderr: no space left")
    channel.close()  # idempotent


def test_a_failing_exec_source_command_is_reported_at_the_destination(short_tmp):
    missing = short_tmp / "missing.bin"
    with listen(f"exec:cat {missing}") as listener, listener.accept() as channel, \
            pytest.raises(ExecFailed) as caught:
        channel.read_exact(8, timeout=30)
    assert str(caught.value) == (f"migration command 'cat {missing}' exited with status 1; "
                                 f"its stderr: cat: {missing}: No such file or directory")


def test_a_cancelled_exec_channel_does_not_report_its_command():
    channel = connect("exec:exit 3", timeout=5)
    assert channel.child.wait(30) == 3
    channel.shutdown()  # migrate_cancel: the command's verdict no longer matters
    channel.close()
    assert channel.child.status == 3


def test_an_exec_command_that_does_not_exit_is_killed_and_reported():
    channel = connect("exec:sleep 60", timeout=5, exit_timeout=0.2)
    pid = channel.child.pid
    with pytest.raises(ExecFailed) as caught:
        channel.close()
    assert str(caught.value) == ("migration command 'sleep 60' did not exit within 0.2 s "
                                 "after its stream was closed, and was killed")
    assert _pid_gone(pid)


def test_exec_stragglers_are_swept_on_close(no_leftover_processes):
    channel = connect("exec:sleep 60 & exit 0", timeout=5)
    assert channel.child.wait(30) == 0
    assert _tagged(no_leftover_processes), "the background sleep should be running"
    channel.close()
    assert not _tagged(no_leftover_processes, grace=10.0)  # SIGKILLed; init reaps it


def test_exec_return_path_over_stdout_when_asked(short_tmp):
    # the command answers on its stdout (like `socat - TCP:...` would): a return path
    with connect("exec:head -c 4 | tr a-z A-Z", timeout=5, return_path=True) as channel:
        assert channel.has_return_path
        channel.sendall(b"ping")
        assert channel.read_exact(4, timeout=30) == b"PING"
    with connect(f"exec:cat > {short_tmp}/f", timeout=5) as channel:
        assert not channel.has_return_path  # like QEMU: stdout is /dev/null


def test_the_leftover_check_sees_tagged_processes(no_leftover_processes):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert [p.pid for p in _tagged(no_leftover_processes)] == [proc.pid]
        assert os.environ[MARKER] == no_leftover_processes
    finally:
        proc.kill()
        proc.wait(10)
