"""64 MiB from one process to another over every transport, bytes verified.

Strategy: the two peers are separate Python processes running `peer_main` below (the
source connects and sends, the destination listens, receives and hashes), so each test
crosses a real process boundary the way a migration does.  The data is a seeded random
stream the test regenerates to know the expected SHA-256.  Over tcp, unix and an fd
socket pair the return path is used both ways after the bulk: the destination sends
its digest back, the source checks it and answers "ACK!", the destination then sees
EOF.  The `no_leftover_processes` fixture (also used by the other transport e2e tests)
marks every process the test starts through an environment variable and fails the test
if any marked process, or any unreaped child, is left; every peer is killed and
reaped on every path.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from harness.transport import (
    Channel,
    connect,
    listen,
    parse_fd_args,
    socketpair_for_fd_uri,
)
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(180)

SIZE = 64 * 1024 * 1024
CHUNK = 1024 * 1024
SEED = 7
PEER_TIMEOUT = 120.0
MARKER = "HARNESS_TRANSPORT_TEST_ID"


# -- the peer program (runs in a child: python -c "...peer_main(...)") -----------------

def stream_chunks(seed: int, size: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for offset in range(0, size, CHUNK):
        yield rng.randbytes(min(CHUNK, size - offset))


@functools.cache
def expected_digest(seed: int, size: int) -> bytes:
    digest = hashlib.sha256()
    for chunk in stream_chunks(seed, size):
        digest.update(chunk)
    return digest.digest()


def peer_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["source", "destination"])
    parser.add_argument("uri")
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--fd", action="append", default=[])
    parser.add_argument("--return-path", action="store_true")
    args = parser.parse_args(argv)
    fds = parse_fd_args(args.fd)
    run = _run_source if args.role == "source" else _run_destination
    result = run(args.uri, args.size, fds, args.return_path)
    print(json.dumps(result), flush=True)
    return 0


def _run_source(uri: str, size: int, fds: dict[str, int], return_path: bool) -> dict:
    result: dict = {}
    with connect(uri, timeout=30, fds=fds) as channel:
        for chunk in stream_chunks(SEED, size):
            channel.sendall(chunk)
        result["sent"] = channel.bytes_sent
        if return_path:
            digest = channel.read_exact(32, timeout=PEER_TIMEOUT)
            result["return_path_digest"] = digest.hex()
            channel.sendall(b"ACK!")
    return result


def _run_destination(uri: str, size: int, fds: dict[str, int], return_path: bool) -> dict:
    with listen(uri, fds=fds) as listener:
        print("LISTENING", listener.address, flush=True)
        channel = listener.accept(timeout=PEER_TIMEOUT)
    with channel:
        channel.set_timeout(PEER_TIMEOUT)
        digest, received = _receive(channel, size if return_path else None)
        result = {"received": received, "sha256": digest.hex(),
                  "has_return_path": channel.has_return_path}
        if return_path:
            channel.sendall(digest)
            result["ack"] = channel.read_exact(4).decode()
            result["eof_after_ack"] = channel.recv_into(bytearray(1)) == 0
    return result


def _receive(channel: Channel, size: int | None) -> tuple[bytes, int]:
    """Hash exactly `size` bytes, or everything until EOF when size is None."""
    digest, buffer, received = hashlib.sha256(), memoryview(bytearray(CHUNK)), 0
    while size is None or received < size:
        want = CHUNK if size is None else min(CHUNK, size - received)
        count = channel.recv_into(buffer[:want])
        if count == 0:
            break
        digest.update(buffer[:count])
        received += count
    return digest.digest(), received


# -- fixtures shared by the transport e2e tests ------------------------------------------

@pytest.fixture(autouse=True)
def no_leftover_processes(monkeypatch) -> Iterator[str]:
    """Tag every process the test starts (env var, inherited by sh/cat too); afterwards
    none may be alive and no child of this process may be unreaped."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, tag)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield tag
    leftovers = _tagged(tag, grace=5.0)  # a SIGKILLed straggler may take a moment to die
    unreaped = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for proc in leftovers + unreaped:
        proc.kill()
    assert not leftovers, f"processes left running: {_describe(leftovers)}"
    assert not unreaped, f"children left unreaped: {_describe(unreaped)}"


