"""`peer-start` of kind "qemu": what its options may say, and the process the agent runs.

Strategy: the agent does not drive QEMU itself (its loop must never wait on a QMP
socket); it starts `python -m harness qemu-peer --control ADDRESS --spec-json SPEC`
(harness/qemu/served.py), a wrapper that starts QEMU with this host's binary and serves
the harness control plane on the agent's private ipc address, so the agent relays to it
as to any peer.  The options are read strictly here, before anything starts: an unknown
member, a wrong type or an out-of-range value is an OSError the agent answers
`peer-start` with.  `QemuSpec` is also what the wrapper reads back (the same check).
`peer-stacks` of such a peer shows QEMU's own threads (`qemu_stacks`: /proc of the
wrapper's QEMU children, runner/stacks.proc_stacks), not the wrapper's Python stack.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MODES", "QemuSpec", "qemu_command_line", "qemu_stacks"]

MODES = ("run", "probe")  # run: a QEMU peer; probe: no QEMU, only `x-layout`
ACCELS = ("auto", "kvm", "tcg")
MAX_ARGS = 256
MAX_ARG = 4096
MAX_MEMORY = 1 << 40
_MEMBERS = {"mode", "machine", "memory", "accel", "args", "binary", "paused", "program",
            "loader"}


@dataclass(frozen=True)
class QemuSpec:
    """A QEMU peer as the runner asks for it (the wrapper resolves the rest on its host)."""

    role: str
    machine: str
    memory: int
    accel: str = "tcg"
    args: tuple[str, ...] = ()
    binary: str | None = None        # Host.qemu; None: qemu-system-x86_64 on the PATH
    paused: bool = False             # -S (a precopy destination held for the check)
    program: dict[str, Any] | None = None  # realguest.GuestProgram's fields
    loader: dict[str, Any] | None = None   # -M none source: {seed, fill, compressible}
    mode: str = "run"

    @classmethod
    def from_options(cls, role: str, options: dict[str, Any]) -> QemuSpec:
        """The spec of `options` (a peer-start's); ValueError naming the member."""
        unknown = sorted(set(options) - _MEMBERS)
        if unknown:
            raise ValueError(f"qemu options: member {unknown[0]!r} is unexpected (allowed: "
                             f"{', '.join(sorted(_MEMBERS))})")
        if role not in ("source", "destination"):
            raise ValueError(f"qemu options: role {role!r} is not source or destination")
        machine = _text(options.get("machine", "none"), "machine", 64)
        memory = options.get("memory")
        if isinstance(memory, bool) or not isinstance(memory, int) or \
                not 0 < memory <= MAX_MEMORY:
            raise ValueError(f"qemu options: memory {memory!r:.40} is not a size in bytes")
        accel = options.get("accel", "tcg")
        if accel not in ACCELS:
            raise ValueError(f"qemu options: accel {accel!r:.20} is not one of {ACCELS}")
        mode = options.get("mode", "run")
        if mode not in MODES:
            raise ValueError(f"qemu options: mode {mode!r:.20} is not one of {MODES}")
        args = options.get("args", [])
        if not isinstance(args, list) or len(args) > MAX_ARGS:
            raise ValueError("qemu options: args must be a list of at most "
                             f"{MAX_ARGS} strings")
        binary = options.get("binary")
        paused = options.get("paused", False)
        if not isinstance(paused, bool):
            raise ValueError("qemu options: paused must be a boolean")  # noqa: TRY004
        return cls(role, machine, memory, accel, tuple(_text(a, "args", MAX_ARG) for a in args),
                   None if binary is None else _text(binary, "binary", MAX_ARG), paused,
                   _program(options.get("program")), _loader(options.get("loader")), mode)

    def options(self) -> dict[str, Any]:
        """The peer-start options this spec was read from."""
        out = asdict(self)
        del out["role"]
        out["args"] = list(self.args)
        return out

    def to_json(self) -> str:
        return json.dumps({"role": self.role, **self.options()})

    @classmethod
    def from_json(cls, text: str) -> QemuSpec:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("role"), str):
            raise ValueError("qemu spec: an object with a role")  # noqa: TRY004 - bad input
        role = doc.pop("role")
        return cls.from_options(role, doc)


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise ValueError(f"qemu options: {what} {value!r:.40} is not a string of 1 to "
                         f"{limit} characters")
    return value


def _program(doc: Any) -> dict[str, Any] | None:
    if doc is None:
        return None
    from harness.realguest.image import GuestProgram

    if not isinstance(doc, dict) or set(doc) - {"memory", "dirty_rate", "pattern", "hotset"}:
        raise ValueError("qemu options: program takes memory, dirty_rate, pattern, hotset")
    try:
        GuestProgram(**doc)
    except (TypeError, ValueError) as err:
        raise ValueError(f"qemu options: program: {err}") from None
    return dict(doc)


def _loader(doc: Any) -> dict[str, Any] | None:
    if doc is None:
        return None
    ok = isinstance(doc, dict) and set(doc) == {"seed", "fill", "compressible"} and \
        isinstance(doc["seed"], int) and isinstance(doc["fill"], (int, float)) and \
        0 <= doc["fill"] <= 1 and isinstance(doc["compressible"], bool)
    if not ok:
        raise ValueError("qemu options: loader is {seed: int, fill: 0..1, compressible: bool}")
    return dict(doc)


def qemu_command_line(peer: Any) -> list[str]:
    """The wrapper's argv for an agent's PeerProcess (OSError on bad options)."""
    try:
        spec = QemuSpec.from_options(peer.role, dict(peer.spec.options))
    except ValueError as err:
        raise OSError(str(err)) from None
    return [sys.executable, "-m", "harness.qemu.served", "--control", peer.address,
            "--spec-json", spec.to_json()]


def qemu_stacks(wrapper_pid: int) -> str | None:
    """The threads of every QEMU the wrapper `wrapper_pid` runs (its children -- it starts
    nothing else: the peer, and a reference or probe QEMU while one is read), from /proc;
    None when it runs none."""
    import psutil

    from harness.runner.stacks import proc_stacks

    try:
        children = psutil.Process(wrapper_pid).children()
    except psutil.Error:
        return None
    parts = []
    for child in children:
        try:
            name = child.name()
        except psutil.Error:
            continue
        parts.append(f"QEMU pid {child.pid} ({name}):\n{proc_stacks(child.pid)}")
    return "\n".join(parts) or None
