"""Network namespaces for tests: N hosts on one link, torn down whatever happens.

Strategy: a test that needs several hosts gets real ones -- network namespaces made with
`ip netns`, each with `lo` up and one interface `veth0` holding 198.18.0.(i+1)/24 (the
benchmarking range, RFC 2544, never routed anywhere real). Two hosts share a direct veth
pair; three or more are joined by a bridge `br0` in a hub namespace. Names are
`mh-<pid>-<n>-<host>`: the pid keeps pytest-xdist workers apart, the counter keeps the labs
of one process apart, and the pid tells a later run that a namespace outlived a killed
run (its pid is dead), so it is removed before a new lab is made. `run_in` starts a
process inside a host (`ip netns exec`, in a session of its own); on exit every process of
the lab is killed -- its session, then whatever `ip netns pids` still finds in the
namespace -- and reaped, then the namespaces are deleted, also when the test failed.
Without root or a working `ip netns`, `netns_lab` skips the test and says why.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import pytest

PREFIX = "mh-"
COMMAND_TIMEOUT = 10.0
REAP_TIMEOUT = 5.0
_STALE = re.compile(rf"^{PREFIX}(\d+)-")
_labs = itertools.count()


class NetnsError(RuntimeError):
    """An `ip` command of the test infrastructure failed; the message names it."""


def ip(*args: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run `ip ARGS` with a deadline; its stdout, or NetnsError naming command and stderr."""
    argv = ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed (exit {done.returncode}): "
                         f"{done.stderr.strip()}")
    return done.stdout


@functools.cache
def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (the test creates namespaces, veth pairs, routes)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed (Debian: apt-get install iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except NetnsError as err:
        return f"`ip netns` does not work here: {err}"
    return None


def skip_unless_available() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)


def namespaces() -> list[str]:
    """The names `ip netns list` shows (each line is `NAME` or `NAME (id: N)`)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the `mh-PID-...` namespaces whose PID is dead (left by a killed run)."""
    removed = []
    for name in namespaces():
        found = _STALE.match(name)
        if found and not _alive(int(found.group(1))):
            _kill_inside(name)
            with contextlib.suppress(NetnsError):
                ip("netns", "del", name)
                removed.append(name)
    return removed


def _kill_inside(name: str) -> None:
    """SIGKILL every process still in namespace `name` (`ip netns pids`)."""
    with contextlib.suppress(NetnsError):
        for pid in ip("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


@dataclass(frozen=True)
class Host:
    """One host of a lab: its namespace, its address on the shared link, its interface."""

    index: int
    ns: str
    address: str
    device: str = "veth0"


@dataclass
class Lab:
    """N hosts on one link; use as a context manager (or call `close`)."""

    size: int
    base: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-{next(_labs)}")
    hosts: list[Host] = field(default_factory=list)
    hub: str | None = None
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a lab has at least one host, not {self.size}")
        self.hosts = [Host(i, f"{self.base}-{i}", f"198.18.0.{i + 1}")
                      for i in range(self.size)]

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def names(self) -> list[str]:
        """Every namespace of this lab (hosts, and the hub when there is one)."""
        return [h.ns for h in self.hosts] + ([self.hub] if self.hub else [])

    def build(self) -> None:
        for host in self.hosts:
            self._add_namespace(host.ns)
        if self.size == 2:
            a, b = self.hosts
            ip("link", "add", a.device, "netns", a.ns, "type", "veth",
               "peer", "name", b.device, "netns", b.ns)
        elif self.size > 2:
            self._build_hub()
        for host in self.hosts:
            if self.size > 1:
                ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", host.device)
                ip("-n", host.ns, "link", "set", host.device, "up")

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _build_hub(self) -> None:
        self.hub = f"{self.base}-hub"
        self._add_namespace(self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for host in self.hosts:
            port = f"p{host.index}"
            ip("link", "add", host.device, "netns", host.ns, "type", "veth",
               "peer", "name", port, "netns", self.hub)
            ip("-n", self.hub, "link", "set", port, "master", "br0", "up")

    def host(self, which: Host | str | int) -> Host:
        if isinstance(which, Host):
            return which
        for host in self.hosts:
            if which in (host.index, host.ns):
                return host
        raise KeyError(f"no host {which!r} in lab {self.base}")

    def run_in(self, which: Host | str | int, argv: Sequence[str],
               **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside a host's namespace, in a session of its own; reaped on close."""
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.host(which).ns, *argv],
                                **popen_kwargs)
        self.processes.append(proc)
        return proc

    def output(self, which: Host | str | int, argv: Sequence[str],
               timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a short command inside a host and return its stdout (NetnsError on failure)."""
        return ip("netns", "exec", self.host(which).ns, *argv, timeout=timeout)

    def close(self) -> None:
        """Kill and reap every process, delete every namespace; report what could not be."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for name in self._made:
            _kill_inside(name)
        stuck = []
        for proc in self.processes:
            try:
                proc.wait(REAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                stuck.append(proc.pid)
        errors = []
        for name in reversed(self._made):
            try:
                ip("netns", "del", name)
            except NetnsError as err:
                errors.append(str(err))
        self._made.clear()
        if stuck or errors:
            raise NetnsError(f"lab {self.base} did not tear down: processes not reaped "
                             f"{stuck}; {'; '.join(errors)}")


@contextlib.contextmanager
def netns_lab(size: int = 2) -> Iterator[Lab]:
    """A lab of `size` hosts, or a skip saying why there cannot be one; stale ones go first."""
    skip_unless_available()
    remove_stale()
    with Lab(size) as lab:
        yield lab
