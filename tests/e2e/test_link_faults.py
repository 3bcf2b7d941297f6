"""Real link faults between network namespaces, over a real TCP connection.

Each netns test builds its own hosts (tests/netns.py), runs a receiver in one and a sender
in the other, and applies the fault the way an agent does: `harness.faults.link` called by
a process inside the host's namespace (the driver below), which undoes it on request. What
is measured is what the receiver really got. The argument checks at the end need no root.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.faults import link
from harness.scenario import LinkFault, parse_scenario
from tests import netns
from tests.netns import Host, Lab, netns_lab

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PORT = 5001
LIMIT = 1_000_000  # 8 Mbit/s in bytes/s
DELAY = 0.2  # link.delay's, in s
MiB = 1 << 20

RECEIVER = r"""
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen()
print("listening", flush=True)
accepted = total = 0
while True:
    conn, _ = srv.accept()
    accepted += 1
    print(f"accepted {accepted}", flush=True)
    conn.settimeout(0.05)
    last = 0.0
    while True:
        try:
            data = conn.recv(1 << 20)
        except TimeoutError:
            data = None
        except OSError as err:
            print(f"error {err}", flush=True)
            break
        if data == b"":
            print("eof", flush=True)
            break
        total += len(data or b"")
        now = time.monotonic()
        if now - last >= 0.05:
            print(f"bytes {now:.6f} {total}", flush=True)
            last = now
"""

SENDER = r"""
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
sock.settimeout(None)
print("connected", flush=True)
chunk = b"x" * (1 << 16)
try:
    while True:
        sock.sendall(chunk)
except OSError as err:
    print(f"error {err}", flush=True)
"""

# `seconds` is the fastest of `count` connects once one succeeded: a busy machine can stall
# any one of them, hardly all
PROBE = r"""
import json, socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
count = int(sys.argv[4])
attempts = 0
def connect():
    start = time.monotonic()
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0).close()
    return time.monotonic() - start
while True:
    attempts += 1
    try:
        seconds = min([connect()] + [connect() for _ in range(count - 1)])
        print(json.dumps({"ok": True, "attempts": attempts, "seconds": seconds}))
        break
    except OSError as err:
        if time.monotonic() >= deadline:
            print(json.dumps({"ok": False, "attempts": attempts, "error": str(err)}))
            break
        time.sleep(0.05)
"""

# what an agent does: call harness.faults.link in its own namespace, undo on request
DRIVER = r"""
import json, sys
from harness.faults import link
from harness.scenario import LinkFault, parse_scenario
def out(obj):
    print(json.dumps(obj), flush=True)
call = json.loads(sys.argv[1])
try:
    result = getattr(link, call.pop("call"))(**call)
except link.LinkFaultError as err:
    out({"error": str(err)})
    sys.exit(0)
if not isinstance(result, link.LinkFault):
    out({"result": result})
    sys.exit(0)
out(result.detail())
for line in sys.stdin:
    try:
        result.undo()
    except link.LinkFaultError as err:
        out({"error": str(err)})
        continue
    out(result.detail())
"""


class Lines:
    """A child's stdout lines, read by a thread, taken with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float = 10.0) -> str:
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from {self.proc.args!r} within {timeout} s"
                                 ) from None
        assert line is not None, f"{self.proc.args!r} ended (exit {self.proc.wait(5)})"
        return line


