"""`python -m harness proxy` as a process, between two real harness peers.

The proxy is started and driven over its control plane exactly as the runner does it
(ControlClient: x-proxy-arm, query-proxy, quit); the peers are `python -m harness source`
and `destination` processes.  A precopy with a running workload goes through it and
completes with the destination's memory equal to the source's, and the proxy's counters
agree with the source's figures.  Every process is reaped, also when a test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.control import ControlClient, ControlError
from harness.runner.peers import HarnessPeer, kill_tree, short_dir
from tests.e2e.harness_pair import harness_pair

MiB = 1 << 20
WAIT = 60.0
GUEST = {"machine": "none", "seed": 9, "fill": 0.5, "blocks": [{"name": "ram", "size": 32 * MiB}],
         "devices": ["timer", "globalstate", "cpu"],
         "workload": {"dirty_rate": 4 * MiB, "pattern": "uniform", "hotset": 0, "seed": 9}}


class ProxyProcess:
    """`python -m harness proxy` and a control client on it."""

    def __init__(self, sockdir: Path, target: str, listen: str = "tcp:127.0.0.1:0",
                 log: Path | None = None) -> None:
        self.control = f"ipc://{sockdir}/proxy.ctl"
        self.log = log or sockdir / "proxy.log"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness", "proxy", "--control", self.control,
                 "--listen", listen, "--target", target, "--seed", "3"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        self.client = ControlClient(self.control, timeout=30)
        self.client.hello(timeout=30)

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.client.execute(command, arguments)

    def close(self) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ControlError):
                self.client.execute("quit", timeout=10)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)
                self.proc.wait(10)
        self.client.close()
        return self.proc.returncode


@pytest.fixture
def sockdir() -> Iterator[Path]:
    where = short_dir("mhq")
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def peers(tmp_path) -> Iterator[tuple[HarnessPeer, HarnessPeer]]:
    with harness_pair(tmp_path, GUEST) as pair:
        yield pair


def _status(peer: HarnessPeer, want: set[str], timeout: float = WAIT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = peer.execute("query-migrate") or {}
        if info.get("status") in want:
            return dict(info)
        assert time.monotonic() < deadline, f"{peer.role} still {info.get('status')}"
        time.sleep(0.02)


def _listening_uri(dst: HarnessPeer) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for addr in (dst.execute("query-migrate") or {}).get("socket-address", []):
            if "port" in addr:
                return f"tcp:{addr['host']}:{addr['port']}"
        time.sleep(0.01)
    raise AssertionError("the destination did not report its listening port")


def test_a_precopy_through_the_proxy_process_completes(peers, sockdir):
    src, dst = peers
    for peer in (src, dst):
        peer.execute("migrate-set-capabilities",
                     {"capabilities": [{"capability": "events", "state": True}]})
    src.execute("migrate-set-parameters", {"max-bandwidth": 64 * MiB})
    dst.execute("x-incoming-snapshot", {"enable": True})
    dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    proxy = ProxyProcess(sockdir, _listening_uri(dst))
    try:
        listen = proxy.execute("query-proxy")["listen"]
        assert listen.startswith("tcp:127.0.0.1:") and not listen.endswith(":0")
        armed = proxy.execute("x-proxy-arm", {"id": "first-part", "trigger": {
            "event": "section", "count": 2}, "fault": None, "hold": False})
        assert armed["state"] == "armed"
        src.execute("migrate", {"uri": listen})
        done = _status(src, {"completed", "failed"})
        assert done["status"] == "completed", done
        assert _status(dst, {"completed", "failed"})["status"] == "completed"
        wire = proxy.client.wait_event("WIRE", timeout=10)
        assert wire.data["id"] == "first-part" and wire.data["frame"] == "SECTION_PART"
        closed = proxy.client.wait_event("SESSION", lambda e: e.data["event"] == "closed",
                                         timeout=30)
        assert closed.data["n"] == 1
        query = proxy.execute("query-proxy")
        main = query["bytes"]["main"]
        assert main["received"] == main["forwarded"] == done["ram"]["transferred"]
        assert main["discarded"] == 0
        back = query["bytes"]["return-path"]
        assert back["received"] == back["forwarded"]
        frames = query["frames"]["main"]
        assert frames["HEADER"] == frames["EOF"] == frames["VMDESCRIPTION"] == 1
        assert frames["RAM_PAGE"] == done["ram"]["normal"] + done["ram"]["duplicate"]
        assert frames["SECTION_START"] == 1 and frames["SECTION_END"] == 1
        assert frames["SECTION_PART"] >= done["ram"]["dirty-sync-count"] - 1
        assert query["sections"] == sum(frames.get(k, 0) for k in (
            "SECTION_START", "SECTION_PART", "SECTION_END", "SECTION_FULL"))
        assert query["sessions"] == {"accepted": 1, "active": 0, "closed": 1,
                                     "list": query["sessions"]["list"]}
        assert not query["framing-errors"] and not query["errors"]
        assert [f["id"] for f in query["fired"]] == ["first-part"]
        source_pages = src.digests()
        loaded = dst.digests(at_incoming=True)
        assert source_pages is not None and loaded is not None
        assert np.array_equal(source_pages["ram"], loaded["ram"])
    finally:
        code = proxy.close()
    assert code == 0, proxy.log.read_text()


def test_the_proxy_process_ends_cleanly_on_sigterm(sockdir):
    proxy = ProxyProcess(sockdir, "tcp:127.0.0.1:9")
    try:
        assert proxy.execute("query-proxy")["state"] == "running"
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(15) == 0
    finally:
        proxy.close()


def test_the_proxy_process_refuses_a_target_it_cannot_forward(sockdir):
    proc = subprocess.run([sys.executable, "-m", "harness", "proxy", "--control",
                           f"ipc://{sockdir}/p.ctl", "--listen", "tcp:127.0.0.1:0",
                           "--target", "exec:cat"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "the proxy forwards tcp: and unix: sockets, not exec:" in proc.stderr


def _statuses(peer: HarnessPeer) -> list[str]:
    return [e.data["status"] for e in peer.poll_events() if e.name == "MIGRATION"]


def test_a_reset_in_postcopy_then_recovery_through_the_proxy(peers, sockdir):
    """The 2nd page request resets the connection; both peers pause; the destination
    listens elsewhere, the proxy is told, the source resumes to the same proxy address,
    and the new connection (no header) is framed as the continuation of the stream."""
    src, dst = peers
    caps = {"capabilities": [{"capability": "postcopy-ram", "state": True},
                             {"capability": "events", "state": True}]}
    for peer in (src, dst):
        peer.execute("migrate-set-capabilities", caps)
    src.execute("migrate-set-parameters", {"max-bandwidth": 8 * MiB,
                                           "max-postcopy-bandwidth": 4 * MiB})
    dst.execute("x-incoming-snapshot", {"enable": True})
    dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    proxy = ProxyProcess(sockdir, _listening_uri(dst))
    try:
        listen = proxy.execute("query-proxy")["listen"]
        proxy.execute("x-proxy-arm", {"id": "cut", "trigger": {"event": "page-request",
                                                               "count": 2},
                                      "fault": {"kind": "net.reset"}, "hold": False})
        src.execute("migrate", {"uri": listen})
        _status(src, {"active"})
        src.execute("migrate-start-postcopy")
        _status(src, {"postcopy-paused"})
        _status(dst, {"postcopy-paused"})
        wire = proxy.client.wait_event("WIRE", timeout=10)
        assert (wire.data["frame"] in ("REQ_PAGES", "REQ_PAGES_ID")
                and wire.data["count"] == 2 and wire.data["session"] == 1)
        fault = proxy.client.wait_event("FAULT", timeout=10)
        assert fault.data["kind"] == "net.reset"

        dst.execute("migrate-recover", {"uri": "tcp:127.0.0.1:0"})
        port = dst.execute("query-migrate")["socket-address"][0]["port"]
        proxy.execute("x-proxy-target", {"uri": f"tcp:127.0.0.1:{port}"})
        src.execute("migrate", {"uri": listen, "resume": True})
        _status(src, {"completed"})
        _status(dst, {"completed"})
        query = proxy.execute("query-proxy")
        first, second = query["sessions"]["list"]
        assert first["reason"] == "net.reset (cut)" and not first["continued"]
        assert second["continued"] is True
        assert not query["framing-errors"] and not query["errors"]
        frames = query["frames"]
        assert frames["main"]["POSTCOPY_RESUME"] == 1 and frames["main"]["RECV_BITMAP"] >= 1
        assert frames["return-path"]["RESUME_ACK"] == 1
        assert frames["return-path"]["SHUT"] == 1
        assert query["page-requests"] >= 2
        source, arrived = src.digests(), dst.digests(at_incoming=True)
        assert source is not None and arrived is not None
        assert np.array_equal(source["ram"], arrived["ram"])
        assert "postcopy-recover" in _statuses(src)
    finally:
        code = proxy.close()
    assert code == 0, proxy.log.read_text()