def _tagged(tag: str, grace: float = 0.0) -> list[psutil.Process]:
    """Live processes carrying `tag`, waiting up to `grace` seconds for them to go."""
    deadline = time.monotonic() + grace
    while True:
        found = [proc for proc in psutil.process_iter() if _carries(proc, tag)]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _carries(proc: psutil.Process, tag: str) -> bool:
    if proc.pid == os.getpid():
        return False
    try:
        return proc.environ().get(MARKER) == tag and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def _describe(procs: list[psutil.Process]) -> str:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {proc.cmdline()} {proc.status()}")
        except psutil.Error:
            out.append(str(proc.pid))
    return "; ".join(out)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private directory with a short path (sun_path holds 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mh-", dir="/tmp") as path:
        yield Path(path)


class Peers:
    """Starts peer processes and always kills and reaps them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
        code = ("import sys; from tests.e2e.test_transport_transfer import peer_main; "
                "sys.exit(peer_main(sys.argv[1:]))")
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=pass_fds)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


@pytest.fixture
def peers() -> Iterator[Peers]:
    started = Peers()
    try:
        yield started
    finally:
        started.close()


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of `proc`, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if ready:
            line = proc.stdout.readline()
            if not line:
                _, err = proc.communicate(timeout=10)
                raise AssertionError(f"peer exited {proc.returncode} before a line: {err}")
            return line.strip()
    raise AssertionError(f"peer said nothing within {timeout} s")


def finish(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=PEER_TIMEOUT)
    assert proc.returncode == 0, f"peer failed ({proc.returncode}): {err}"
    return json.loads(out.strip().splitlines()[-1])


# -- the transfers -----------------------------------------------------------------------

def _socket_pair_run(peers: Peers, uri: str) -> tuple[dict, dict]:
    destination = peers.start("destination", uri, "--return-path")
    address = read_line(destination, 30).removeprefix("LISTENING ")
    source = peers.start("source", address, "--return-path")
    return finish(source), finish(destination)


def run_tcp(peers: Peers, tmp: Path) -> tuple[dict, dict]:
    return _socket_pair_run(peers, "tcp:127.0.0.1:0")


def run_unix(peers: Peers, tmp: Path) -> tuple[dict, dict]:
    return _socket_pair_run(peers, f"unix:{tmp}/mig.sock")


def run_fd(peers: Peers, tmp: Path) -> tuple[dict, dict]:
    mine, theirs = socketpair_for_fd_uri()
    with mine, theirs:
        destination = peers.start("destination", "fd:mig", "--fd", f"mig={theirs.fileno()}",
                                  "--return-path", pass_fds=(theirs.fileno(),))
        source = peers.start("source", "fd:mig", "--fd", f"mig={mine.fileno()}",
                             "--return-path", pass_fds=(mine.fileno(),))
    return finish(source), finish(destination)


def run_exec(peers: Peers, tmp: Path) -> tuple[dict, dict]:
    stream = tmp / "stream.bin"
    sent = finish(peers.start("source", f"exec:cat > {stream}"))
    assert stream.stat().st_size == SIZE
    return sent, finish(peers.start("destination", f"exec:cat {stream}"))


def run_file(peers: Peers, tmp: Path) -> tuple[dict, dict]:
    stream = tmp / "stream.bin"
    sent = finish(peers.start("source", f"file:{stream}"))
    return sent, finish(peers.start("destination", f"file:{stream}"))


RUNS: dict[str, Callable[[Peers, Path], tuple[dict, dict]]] = {
    "tcp": run_tcp, "unix": run_unix, "fd": run_fd, "exec": run_exec, "file": run_file}
WITH_RETURN_PATH = {"tcp", "unix", "fd"}


@pytest.mark.parametrize("transport", list(RUNS))
def test_64mib_reach_the_other_process_intact(transport, peers, short_tmp):
    source, destination = RUNS[transport](peers, short_tmp)
    expected = expected_digest(SEED, SIZE).hex()
    assert source["sent"] == SIZE
    assert destination["received"] == SIZE
    assert destination["sha256"] == expected
    assert destination["has_return_path"] == (transport in WITH_RETURN_PATH)
    if transport in WITH_RETURN_PATH:
        assert source["return_path_digest"] == expected  # destination -> source
        assert destination["ack"] == "ACK!"  # source -> destination, after the bulk
        assert destination["eof_after_ack"] is True