class Receiver:
    """The receiving end in one host: every line it prints, parsed into samples and events."""

    def __init__(self, lab: Lab, host: Host):
        proc = lab.run_in(host, [sys.executable, "-c", RECEIVER, str(PORT)],
                          stdout=subprocess.PIPE, text=True)
        self.lines = Lines(proc)
        assert self.lines.next() == "listening"
        self.samples: list[tuple[float, int]] = []
        self.events: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._parse, daemon=True).start()

    def _parse(self) -> None:
        while (line := self.lines.queue.get()) is not None:
            with self._lock:
                if line.startswith("bytes "):
                    _, at, total = line.split()
                    self.samples.append((float(at), int(total)))
                else:
                    self.events.append(line)

    def fresh_sample(self, timeout: float = 5.0) -> tuple[float, int]:
        """The first sample taken after this call began."""
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.samples and self.samples[-1][0] > since:
                    return self.samples[-1]
            time.sleep(0.01)
        raise AssertionError(f"the receiver reported nothing for {timeout} s")

    def rate(self, seconds: float) -> float:
        t0, b0 = self.fresh_sample()
        time.sleep(seconds)
        t1, b1 = self.fresh_sample()
        return (b1 - b0) / (t1 - t0)

    def wait_for_bytes(self, total: int, timeout: float) -> float:
        """Seconds until the receiver has `total` bytes; AssertionError at the deadline."""
        start = time.monotonic()
        while time.monotonic() < start + timeout:
            with self._lock:
                if self.samples and self.samples[-1][1] >= total:
                    return time.monotonic() - start
            time.sleep(0.01)
        raise AssertionError(f"the receiver did not reach {total} bytes within {timeout} s "
                             f"(it has {self.samples[-1:] or 'nothing'}; events {self.events})")


