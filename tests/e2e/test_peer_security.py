"""A peer started by hand cannot be turned against its host (issue 12, section 3).

Black-box: real `harness source|destination` processes, real zmq and unix-socket clients,
and -- where the test runs as root -- a real client running as `nobody` (setpriv).  A
non-loopback tcp:// control needs --keys (CURVE) or --insecure; exec:/file: URIs and
x-record need --allow-exec; every unix socket a peer makes (control, QMP, migration
listener) is mode 0600 and refuses another user; a live socket is never unlinked; an
oversized control message ends one connection, not the peer's memory; the QMP socket
survives running out of file descriptors and caps its clients; a 5000-digit QMP id gets
an error.  Every process is reaped in a `finally`, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from harness.control import CommandError, ControlClient
from harness.control.curve import load_client_keys
from harness.control.qmp_socket import MAX_CLIENTS
from tests.conftest import REPO

GUEST = {"machine": "none", "seed": 1, "fill": 0.0,
         "blocks": [{"name": "ram", "size": 1 << 20}], "devices": ["timer", "globalstate"],
         "workload": None}
STARTUP = 60.0
NOBODY = 65534


class Peer:
    """`harness ROLE ...` in a session of its own, reaped by `stop`."""

    def __init__(self, role: str, *args: str, qmp: bool = False,
                 prefix: tuple[str, ...] = ()) -> None:
        self.dir = tempfile.mkdtemp(prefix="mhs", dir="/tmp")  # short: unix socket paths
        os.chmod(self.dir, 0o755)  # others may reach the sockets: only their mode protects
        self.control = f"ipc://{self.dir}/c"
        self.qmp = f"{self.dir}/q"
        self.log = Path(self.dir) / "log"
        argv = [*prefix, sys.executable, "-m", "harness", role, "--guest-json",
                json.dumps(GUEST), *args, *(["--qmp", f"unix:{self.qmp}"] if qmp else [])]
        if "--control" not in args:
            argv += ["--control", self.control]
        if role == "destination" and "--incoming" not in args:
            argv += ["--incoming", "defer"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, address: str | None = None) -> ControlClient:
        """A control client that got the peer's greeting (the peer is serving)."""
        client = ControlClient(address or self.control, timeout=30)
        deadline = time.monotonic() + STARTUP
        while True:
            try:
                client.hello(timeout=0.5)
                return client
            except Exception:  # noqa: BLE001 - not serving yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    client.close()
                    raise AssertionError(f"the peer did not answer:\n{self.output()}") from None

    def wait_for(self, path: str) -> None:
        deadline = time.monotonic() + STARTUP
        while not os.path.exists(path):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    started: list[Peer] = []
    try:
        yield started
    finally:
        for peer in started:
            peer.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def _vm_hwm(pid: int) -> int:
    """The peak resident set of `pid` in bytes (/proc/PID/status VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another user (nobody)")
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, check=False)


# ---------------------------------------------------------------------- tcp control
@pytest.mark.parametrize("role", ["source", "destination"])
def test_a_non_loopback_control_without_keys_or_insecure_is_refused(role):
    done = _run(role, "--control", "tcp://0.0.0.0:0")
    assert done.returncode == 2, done.stderr
    assert "not a loopback address" in done.stderr and "--keys DIR" in done.stderr
    assert "--insecure" in done.stderr and "Traceback" not in done.stderr
    both = _run(role, "--control", "tcp://127.0.0.1:0", "--keys", "/k", "--insecure")
    assert both.returncode == 2 and "contradict" in both.stderr, both.stderr


def test_a_proxy_with_a_non_loopback_control_needs_insecure():
    """Whoever reaches a proxy's control can redirect the stream (x-proxy-target)."""
    done = _run("proxy", "--control", f"tcp://0.0.0.0:{_free_port()}", "--listen",
                "tcp:127.0.0.1:0", "--target", "tcp:127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    assert "--insecure" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_insecure_serves_on_every_interface_with_a_warning(peers):
    port = _free_port()
    peers.append(Peer("source", "--control", f"tcp://0.0.0.0:{port}", "--insecure"))
    client = peers[0].client(f"tcp://127.0.0.1:{port}")
    try:
        assert client.execute("query-status")["status"] == "running"
    finally:
        client.close()
    assert "warning: --insecure" in peers[0].output()
    assert "no authentication" in peers[0].output()


def test_a_peer_with_keys_serves_only_authorized_clients(peers, tmp_path):
    keys = tmp_path / "keys"
    assert _run("agent", "keygen", str(keys)).returncode == 0
    port = _free_port()
    peers.append(Peer("source", "--control", f"tcp://127.0.0.1:{port}", "--keys", str(keys),
                      qmp=True))
    peers[0].wait_for(peers[0].qmp)  # bound (the control plane is, before it)
    good = load_client_keys(keys)
    stranger_public, stranger_secret = zmq.curve_keypair()
    ask = json.dumps({"execute": "query-status", "id": 1}).encode()

    def client(public: bytes | None, secret: bytes | None) -> zmq.Socket[Any]:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if public is not None:
            sock.curve_serverkey = good.server_public
            sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(ask)
        return sock

    def replies(sock: zmq.Socket[Any], until: float) -> list[bytes]:
        got = []
        while time.monotonic() < until:
            if sock.poll(50, zmq.POLLIN):
                got.append(sock.recv())
                if b'"return"' in got[-1]:
                    break
        return got

    authorized = client(good.public, good.secret)
    strangers = [client(None, None), client(stranger_public, stranger_secret)]
    try:
        answer = replies(authorized, time.monotonic() + STARTUP)
        assert any(b'"status":"running"' in m for m in answer), answer
        for sock in strangers:  # the authorized one was served: these had their chance
            assert replies(sock, time.monotonic() + 2.0) == []
    finally:
        for sock in [authorized, *strangers]:
            sock.close(linger=0)


# ---------------------------------------------------------------------- --allow-exec
def test_exec_file_and_x_record_need_allow_exec(peers, tmp_path):
    peers.append(Peer("destination"))
    marker = tmp_path / "ran"
    client = peers[0].client()
    try:
        for command, arguments in [
                ("migrate-incoming", {"uri": f"exec:touch {marker}"}),
                ("migrate-incoming", {"uri": f"file:{marker}"}),
                ("migrate-recover", {"uri": f"exec:touch {marker}"}),
                ("x-record", {"dir": str(tmp_path)})]:
            with pytest.raises(CommandError) as refused:
                client.execute(command, arguments)
            assert "--allow-exec" in refused.value.desc, refused.value.desc
        assert client.execute("query-migrate") == {} or \
            client.execute("query-migrate").get("status") in (None, "none")
    finally:
        client.close()
    assert not marker.exists() and list(tmp_path.iterdir()) == []
    peers.append(Peer("destination", "--allow-exec"))
    client = peers[1].client()
    try:
        client.execute("migrate-incoming", {"uri": f"exec:touch {marker}; cat /dev/null"})
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
    finally:
        client.close()


def test_a_source_refuses_exec_migrate_without_allow_exec(peers, tmp_path):
    peers.append(Peer("source"))
    client = peers[0].client()
    try:
        with pytest.raises(CommandError) as refused:
            client.execute("migrate", {"uri": f"exec:cat > {tmp_path}/stream"})
        assert "exec: migration URIs are disabled on this peer" in refused.value.desc
    finally:
        client.close()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- unix sockets
_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1] if len(sys.argv) > 1 else {path!r})
except PermissionError:
    print("refused")
