"""Real link faults on this host's network: a link down, a blackhole route, a rate limit, a delay.

Strategy: a multi-host run breaks the network the way it really breaks, with the kernel's own
tools (`ip` and `tc` of iproute2), in the network namespace of the calling process -- each
host's agent applies the faults of its own host, toward the other host's address. Each kind
is one change plus the list of commands that take it back, computed before the change is
made: `link.down` sets the device that reaches the other host down (and keeps the routes
through it, which the kernel flushes when a device goes down, to put back on undo);
`link.blackhole` adds a blackhole route for the other host's address (its traffic vanishes,
no error, no reset: the peer just hears nothing); `link.bandwidth` puts a token bucket (tbf)
at the root of that device; `link.delay` a netem qdisc, which some kernels lack -- that is
probed first, in a throwaway namespace, so the user gets a sentence and not tc's error.
Every qdisc fault shapes only what this host sends; traffic toward it is untouched.

Every command runs with a deadline; every failure (no `ip`, no root, no such device, a
timeout) is a `LinkFaultError` naming the command and what it printed. A `LinkFault`
records every command it ran, and `undo()` runs what is left of its undo list, so it is
idempotent and can be retried after a failure.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import IO, Any, TypeGuard

from harness.errors import EnvironmentFailure

LINK_KINDS = ("link.down", "link.blackhole", "link.bandwidth", "link.delay")
COMMAND_TIMEOUT = 5.0  # seconds; `ip` and `tc` answer in milliseconds
TBF_LATENCY = "50ms"  # longest a packet may queue in the bucket before tbf drops it
TBF_MIN_BURST = 16 * 1024
NETEM_PROBE = ("unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem",
               "delay", "1ms")
NETEM_HELP = ("load it with `modprobe sch_netem` (Debian/Ubuntu ship it in "
              "linux-modules-extra-$(uname -r)) or use a kernel built with "
              "CONFIG_NET_SCH_NETEM; without it, net.delay (the harness's proxy) delays the "
              "migration channels instead")


_PACKAGES = {"ip": "iproute2 (Debian: apt-get install iproute2)",
             "tc": "iproute2 (Debian: apt-get install iproute2)",
             "unshare": "util-linux (Debian: apt-get install util-linux)"}


class LinkFaultError(EnvironmentFailure):
    """A link fault could not be applied or undone; the message says which command and why.
    `returncode` is the failed command's exit status (None: it never ran, or timed out)."""

    def __init__(self, message: str, returncode: int | None = None):
        super().__init__(message)
        self.returncode = returncode


@dataclass(frozen=True)
class Command:
    """One `ip` or `tc` invocation, with the bytes it reads on stdin (for `ip route restore`)."""

    argv: tuple[str, ...]
    stdin: bytes | None = None

    def __str__(self) -> str:
        text = shlex.join(self.argv)
        return f"{text} < ({len(self.stdin)} bytes saved earlier)" if self.stdin else text


def run(command: Command, log: list[str] | None = None) -> bytes:
    """Run `command` with a deadline, append it to `log`, return its stdout."""
    if log is not None:
        log.append(str(command))
    if command.stdin is None:
        done = _run_with_deadline(command, subprocess.DEVNULL)
    else:  # a file, not a pipe: `ip route restore` seeks in its stdin
        with tempfile.TemporaryFile() as stdin:
            stdin.write(command.stdin)
            stdin.seek(0)
            done = _run_with_deadline(command, stdin)
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip() or "(nothing on stderr)"
        hint = (" (link faults need root, or CAP_NET_ADMIN in this network namespace)"
                if "not permitted" in stderr.lower() else "")
        raise LinkFaultError(f"`{command}` failed (exit {done.returncode}): {stderr}{hint}",
                             done.returncode)
    return done.stdout


