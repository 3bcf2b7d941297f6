"""Real QMP on a harness peer's unix socket (`--qmp unix:PATH`), driven by real clients.

Peers are real processes (`python -m harness source|destination --qmp unix:PATH`); the
clients are QEMU's own Python library (`qemu.qmp.QMPClient`), its `qmp-shell` console
(driven with pexpect) and a raw socket that checks QEMU 7.2's framing byte for byte.
Every peer is reaped by a fixture's finally (SIGTERM, then SIGKILL), also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
STARTUP = 30.0  # spawn + imports on a loaded 2-core machine
WAIT = 60.0
GUEST = {"machine": "none", "seed": 3, "fill": 0.5, "blocks": [{"name": "ram", "size": 16 * MiB}],
         "devices": ["timer", "globalstate"]}
GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            b'"package": "migration-harness ')
NEGOTIATE = b'{"execute": "qmp_capabilities"}\r\n'


# ---------------------------------------------------------------------- peer processes
@dataclass
class QmpPeer:
    role: str
    proc: subprocess.Popen[bytes]
    qmp_path: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _short_dir() -> str:
    """Unix socket paths are limited to 107 bytes: pytest's tmp_path may be longer."""
    return tempfile.mkdtemp(prefix="mhq", dir="/tmp")


def _start(role: str, sockdir: str, guest: dict[str, Any] | None = None) -> QmpPeer:
    qmp_path = os.path.join(sockdir, f"{role[0]}.qmp")
    log = Path(sockdir) / f"{role}.log"
    args = [sys.executable, "-m", "harness", role, "--control", f"ipc://{sockdir}/{role[0]}.ctl",
            "--guest-json", json.dumps(guest or GUEST), "--qmp", f"unix:{qmp_path}"]
    if role == "destination":
        args += ["--incoming", "defer"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    peer = QmpPeer(role, proc, qmp_path, log)
    deadline = time.monotonic() + STARTUP
    while not os.path.exists(qmp_path):  # bound before the peer serves: clients may queue
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(peer)
            pytest.fail(f"{role} did not listen on {qmp_path}:\n{peer.output()}")
        time.sleep(0.02)
    return peer


def _stop(peer: QmpPeer) -> None:
    """SIGTERM (the peer's orderly exit), SIGKILL if that took too long; always reaped."""
    if peer.proc.poll() is None:
        peer.proc.send_signal(signal.SIGTERM)
        try:
            peer.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(peer.proc.pid, signal.SIGKILL)
            peer.proc.wait(timeout=15)


@pytest.fixture
def pair() -> Iterator[tuple[QmpPeer, QmpPeer, str]]:
    sockdir = _short_dir()
    peers: list[QmpPeer] = []
    try:
        peers.append(_start("destination", sockdir))
        peers.append(_start("source", sockdir))
        yield peers[1], peers[0], sockdir
    finally:
        for peer in peers:
            _stop(peer)
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture(scope="module")
def source() -> Iterator[QmpPeer]:
    """One source peer shared by the framing tests (each opens sessions of its own)."""
    sockdir = _short_dir()
    peer = None
    try:
        peer = _start("source", sockdir)
        yield peer
    finally:
        if peer is not None:
            _stop(peer)
        shutil.rmtree(sockdir, ignore_errors=True)


# ---------------------------------------------------------------------- qemu.qmp
def _run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 120))


async def _connect(peer: QmpPeer) -> Any:
    from qemu.qmp import QMPClient

    client = QMPClient(peer.role)
    await asyncio.wait_for(client.connect(peer.qmp_path), 10)
    return client


