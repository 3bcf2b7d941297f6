"""The protocol-aware proxy as a process an agent runs (`peer-start` with kind "proxy").

Strategy: to the agent the proxy is one more peer (`agent_peers.PeerProcess`): started in
the run's directory through the lifeline, greeted with `qmp_capabilities` on its private
ipc:// control address, relayed to, stopped with `quit` and reaped.  What differs is its
command line -- `python -m harness proxy --control ADDR --listen URI --target URI --seed N
[--record RUN-DIR]`, built from the `peer-start` options -- and what the agent lets a
client make it do on this host.  Both are decided here, strictly: the options are exactly
`listen`, `target` (tcp: or unix: URIs; a unix: path only inside the run's directory),
`seed` (an integer), `record` (a boolean: keep the stream in the run's directory) and
`preempt` (a boolean: postcopy-preempt, a second connection follows each main one);
relayed commands may not point it at a unix: socket elsewhere (`x-proxy-target`) nor make
it read a file of this host (`x-proxy-layout` takes the layout inline here, never a file).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.control.guard import inside
from harness.transport.errors import UriError

if TYPE_CHECKING:
    from harness.control.agent_peers import PeerProcess

__all__ = ["OPTIONS", "check_options", "proxy_command_line", "relay_refusal"]

#: option -> (type, required)
OPTIONS: dict[str, tuple[type, bool]] = {"listen": (str, True), "target": (str, True),
                                         "seed": (int, False), "record": (bool, False),
                                         "preempt": (bool, False), "multifd": (int, False)}
MAX_URI = 4096


def check_options(options: dict[str, Any], run_dir: Path) -> str | None:
    """Why `options` of a proxy's `peer-start` are not acceptable, or None."""
    extra = sorted(set(options) - set(OPTIONS))
    if extra:
        return (f"proxy option {extra[0]!r} is unexpected (allowed: "
                f"{', '.join(OPTIONS)})")
    for name, (kind, required) in OPTIONS.items():
        if name not in options:
            if required:
                return f"proxy option {name!r} is missing"
            continue
        value = options[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"proxy option {name!r} must be {_KINDS[kind]}, got {value!r:.60}"
    for name in ("listen", "target"):
        problem = uri_problem(options[name], run_dir, "destination" if name == "listen"
                              else "source")
        if problem:
            return f"proxy option {name!r}: {problem}"
    return None


_KINDS = {str: "a string", int: "an integer", bool: "a boolean"}


def uri_problem(uri: str, run_dir: Path, role: str) -> str | None:
    """Why the proxy may not listen on / connect to `uri` on this host, or None."""
    from harness.faults.endpoint import proxy_uri

    if len(uri) > MAX_URI:
        return f"a URI of {len(uri)} characters is too long"
    try:
        parsed = proxy_uri(uri, role)  # type: ignore[arg-type]
    except (UriError, ValueError) as err:
        return str(err)
    if parsed.kind == "unix" and not inside(run_dir / (parsed.path or ""), run_dir):
        return (f"{uri!r}: a unix: socket of a proxy an agent runs lies inside the run's "
                f"directory {run_dir}")
    return None


def proxy_command_line(peer: PeerProcess) -> list[str]:
    """The proxy's argv (OSError naming the option when the `peer-start` is not valid)."""
    spec = peer.spec
    if spec.role != "proxy":
        raise OSError(f"a process of kind 'proxy' has the role 'proxy', not {spec.role!r}")
    problem = check_options(spec.options, peer.run_dir)
    if problem:
        raise OSError(problem)
    options = spec.options
    argv = [sys.executable, "-m", "harness", "proxy", "--control", peer.address,
            "--listen", options["listen"], "--target", options["target"],
            "--seed", str(options.get("seed", 0))]
    if options.get("record"):
        argv += ["--record", str(peer.run_dir)]
    if options.get("preempt"):
        argv.append("--preempt")
    if options.get("multifd"):
        argv += ["--multifd", str(options["multifd"])]
    return argv


def relay_refusal(peer: PeerProcess, command: str, arguments: dict[str, Any],
                  run_dir: Path) -> str | None:
    """Why the agent does not relay `command` to `peer` (a proxy), or None."""
    if peer.spec.kind != "proxy":
        return None
    if command == "x-proxy-target" and isinstance(arguments.get("uri"), str):
        problem = uri_problem(arguments["uri"], run_dir, "source")
        return f"x-proxy-target: {problem}" if problem else None
    if command == "x-proxy-layout" and arguments.get("file") is not None:
        return ("x-proxy-layout: a proxy an agent runs takes its layout inline "
                "({\"layout\": {...}}), never a file of the agent's host")
    return None