def _run_with_deadline(command: Command, stdin: int | IO[bytes]
                       ) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(command.argv, stdin=stdin, capture_output=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        package = _PACKAGES.get(command.argv[0], "it")
        raise LinkFaultError(f"`{command}`: {command.argv[0]} not found; link faults need "
                             f"{package}") from None
    except subprocess.TimeoutExpired:
        raise LinkFaultError(f"`{command}` did not finish within {COMMAND_TIMEOUT:g} s"
                             ) from None


def run_json(command: Command, log: list[str] | None = None) -> Any:
    """`run` for a command given `-j`: its output parsed, or LinkFaultError saying what came."""
    out = run(command, log)
    try:
        return json.loads(out or b"[]")
    except ValueError:
        raise LinkFaultError(f"`{command}` printed no JSON: "
                             f"{out.decode(errors='replace').strip()[:200]!r}") from None


def _ip(*args: str) -> Command:
    return Command(("ip", *args))


def _tc(*args: str) -> Command:
    return Command(("tc", *args))


def _address(toward: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(toward)
    except ValueError:
        raise LinkFaultError(f"{toward!r} is not an IP address (a link fault names the other "
                             "host's address, e.g. 198.18.0.2)") from None


def _host_prefix(toward: str) -> str:
    address = _address(toward)
    return f"{address}/{address.max_prefixlen}"


def _route(toward: str, log: list[str] | None) -> dict[str, Any]:
    """`ip -j route get ADDR`: the route this namespace takes toward `toward`."""
    address = str(_address(toward))
    command = _ip("-j", "route", "get", address)
    try:
        routes = run_json(command, log)
    except LinkFaultError as err:
        if err.returncode is None:
            raise
        raise LinkFaultError(f"{err}{_silenced_hint(address)}", err.returncode) from None
    route = routes[0] if isinstance(routes, list) and routes else None
    if not isinstance(route, dict) or not isinstance(route.get("dev"), str):
        raise LinkFaultError(f"`{command}` printed no route with a device: {routes!r}")
    return route


def _silenced_hint(address: str) -> str:
    """When `route get` fails, say so if a blackhole-like route for the address is the cause."""
    try:
        types = {route.get("type") for route in run_json(_ip("-j", "route", "show",
                                                            _host_prefix(address)))}
    except (LinkFaultError, AttributeError, TypeError):
        return ""
    found = types & {"blackhole", "unreachable", "prohibit"}
    if not found:
        return ""
    kind = found.pop()
    return (f" ({address} has a {kind} route already: is a link.blackhole active? undo it, "
            f"or `ip route del {kind} {_host_prefix(address)}`)")


def route_device(toward: str) -> str:
    """The interface this network namespace uses to reach the address `toward`."""
    return str(_route(toward, None)["dev"])


def tbf_burst(rate: int) -> int:
    """The token bucket's size for `rate` bytes/s.

    At least one timer tick's worth of bytes at HZ=100 (rate / 100): tbf can only refill
    the bucket as often as the kernel's timer fires, and tc-tbf(8) warns that a bucket
    smaller than rate/HZ cannot reach the rate. At least 16 KiB too: a packet bigger than the
    bucket can never leave whole (tbf must segment or drop it), and a few full-size frames
    must fit at low rates. Anything larger only lets a longer burst through at line rate,
    which a rate limit measured over seconds should not allow.
    """
    return max(rate // 100, TBF_MIN_BURST)


def netem_available() -> tuple[bool, str]:
    """Whether this kernel has the netem qdisc, and a sentence saying why we think so.

    Probed by adding a netem qdisc to `lo` in an anonymous network namespace (`unshare
    --net`) that vanishes with the probe, so nothing is left behind even if we are killed.
    """
    probe = Command(NETEM_PROBE)
    try:
        run(probe)
    except LinkFaultError as err:
        text = str(err)
        if "kind is unknown" in text:
            return False, (f"netem (sch_netem) is missing on this kernel ({text}); "
                           f"{NETEM_HELP}")
        return False, f"could not probe this kernel for netem (sch_netem): {text}"
    return True, f"netem is available (`{probe}` worked in a throwaway network namespace)"


def _check_arguments(kind: str, toward: str, rate: int | None, delay: float | None,
                     jitter: float | None) -> None:
    """Every argument problem, said before any command runs."""
    if kind not in LINK_KINDS:
        raise LinkFaultError(f"{kind!r} is not a link fault kind (expected one of: "
                             f"{', '.join(LINK_KINDS)})")
    _address(toward)
    wanted = {"link.bandwidth": {"rate"}, "link.delay": {"delay", "jitter"}}.get(kind, set())
    given = {name for name, value in (("rate", rate), ("delay", delay), ("jitter", jitter))
             if value is not None}
    extra = sorted(given - wanted)
    if extra:
        raise LinkFaultError(f"{extra[0]} does not apply to {kind} (it takes: "
                             f"{', '.join(sorted(wanted)) or 'no parameters'})")
    if kind == "link.bandwidth" and not (_number(rate, whole=True) and rate > 0):
        raise LinkFaultError(f"link.bandwidth needs rate: a whole number of bytes/s above 0, "
                             f"got {rate!r}")
    if kind == "link.delay" and not (_number(delay) and delay > 0):
        raise LinkFaultError(f"link.delay needs delay: seconds above 0, got {delay!r}")
    if jitter is not None and not (_number(jitter) and jitter >= 0):
        raise LinkFaultError(f"jitter is seconds, 0 or more, got {jitter!r}")


def _number(value: object, whole: bool = False) -> TypeGuard[float]:
    kinds = (int,) if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _microseconds(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


@dataclass
class LinkFault:
    """One applied link fault: what, where, the commands run, and how to take it back."""

    kind: str
    toward: str
    device: str
    rate: int | None = None
    delay: float | None = None
    jitter: float | None = None
    burst: int | None = None
    commands: list[str] = field(default_factory=list)
    _undo: list[Command] = field(default_factory=list, repr=False)
    _undone: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> bool:
        return not self._undone

    def undo(self) -> None:
        """Restore what was there before; a second call does nothing. After a failure the
        commands that did not run yet are kept, so calling again retries them."""
        with self._lock:
            while self._undo:
                run(self._undo[0], self.commands)
                self._undo.pop(0)
            self._undone = True

    def detail(self) -> dict[str, Any]:
        """What a report shows: kind, device, parameters, every command run, and the state."""
        out: dict[str, Any] = {"kind": self.kind, "toward": self.toward, "device": self.device}
        for name in ("rate", "burst", "delay", "jitter"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["commands"] = list(self.commands)
        out["state"] = "undone" if self._undone else "applied"
        return out


def apply(kind: str, toward: str, *, rate: int | None = None, delay: float | None = None,
          jitter: float | None = None) -> LinkFault:
    """Break this namespace's link toward the address `toward`; `undo()` the result to heal.

    `rate` is bytes/s (link.bandwidth); `delay` and `jitter` are seconds (link.delay).
    """
    _check_arguments(kind, toward, rate, delay, jitter)
    if kind == "link.delay":
        ok, reason = netem_available()
        if not ok:
            raise LinkFaultError(f"link.delay cannot be applied: {reason}")
    log: list[str] = []
    route = _route(toward, log)
    if route.get("type") == "local":
        raise LinkFaultError(f"{toward} is an address of this host (its route is local, on "
                             f"{route['dev']}): a link fault names the other host's address")
    fault = LinkFault(kind=kind, toward=toward, device=str(route["dev"]), rate=rate,
                      delay=delay, jitter=jitter, commands=log)
    _APPLY[kind](fault)
    return fault


def _apply_down(fault: LinkFault) -> None:
    device = fault.device
    shown = run_json(_ip("-j", "link", "show", "dev", device), fault.commands)
    was_up = any("UP" in (link.get("flags") or []) for link in shown)
    # the kernel flushes the routes through a device that goes down; the connected routes
    # come back with the link, any other (a gateway, a static route) only if we restore it
    saved = [_saved_routes(fault, family) for family in ("-4", "-6")]
    run(_ip("link", "set", "dev", device, "down"), fault.commands)
    fault._undo = ([_ip("link", "set", "dev", device, "up")] if was_up else []) + [
        command for command in saved if command.stdin]


def _saved_routes(fault: LinkFault, family: str) -> Command:
    """`ip route save` of the device's routes, as the `ip route restore` that brings them
    back (restore skips the routes that exist already). A kernel without IPv6 has none."""
    try:
        saved = run(_ip(family, "route", "save", "dev", fault.device), fault.commands)
    except LinkFaultError:
        if family == "-4":
            raise
        saved = b""
    return Command(("ip", family, "route", "restore"), saved)


def _apply_blackhole(fault: LinkFault) -> None:
    prefix = _host_prefix(fault.toward)
    run(_ip("route", "add", "blackhole", prefix), fault.commands)
    fault._undo = [_ip("route", "del", "blackhole", prefix)]


def _apply_qdisc(fault: LinkFault) -> None:
    """A root qdisc replaces the device's default one; deleting it brings the default back.
    A root qdisc someone configured could not be brought back, so it is refused."""
    device = fault.device
    for qdisc in run_json(_tc("-j", "qdisc", "show", "dev", device), fault.commands):
        if qdisc.get("root") and qdisc.get("handle") not in (None, "0:"):
            raise LinkFaultError(
                f"{device} already has a root qdisc ({qdisc.get('kind')} {qdisc.get('handle')})"
                f": {fault.kind} would replace it and undo could not bring it back; is another"
                f" link fault active? undo it, or `tc qdisc del dev {device} root`")
    if fault.kind == "link.bandwidth":
        assert fault.rate is not None
        fault.burst = tbf_burst(fault.rate)
        shape = ("tbf", "rate", f"{fault.rate}bps", "burst", str(fault.burst),
                 "latency", TBF_LATENCY)
    else:
        assert fault.delay is not None
        jitter = (_microseconds(fault.jitter),) if fault.jitter else ()
        shape = ("netem", "delay", _microseconds(fault.delay), *jitter)
    try:
        run(_tc("qdisc", "replace", "dev", device, "root", *shape), fault.commands)
    except LinkFaultError as err:
        if "kind is unknown" not in str(err):
            raise
        help_ = NETEM_HELP if shape[0] == "netem" else f"load it with `modprobe sch_{shape[0]}`"
        raise LinkFaultError(f"{fault.kind} cannot be applied: {shape[0]} (sch_{shape[0]}) is "
                             f"missing on this kernel ({err}); {help_}") from None
    fault._undo = [_tc("qdisc", "del", "dev", device, "root")]


_APPLY = {"link.down": _apply_down, "link.blackhole": _apply_blackhole,
          "link.bandwidth": _apply_qdisc, "link.delay": _apply_qdisc}

__all__ = ["LINK_KINDS", "LinkFault", "LinkFaultError", "apply", "netem_available",
           "route_device", "tbf_burst"]
