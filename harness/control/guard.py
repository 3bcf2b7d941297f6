"""What a control plane's clients may do to the host it runs on: the rules in one place.

Strategy: a peer (`harness source|destination`) and an agent obey whoever reaches their
control socket, so what that lets a client do to the host is decided here, once, and
both apply it alike:

- a name a client chooses that becomes a file name (a run id, a peer name) is
  `[A-Za-z0-9_-]{1,64}` and nothing else, and every path made of one is resolved and
  refused unless it lies inside the directory it belongs to;
- `exec:` and `file:` migration URIs run a command or write a file on the host, and
  `x-record` writes files into a directory the client names: refused unless the process
  was started with `--allow-exec` (`harness run` passes it to the peers it starts on its
  private ipc sockets; an agent relays them only with `--allow-exec` of its own);
- a control endpoint reachable from other hosts needs CURVE keys (`--keys DIR`, the
  layout of `harness agent keygen DIR`) or an explicit `--insecure` (see `curve`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.control.curve import ServerKeys, bind_needs_keys, load_server_keys

__all__ = ["NAME_RULE", "URI_COMMANDS", "check_name", "control_access", "host_effect_refusal",
           "inside"]

NAME_RULE = "[A-Za-z0-9_-]{1,64}"
_NAME = re.compile(NAME_RULE)
#: commands whose `uri` argument chooses a transport
URI_COMMANDS = ("migrate", "migrate-incoming", "migrate-recover")
_HOST_SCHEMES = {"exec": "they run a command", "file": "they write files"}


def check_name(value: str, what: str) -> str | None:
    """Why `value` is not acceptable as `what` (a name that becomes a file name), or None."""
    if _NAME.fullmatch(value):
        return None
    return f"{what} {value[:80]!r} is not a name: expected {NAME_RULE}"


def host_effect_refusal(command: str, arguments: dict[str, Any], where: str) -> str | None:
    """Why `command` is refused on a process without `--allow-exec` (`where`: "this agent",
    "this peer"), or None when it acts only on its own sockets."""
    if command == "x-record":
        return (f"x-record: disabled on {where} (it writes files into the directory a "
                f"client names); start it with --allow-exec to allow it")
    uri = arguments.get("uri")
    if command not in URI_COMMANDS or not isinstance(uri, str):
        return None
    scheme = uri.split(":", 1)[0]
    if scheme not in _HOST_SCHEMES:
        return None
    return (f"{command} {uri!r}: {scheme}: migration URIs are disabled on {where} "
            f"({_HOST_SCHEMES[scheme]} on its host); start it with --allow-exec to allow them")


def inside(path: Path, directory: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside `directory` (resolved too)."""
    return path.resolve().is_relative_to(directory.resolve())


def control_access(control: str | None, keys: Path | None, insecure: bool
                   ) -> tuple[ServerKeys | None, str | None]:
    """A peer's `--control`, `--keys DIR` and `--insecure`, judged by the agent's rule:
    (the CURVE keys to serve with, a warning to print); ValueError naming the option."""
    exposed = control is not None and bind_needs_keys(control)
    if keys is not None and insecure:
        raise ValueError("--keys and --insecure contradict each other: give one")
    if keys is not None and control is None:
        raise ValueError("--keys: there is no --control address to protect")
    if exposed and keys is None and not insecure:
        raise ValueError(f"--control {control} is not a loopback address: whoever reaches it "
                         f"drives this peer, so it needs CURVE keys (harness agent keygen DIR, "
                         f"then --keys DIR) or an explicit --insecure")
    try:
        server_keys = load_server_keys(keys) if keys is not None else None
    except ValueError as err:
        raise ValueError(f"--keys: {err}") from None
    warning = (f"warning: --insecure: the control plane on {control} has no authentication; "
               f"anyone who reaches it drives this peer" if exposed and insecure else None)
    return server_keys, warning