async def _wait_status(client: Any, want: set[str], timeout: float = WAIT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = await client.execute("query-migrate")
        if info.get("status") in want:
            return dict(info)
        assert time.monotonic() < deadline, f"{client.name}: still {info.get('status')}"
        await asyncio.sleep(0.01)


async def _statuses(listener: Any, last: str, timeout: float = 10.0) -> list[str]:
    """MIGRATION statuses heard until `last` (each event checked for QEMU's members)."""
    seen: list[str] = []
    while last not in seen:
        event = await asyncio.wait_for(listener.get(), timeout)
        assert set(event) == {"timestamp", "event", "data"}
        assert abs(event["timestamp"]["seconds"] - time.time()) < 120
        seen.append(event["data"]["status"])
    return seen


def _caps(*names: str) -> dict[str, Any]:
    return {"capabilities": [{"capability": n, "state": True} for n in names]}


def test_qemu_qmp_migrates_and_hears_migration_events(pair):
    src_peer, dst_peer, sockdir = pair

    async def scenario() -> None:
        src, dst = await _connect(src_peer), await _connect(dst_peer)
        try:
            assert (await src.execute("query-version"))["qemu"] == {
                "micro": 0, "minor": 2, "major": 7}
            with src.listener("MIGRATION") as src_events, dst.listener("MIGRATION") as dst_events:
                for client in (src, dst):
                    await client.execute("migrate-set-capabilities", _caps("events"))
                uri = f"unix:{sockdir}/mig.sock"
                await dst.execute("migrate-incoming", {"uri": uri})
                await src.execute("migrate", {"uri": uri})
                done = await _wait_status(src, {"completed"})
                await _wait_status(dst, {"completed"})
                assert done["ram"]["total"] == 16 * MiB and done["ram"]["normal"] > 0
                assert await _statuses(src_events, "completed") == ["setup", "active",
                                                                    "completed"]
                assert (await _statuses(dst_events, "completed"))[-1] == "completed"
            assert (await dst.execute("query-status"))["status"] == "running"
        finally:
            await src.disconnect()
            await dst.disconnect()

    _run(scenario())


def test_migrate_cancel_on_a_slow_migration_cancels(pair):
    src_peer, dst_peer, sockdir = pair

    async def scenario() -> None:
        src, dst = await _connect(src_peer), await _connect(dst_peer)
        try:
            with src.listener("MIGRATION") as src_events:
                await src.execute("migrate-set-capabilities", _caps("events"))
                await src.execute("migrate-set-parameters", {"max-bandwidth": 1 * MiB})
                uri = f"unix:{sockdir}/mig.sock"
                await dst.execute("migrate-incoming", {"uri": uri})
                await src.execute("migrate", {"uri": uri})
                await _wait_status(src, {"active"})
                await src.execute("migrate_cancel")
                info = await _wait_status(src, {"cancelled", "completed", "failed"})
                assert info["status"] == "cancelled"
                assert (await _statuses(src_events, "cancelled"))[-2:] == ["cancelling",
                                                                          "cancelled"]
            assert (await src.execute("query-status"))["status"] == "running"
        finally:
            await src.disconnect()
            await dst.disconnect()

    _run(scenario())


def test_migrate_start_postcopy_reaches_postcopy_active_then_completes(pair):
    src_peer, dst_peer, sockdir = pair

    async def scenario() -> None:
        src, dst = await _connect(src_peer), await _connect(dst_peer)
        try:
            with src.listener("MIGRATION") as src_events, dst.listener("MIGRATION") as dst_events:
                for client in (src, dst):
                    await client.execute("migrate-set-capabilities",
                                         _caps("postcopy-ram", "events"))
                await src.execute("migrate-set-parameters", {
                    "max-bandwidth": 2 * MiB, "max-postcopy-bandwidth": 32 * MiB})
                uri = f"unix:{sockdir}/mig.sock"
                await dst.execute("migrate-incoming", {"uri": uri})
                await src.execute("migrate", {"uri": uri})
                await _wait_status(src, {"active"})
                await src.execute("migrate-start-postcopy")
                await _wait_status(src, {"completed"})
                await _wait_status(dst, {"completed"})
                heard = await _statuses(src_events, "completed")
                assert heard == ["setup", "active", "postcopy-active", "completed"]
                assert "postcopy-active" in await _statuses(dst_events, "completed")
        finally:
            await src.disconnect()
            await dst.disconnect()

    _run(scenario())


# ---------------------------------------------------------------------- raw framing
class RawQmp:
    """A bare socket session: every line must end with CR LF, every read has a deadline."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""

    def line(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no complete line within {timeout} s (have {self.buf!r})"
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed (have {self.buf!r})"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        assert line.endswith(b"\r"), f"not CR LF terminated: {line!r}"
        return line + b"\n"

    def ask(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        return self.line()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def raw(source) -> Iterator[RawQmp]:
    session = RawQmp(source.qmp_path)
    try:
        yield session
    finally:
        session.close()


def test_greeting_is_qemu_7_2s_without_oob(raw):
    greeting = raw.line()
    assert greeting.startswith(GREETING)
    assert greeting.endswith(b'"}, "capabilities": []}}\r\n')
    assert json.loads(greeting)["QMP"]["capabilities"] == []


def test_commands_before_negotiation_are_refused_as_qemu_does(raw):
    raw.line()
    assert raw.ask(b'{"execute": "query-status", "id": 7}\n') == (
        b'{"id": 7, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities '
        b"negotiation with 'qmp_capabilities'\"}}\r\n")
    assert raw.ask(NEGOTIATE) == b'{"return": {}}\r\n'
    assert raw.ask(NEGOTIATE) == (
        b'{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already '
        b'complete, command ignored"}}\r\n')


def test_json_parse_error_then_the_session_goes_on(raw):
    raw.line()
    assert raw.ask(NEGOTIATE) == b'{"return": {}}\r\n'
    assert raw.ask(b'{"execute": foo}\r\n') == (
        b'{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword '
        b"'foo'\"}}\r\n")
    assert raw.ask(b'{"execute": "query-status", "id": "after"}\n') == (
        b'{"return": {"running": true, "singlestep": false, "status": "running"}, '
        b'"id": "after"}\r\n')


def test_unknown_command_and_bad_requests_echo_the_id(raw):
    raw.line()
    raw.ask(NEGOTIATE)
    assert raw.ask(b'{"execute": "x-no-such", "id": "u1"}') == (
        b'{"id": "u1", "error": {"class": "CommandNotFound", "desc": "The command x-no-such '
        b'has not been found"}}\r\n')
    assert raw.ask(b'{"execute": "query-status", "arguments": [], "id": {"n": [1, 2]}}') == (
        b'{"id": {"n": [1, 2]}, "error": {"class": "GenericError", "desc": "QMP input member '
        b"'arguments' must be an object\"}}\r\n")
    assert raw.ask(b"[1, 2]") == (
        b'{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}\r\n')
    assert json.loads(raw.ask(b'{"execute": "query-version", "id": 3.5}'))["id"] == 3.5


def test_query_commands_lists_every_registered_command(raw):
    raw.line()
    raw.ask(NEGOTIATE)
    names = {c["name"] for c in json.loads(raw.ask(b'{"execute": "query-commands"}'))["return"]}
    assert {"migrate", "query-migrate", "migrate-set-capabilities", "query-migrate-capabilities",
            "migrate-set-parameters", "query-migrate-parameters", "migrate-start-postcopy",
            "migrate_cancel", "migrate-pause", "query-status", "stop", "cont", "quit",
            "query-commands", "query-version", "qmp_capabilities"} <= names


def test_events_reach_every_negotiated_client_before_the_reply(source):
    actor, watcher, stranger = (RawQmp(source.qmp_path) for _ in range(3))
    try:
        for session in (actor, watcher, stranger):
            assert session.line().startswith(GREETING)
        actor.ask(NEGOTIATE)
        watcher.ask(NEGOTIATE)
        before = time.time()
        actor.sock.sendall(b'{"execute": "stop", "id": 1}\n')
        stop = json.loads(actor.line())
        assert actor.line() == b'{"return": {}, "id": 1}\r\n'  # the event came first
        assert stop["event"] == "STOP" and list(stop) == ["timestamp", "event"]
        assert list(stop["timestamp"]) == ["seconds", "microseconds"]
        assert before - 1 <= stop["timestamp"]["seconds"] <= time.time() + 1
        assert json.loads(watcher.line())["event"] == "STOP"
        resume = actor.ask(b'{"execute": "cont"}')
        assert resume.startswith(b'{"timestamp": {"seconds": ')
        assert resume.endswith(b'}, "event": "RESUME"}\r\n')
        assert actor.line() == b'{"return": {}}\r\n'
        assert json.loads(watcher.line())["event"] == "RESUME"
        stranger.sock.sendall(NEGOTIATE)  # not negotiated while they happened: no events
        assert stranger.line() == b'{"return": {}}\r\n'
    finally:
        for session in (actor, watcher, stranger):
            session.close()


# ---------------------------------------------------------------------- qmp-shell
def test_qmp_shell_drives_a_peer(source, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    shell_path = shutil.which("qmp-shell")
    if shell_path is None:
        pytest.skip("qmp-shell (the console script of qemu.qmp) is not installed")
    env = {**os.environ, "HOME": str(tmp_path)}  # its history file goes there
    shell = pexpect.spawn(shell_path, [source.qmp_path], env=env, timeout=20, encoding="utf-8")
    try:
        shell.expect_exact("Connected to QEMU 7.2.0")
        shell.expect_exact("(QEMU) ")
        shell.sendline("query-migrate")
        shell.expect_exact('{"return": {}}')
        shell.expect_exact("(QEMU) ")
        for state in ("true", "false"):
            shell.sendline('migrate-set-capabilities capabilities=[{"capability":"xbzrle",'
                           f'"state":{state}}}]')
            shell.expect_exact('{"return": {}}')
            shell.expect_exact("(QEMU) ")
            shell.sendline("query-migrate-capabilities")
            shell.expect_exact(f'{{"capability": "xbzrle", "state": {state}}}')
            shell.expect_exact("(QEMU) ")
        shell.sendeof()
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)


# ---------------------------------------------------------------------- the option
def test_socket_file_is_removed_on_exit():
    sockdir = _short_dir()
    peer = None
    try:
        peer = _start("destination", sockdir)
        session = RawQmp(peer.qmp_path)
        try:
            session.line()
            session.ask(NEGOTIATE)
            assert session.ask(b'{"execute": "quit"}') == b'{"return": {}}\r\n'
        finally:
            session.close()
        assert peer.proc.wait(timeout=20) == 0, peer.output()
        assert not os.path.exists(peer.qmp_path)
    finally:
        if peer is not None:
            _stop(peer)
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize("value, says", [
    ("tcp:127.0.0.1:4444", "expected unix:PATH"),
    ("unix:/tmp/" + "x" * 120, "unix sockets allow 107"),
    ("unix:/nonexistent-mh-dir/q.sock", "directory /nonexistent-mh-dir does not exist"),
    ("unix:/tmp/q.sock,wait=on", "unsupported option 'wait=on'"),
])
def test_bad_qmp_option_is_a_clear_error(value, says):
    proc = subprocess.run([sys.executable, "-m", "harness", "source", "--control", "ipc://*",
                           "--qmp", value], check=False, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--qmp" in proc.stderr and says in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_live_qmp_socket_is_not_taken_over(source):
    proc = subprocess.run([sys.executable, "-m", "harness", "source", "--control", "ipc://*",
                           "--qmp", f"unix:{source.qmp_path}"], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "a server already listens" in proc.stderr and "Traceback" not in proc.stderr
    with RawQmp(source.qmp_path) as session:  # the first peer still serves
        assert session.line().startswith(GREETING)


@pytest.mark.parametrize("role", ["source", "destination"])
def test_a_bad_control_address_is_a_clear_error(role):
    proc = subprocess.run([sys.executable, "-m", "harness", role, "--control", "garbage"],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"harness {role}: control address 'garbage': expected ipc://PATH" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("role", ["source", "destination"])
def test_a_control_address_that_cannot_be_bound_is_a_clear_error(role):
    with socket.socket() as taken:  # a port in use on loopback: the bind must fail
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "harness", role, "--control",
                               f"tcp://127.0.0.1:{port}"], check=False, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"harness {role}: cannot bind the control server to tcp://127.0.0.1:{port}" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