else:
    print("connected")
"""


def test_every_unix_socket_of_a_peer_is_0600_and_refuses_another_user(peers):
    dest = Peer("destination", qmp=True)
    peers.append(dest)
    listener = f"{dest.dir}/m"
    client = dest.client()
    try:
        client.execute("migrate-incoming", {"uri": f"unix:{listener}"})
        for path in (dest.control[len("ipc://"):], dest.qmp, listener):
            mode = os.stat(path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, (path, oct(mode))
            done = _as_nobody(_CONNECT.format(path=path))
            assert done.stdout.strip() == "refused", (path, done.stdout, done.stderr)
    finally:
        client.close()


def test_migrate_incoming_never_unlinks_a_live_socket(peers):
    directory = tempfile.mkdtemp(prefix="mhs", dir="/tmp")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = f"{directory}/live"
        live.bind(path)
        live.listen(1)
        inode = os.stat(path).st_ino
        peers.append(Peer("destination"))
        client = peers[0].client()
        try:
            with pytest.raises(CommandError) as refused:
                client.execute("migrate-incoming", {"uri": f"unix:{path}"})
            assert "live socket" in refused.value.desc, refused.value.desc
        finally:
            client.close()
        assert os.stat(path).st_ino == inode  # still ours, still there
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(path)
    finally:
        live.close()
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------- bounded input
def test_an_oversized_control_message_does_not_grow_the_peer(peers):
    peers.append(Peer("source"))
    client = peers[0].client()
    pid = peers[0].proc.pid
    before = _vm_hwm(pid)
    big = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    size = 128 << 20
    try:
        big.connect(peers[0].control)
        big.send(b"{" + b" " * (size - 2) + b"}", copy=False)
        # either the peer hangs up on us (bounded), or it read it all and answers
        poller = zmq.Poller()
        poller.register(big, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + 120
        ready: dict[Any, int] = {}
        while not ready and time.monotonic() < deadline:
            ready = dict(poller.poll(100))
        assert ready, "neither a reply nor a disconnection"
        assert client.execute("query-status")["status"] == "running"
        grown = _vm_hwm(pid) - before
        assert grown < size // 2, f"the peer's peak RSS grew by {grown >> 20} MiB"
        assert monitor in ready and big not in ready
    finally:
        big.disable_monitor()
        monitor.close(linger=0)
        big.close(linger=0)
        client.close()


def _connect(path: str, patient: bool = True) -> Any:
    """A unix stream connection to `path`; a full backlog (EAGAIN) is retried for 30 s
    when `patient`, otherwise None is returned."""
    deadline = time.monotonic() + 30
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if not patient:
                return None
            assert time.monotonic() < deadline, f"{path}: the backlog stays full"
            time.sleep(0.02)


def _greeted(path: str, timeout: float = 30.0) -> bytes:
    with _connect(path) as sock:
        sock.settimeout(timeout)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_the_qmp_socket_survives_running_out_of_file_descriptors(peers):
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit")
    peer = Peer("source", qmp=True, prefix=("prlimit", "--nofile=64"))
    peers.append(peer)
    peer.client().close()  # serving
    conns: list[socket.socket] = []
    try:  # connect until the peer has run out of descriptors (64 is far too few)
        deadline = time.monotonic() + 60
        while "cannot accept a client" not in peer.output() and time.monotonic() < deadline \
                and len(conns) < 500:
            sock = _connect(peer.qmp, patient=False)
            if sock is None:
                time.sleep(0.02)  # the backlog is full
            else:
                conns.append(sock)
        assert "cannot accept a client" in peer.output()
    finally:
        for sock in conns:
            sock.close()
    assert peer.proc.poll() is None, peer.output()
    greeting = b""
    deadline = time.monotonic() + 30
    while b'"QMP"' not in greeting and time.monotonic() < deadline:
        try:
            greeting = _greeted(peer.qmp, timeout=5)
        except OSError:
            time.sleep(0.2)
    assert b'"QMP"' in greeting, peer.output()
    client = peer.client()
    try:
        assert client.execute("query-status")["status"] == "running"
    finally:
        client.close()


def test_the_qmp_socket_caps_its_clients(peers):
    peer = Peer("source", qmp=True)
    peers.append(peer)
    peer.client().close()
    conns = []
    try:
        for _ in range(MAX_CLIENTS):
            conns.append(_connect(peer.qmp))
            assert conns[-1].recv(4096).startswith(b'{"QMP"')  # served: its greeting came
        extra = _greeted(peer.qmp)
        assert b"too many QMP clients" in extra, extra
    finally:
        for sock in conns:
            sock.close()
    # room again, once the server has read the 64 ends (a connect may come before them)
    deadline = time.monotonic() + 30
    greeting = _greeted(peer.qmp)
    while b"too many QMP clients" in greeting and time.monotonic() < deadline:
        time.sleep(0.1)
        greeting = _greeted(peer.qmp)
    assert b'"QMP"' in greeting, greeting


def test_a_qmp_id_of_5000_digits_gets_an_error_and_the_session_goes_on(peers):
    peer = Peer("source", qmp=True)
    peers.append(peer)
    peer.client().close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(peer.qmp)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b'{"QMP"')
        sock.sendall(b'{"execute": "qmp_capabilities"}\r\n')
        assert reader.readline() == b'{"return": {}}\r\n'
        sock.sendall(b'{"execute": "query-status", "id": ' + b"7" * 5000 + b"}\r\n")
        error = json.loads(reader.readline())
        assert error["error"]["class"] == "GenericError" and "id" in error["error"]["desc"]
        sock.sendall(b'{"execute": "query-status", "id": 2}\r\n')
        assert json.loads(reader.readline())["id"] == 2


def test_the_proxy_listener_is_0600_and_never_takes_over_a_live_socket():
    from harness.faults.endpoint import ProxyListener

    directory = tempfile.mkdtemp(prefix="mhs", dir="/tmp")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(f"{directory}/live")
        live.listen(1)
        with pytest.raises(OSError, match="a live socket is there"):
            ProxyListener(f"unix:{directory}/live")
        listener = ProxyListener(f"unix:{directory}/proxy")
        try:
            assert stat.S_IMODE(os.stat(f"{directory}/proxy").st_mode) == 0o600
        finally:
            listener.close()
    finally:
        live.close()
        shutil.rmtree(directory, ignore_errors=True)