class Driver:
    """`harness.faults.link.CALL(**args)` run inside a host; `undo()` asks it to undo."""

    def __init__(self, lab: Lab, host: Host, call: str, *, prefix: tuple[str, ...] = (),
                 **args: Any):
        argv = [*prefix, sys.executable, "-c", DRIVER, json.dumps({"call": call, **args})]
        proc = lab.run_in(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=ENV)
        self.proc = proc
        self.lines = Lines(proc)
        self.first = self._answer()

    def _answer(self) -> dict[str, Any]:
        line = self.lines.next()
        try:
            return dict(json.loads(line))
        except ValueError:
            raise AssertionError(f"the driver printed {line!r}") from None

    def undo(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("undo\n")
        self.proc.stdin.flush()
        return self._answer()


def start_flow(lab: Lab, sender: Host, receiver: Host) -> tuple[Receiver, subprocess.Popen[str]]:
    """A receiver in `receiver`, a sender in `sender` pushing data as fast as it can."""
    rx = Receiver(lab, receiver)
    tx = lab.run_in(sender, [sys.executable, "-c", SENDER, receiver.address, str(PORT)],
                    stdout=subprocess.PIPE, text=True)
    rx.wait_for_bytes(4 * MiB, timeout=10)
    return rx, tx


def probe(lab: Lab, host: Host, toward: Host, patience: float, count: int = 1
          ) -> dict[str, Any]:
    """Connect from `host` to `toward`'s port, retrying for `patience` seconds; then
    `count` - 1 more connects, `seconds` being the fastest."""
    out = lab.output(host, [sys.executable, "-c", PROBE, toward.address, str(PORT),
                            str(patience), str(count)], timeout=patience + 10 + 2 * count)
    return dict(json.loads(out))


def root_qdisc(lab: Lab, host: Host) -> str:
    return str(root_qdisc_stats(lab, host)["kind"])


def root_qdisc_stats(lab: Lab, host: Host) -> dict[str, Any]:
    """`tc -s -j qdisc show`'s root qdisc: kind, options (tbf: rate in bytes/s, burst),
    counters (bytes, packets, overlimits)."""
    shown = json.loads(lab.output(host, ["tc", "-s", "-j", "qdisc", "show", "dev",
                                         host.device]))
    return dict(next(q for q in shown if q.get("root")))


def link_flags(lab: Lab, host: Host) -> list[str]:
    shown = json.loads(lab.output(host, ["ip", "-j", "link", "show", "dev", host.device]))
    return list(shown[0]["flags"])


@pytest.fixture
def pair() -> Iterator[Lab]:
    with netns_lab(2) as lab:
        yield lab


# --- the namespaces themselves -------------------------------------------------------------


@pytest.mark.netns
def test_three_hosts_reach_each_other_over_a_bridge_and_everything_goes_on_exit():
    with netns_lab(3) as lab:
        assert lab.hub is not None
        for host in lab.hosts:
            Receiver(lab, host)
        for host in lab.hosts:
            for other in lab.hosts:
                if other is not host:
                    assert probe(lab, host, other, patience=5)["ok"], (host, other)
        names, processes = lab.names, list(lab.processes)
        assert len(names) == 4 and set(names) <= set(netns.namespaces())
    assert not set(names) & set(netns.namespaces())
    assert all(proc.returncode is not None for proc in processes)


@pytest.mark.netns
def test_a_failing_test_still_kills_everything_even_what_left_the_session():
    with pytest.raises(RuntimeError, match="the test failed"), netns_lab(2) as lab:
        # the grandchild starts a session of its own: only `ip netns pids` still finds it
        shell = lab.run_in(0, ["sh", "-c", "setsid sleep 60 & echo $!; sleep 60"],
                           stdout=subprocess.PIPE, text=True)
        assert shell.stdout is not None
        escaped = int(shell.stdout.readline())
        names = lab.names
        raise RuntimeError("the test failed")
    assert shell.returncode == -9
    assert not set(names) & set(netns.namespaces())
    deadline = time.monotonic() + 5
    while _running(escaped) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(escaped), f"pid {escaped} outlived its namespace"


def _running(pid: int) -> bool:
    """Alive and not a zombie (init, not us, reaps a process that left our session)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.netns
def test_a_namespace_left_by_a_killed_run_is_removed():
    netns.skip_unless_available()
    dead = subprocess.Popen(["true"])
    dead.wait(5)
    stale = f"{netns.PREFIX}{dead.pid}-0-0"
    netns.ip("netns", "add", stale)
    try:
        with netns_lab(1) as lab:
            assert stale not in netns.namespaces()
            assert lab.hosts[0].ns in netns.namespaces()
    finally:
        if stale in netns.namespaces():
            netns.ip("netns", "del", stale)


# --- the faults ------------------------------------------------------------------------------


@pytest.mark.netns
def test_route_device_names_the_interface_and_a_missing_route_is_a_clear_error(pair):
    a, b = pair.hosts
    assert Driver(pair, a, "route_device", toward=b.address).first == {"result": "veth0"}
    error = Driver(pair, a, "route_device", toward="198.19.5.5").first["error"]
    assert "`ip -j route get 198.19.5.5` failed" in error
    assert "Network is unreachable" in error


@pytest.mark.netns
def test_without_cap_net_admin_the_error_says_what_is_missing(pair):
    a, b = pair.hosts
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_ADMIN")
    drop = ("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin")
    error = Driver(pair, a, "apply", prefix=drop, kind="link.down", toward=b.address
                   ).first["error"]
    assert "`ip link set dev veth0 down` failed (exit 2): RTNETLINK answers: Operation not " \
           "permitted (link faults need root, or CAP_NET_ADMIN" in error
    assert "UP" in link_flags(pair, a)


@pytest.mark.netns
def test_bandwidth_limits_throughput_and_undo_restores_it(pair):
    a, b = pair.hosts
    rx, _ = start_flow(pair, a, b)
    before = rx.rate(0.3)
    fault = Driver(pair, a, "apply", kind="link.bandwidth", toward=b.address, rate=LIMIT)
    detail = fault.first
    assert (detail["device"], detail["rate"], detail["state"]) == ("veth0", LIMIT, "applied")
    assert (f"tc qdisc replace dev veth0 root tbf rate {LIMIT}bps burst "
            f"{link.tbf_burst(LIMIT)} latency 50ms") in detail["commands"]
    # the mechanism: the kernel's token bucket, with the rate in bytes/s (not bits)
    installed = root_qdisc_stats(pair, a)
    assert installed["kind"] == "tbf", installed
    assert (installed["options"]["rate"], installed["options"]["burst"]) == (
        LIMIT, link.tbf_burst(LIMIT)), installed
    # TCP loses what overflows the bucket at first, and delivers in lumps while it
    # recovers: measure after that, over a window long enough to average the lumps
    time.sleep(0.5)
    limited = rx.rate(2.0)
    shaped = root_qdisc_stats(pair, a)
    undone = fault.undo()
    assert undone["state"] == "undone" and undone["commands"][-1] == "tc qdisc del dev veth0 root"
    assert root_qdisc(pair, a) == "noqueue"
    time.sleep(0.2)
    after = rx.rate(0.3)
    rates = f"before {before:.0f} B/s, limited {limited:.0f} B/s, after {after:.0f} B/s"
    # the flow went through the bucket, and the bucket held it back
    assert shaped["bytes"] > 0 and shaped["overlimits"] > 0, shaped
    # speeds only against each other (a busy machine slows every flow) and against the
    # limit from above (no load makes a flow outrun the kernel's bucket); the floor at a
    # tenth of the limit only says the link still carries data
    assert limited < before / 2, rates
    assert LIMIT / 10 < limited < 1.5 * LIMIT, rates
    assert after > 2 * limited, rates
    assert rx.events == ["accepted 1"], rx.events


@pytest.mark.netns
def test_blackhole_silences_the_path_without_a_reset_and_undo_restores_it(pair):
    a, b = pair.hosts
    rx, tx = start_flow(pair, a, b)
    fault = Driver(pair, a, "apply", kind="link.blackhole", toward=b.address)
    assert fault.first["commands"][-1] == "ip route add blackhole 198.18.0.2/32"
    time.sleep(0.3)
    _, silent_from = rx.fresh_sample()
    time.sleep(1.0)
    _, silent_to = rx.fresh_sample()
    assert silent_to == silent_from, "data arrived through the blackhole"
    assert tx.poll() is None and rx.events == ["accepted 1"], rx.events
    first, second = fault.undo(), fault.undo()
    assert first == second and first["state"] == "undone", "undo is not idempotent"
    assert first["commands"][-1] == "ip route del blackhole 198.18.0.2/32"
    rx.wait_for_bytes(silent_to + 4 * MiB, timeout=8)  # TCP retransmits, the same connection
    assert rx.events == ["accepted 1"] and tx.poll() is None, rx.events


@pytest.mark.netns
def test_a_second_blackhole_is_refused_saying_the_first_is_there(pair):
    a, b = pair.hosts
    fault = Driver(pair, a, "apply", kind="link.blackhole", toward=b.address)
    again = Driver(pair, a, "apply", kind="link.blackhole", toward=b.address).first["error"]
    assert "`ip -j route get 198.18.0.2` failed" in again
    assert "198.18.0.2 has a blackhole route already" in again
    assert fault.undo()["state"] == "undone"
    assert Driver(pair, a, "route_device", toward=b.address).first == {"result": "veth0"}


@pytest.mark.netns
def test_link_down_breaks_the_path_and_undo_brings_it_and_its_routes_back(pair):
    a, b = pair.hosts
    Receiver(pair, b)
    pair.output(a, ["ip", "route", "add", "198.19.7.0/24", "via", b.address])
    assert probe(pair, a, b, patience=5)["ok"]
    fault = Driver(pair, a, "apply", kind="link.down", toward=b.address)
    assert fault.first["commands"][-1] == "ip link set dev veth0 down"
    assert "UP" not in link_flags(pair, a)
    broken = probe(pair, a, b, patience=0)
    assert not broken["ok"] and "unreachable" in broken["error"], broken
    assert "198.19.7.0/24" not in pair.output(a, ["ip", "route"])  # the kernel flushed it
    undone = fault.undo()
    assert undone["state"] == "undone" and "ip link set dev veth0 up" in undone["commands"]
    assert "UP" in link_flags(pair, a)
    assert probe(pair, a, b, patience=5)["ok"], "TCP does not connect after undo"
    assert f"198.19.7.0/24 via {b.address} dev veth0" in pair.output(a, ["ip", "route"])


@pytest.mark.netns
def test_link_delay_works_exactly_when_netem_exists(pair):
    a, b = pair.hosts
    available, reason = link.netem_available()
    assert Driver(pair, a, "netem_available").first["result"][0] is available, reason
    Receiver(pair, b)
    fault = Driver(pair, a, "apply", kind="link.delay", toward=b.address, delay=DELAY)
    if not available:
        error = fault.first["error"]
        assert "netem (sch_netem) is missing on this kernel" in error
        assert "modprobe sch_netem" in error
        assert root_qdisc(pair, a) == "noqueue"  # nothing was changed
        return
    assert root_qdisc(pair, a) == "netem"
    assert probe(pair, a, b, patience=5)["seconds"] >= DELAY  # no load makes it faster
    fault.undo()
    assert root_qdisc(pair, a) == "noqueue"
    # undone: the fastest of a few connects is far below the delay (one alone may stall)
    assert probe(pair, a, b, patience=5, count=5)["seconds"] < DELAY / 2


# --- argument checks: no root, no command run -------------------------------------------------

BAD_CALLS = {
    "unknown kind": (("link.flap", "198.18.0.2"), {}, "'link.flap' is not a link fault kind"),
    "bandwidth without rate": (("link.bandwidth", "198.18.0.2"), {},
                               "link.bandwidth needs rate: a whole number of bytes/s above 0"),
    "rate zero": (("link.bandwidth", "198.18.0.2"), {"rate": 0}, "got 0"),
    "rate not whole": (("link.bandwidth", "198.18.0.2"), {"rate": 1.5}, "got 1.5"),
    "rate for link.down": (("link.down", "198.18.0.2"), {"rate": 10},
                           "rate does not apply to link.down (it takes: no parameters)"),
    "jitter for bandwidth": (("link.bandwidth", "198.18.0.2"), {"rate": 10, "jitter": 0.1},
                             "jitter does not apply to link.bandwidth (it takes: rate)"),
    "delay without delay": (("link.delay", "198.18.0.2"), {"jitter": 0.01},
                            "link.delay needs delay: seconds above 0"),
    "negative jitter": (("link.delay", "198.18.0.2"), {"delay": 0.1, "jitter": -1},
                        "jitter is seconds, 0 or more"),
    "not an address": (("link.down", "host-b"), {}, "'host-b' is not an IP address"),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_bad_arguments_are_refused_before_any_command_runs(case, monkeypatch):
    args, kwargs, fragment = BAD_CALLS[case]
    monkeypatch.setenv("PATH", "")  # had a command run, the error would name a missing `ip`
    with pytest.raises(link.LinkFaultError) as caught:
        link.apply(*args, **kwargs)
    assert fragment in str(caught.value)


def test_a_missing_ip_binary_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(link.LinkFaultError, match=r"`ip -j route get 198\.18\.0\.2`: ip not "
                       r"found; link faults need iproute2"):
        link.route_device("198.18.0.2")


def test_a_command_that_hangs_is_stopped_at_its_deadline(monkeypatch, tmp_path):
    hang = 60  # s the fake `ip` would take: the run must end long before
    slow = tmp_path / "ip"
    slow.write_text(f"#!/bin/sh\nexec {shutil.which('sleep')} {hang}\n")
    slow.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(link, "COMMAND_TIMEOUT", 0.3)
    start = time.monotonic()
    with pytest.raises(link.LinkFaultError, match=r"`ip -j route get 198\.18\.0\.2` did not "
                       r"finish within 0\.3 s"):
        link.route_device("198.18.0.2")
    assert 0.3 <= time.monotonic() - start < hang / 2


def test_the_token_bucket_holds_a_tick_of_the_rate_and_never_less_than_16k():
    assert link.tbf_burst(LIMIT) == 16 * 1024
    assert link.tbf_burst(100 * LIMIT) == LIMIT


def test_a_scenario_link_fault_passes_its_values_to_apply_unchanged(monkeypatch):
    """The scenario's units (bytes/s, seconds) are apply's: its checks accept them as they
    are, so what fails without `ip` on PATH is the first command, not an argument."""
    scenario = parse_scenario(
        "name: a\nhosts:\n  h1: {agent: 'tcp://198.18.0.1:5555'}\nsteps:\n"
        "  - {on: {pass: 1}, fault: {kind: link.bandwidth, host: h1, rate: 1MiB/s}}\n"
        "  - {on: {pass: 2}, fault: {kind: link.delay, host: h1, delay: 20ms, jitter: 5ms}}\n",
        file="links.yaml")
    faults = [step.fault for step in scenario.steps]
    assert [(f.kind, f.rate, f.delay, f.jitter) for f in faults if isinstance(f, LinkFault)] == [
        ("link.bandwidth", MiB, None, None), ("link.delay", None, 0.02, 0.005)]
    monkeypatch.setenv("PATH", "")
    for fault in faults:
        assert isinstance(fault, LinkFault)
        with pytest.raises(link.LinkFaultError, match="not found"):
            link.apply(fault.kind, "198.18.0.2", rate=fault.rate, delay=fault.delay,
                       jitter=fault.jitter)
