"""`peer-start` of kind "harness": what its options may say, and the layout file it brings.

Strategy: a harness destination of a real QEMU source needs the machine's layout (its RAM
blocks and device sections; locally the runner passes `--layout FILE`,
runner/coordinator.py).  A path of the runner's host means nothing on an agent's, so the
runner sends the layout inline: `options: {"layout": {...}}` (the document of
`MachineLayout.to_json`).  The options are read strictly here, before anything starts:
`layout` is the only member, only a destination takes one, and the document is checked
exactly as the proxy's inline layout is (harness/faults/proxy_main.py `inline_layout`:
nesting, size, `MachineLayout.from_json`).  The agent then writes it to
`RUN-DIR/layout.json` -- created (O_EXCL|O_NOFOLLOW), inside the run's directory,
replacing the regular file an earlier start of this run left, refusing a symbolic link
there -- and the peer is started with `--layout RUN-DIR/layout.json`.  Any problem is an OSError the agent
answers `peer-start` with (agent_peers.PeerProcess.launch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.control.guard import inside

if TYPE_CHECKING:
    from harness.control.agent_peers import PeerProcess
    from harness.qemu.layout import MachineLayout

__all__ = ["LAYOUT_FILE", "OPTIONS", "check_options", "layout_arguments"]

OPTIONS = ("layout",)
LAYOUT_FILE = "layout.json"


def check_options(role: str, options: dict[str, Any]) -> MachineLayout | None:
    """The layout `options` of a harness peer's `peer-start` carry (None: no layout);
    ValueError naming the option when they are not acceptable."""
    from harness.faults.proxy_main import inline_layout

    extra = sorted(set(options) - set(OPTIONS))
    if extra:
        raise ValueError(f"harness option {extra[0]!r:.60} is unexpected (allowed: "
                         f"{', '.join(OPTIONS)})")
    if "layout" not in options:
        return None
    if role != "destination":
        raise ValueError(f"harness option 'layout': a {role} takes no layout (only a "
                         "destination loads a real machine's devices)")
    doc = options["layout"]
    if not isinstance(doc, dict):
        raise ValueError(f"harness option 'layout' must be an object (a machine layout), "  # noqa: TRY004
                         f"got {type(doc).__name__}")
    try:
        return inline_layout(doc)
    except ValueError as err:
        raise ValueError(f"harness option 'layout': "
                         f"{str(err).removeprefix('x-proxy-layout: ')}") from None


def write_layout(layout: MachineLayout, run_dir: Path) -> Path:
    """`layout` as RUN-DIR/layout.json (created here, 0600; OSError otherwise)."""
    path = run_dir / LAYOUT_FILE
    if path.is_symlink() or not inside(path, run_dir):
        raise OSError(f"{path} is a symbolic link or lies outside the run's directory "
                      f"{run_dir}: the agent writes no layout through it")
    if path.is_file():
        path.unlink()  # an earlier start's
    data = json.dumps(layout.to_json(), separators=(",", ":")).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with open(fd, "wb") as f:
        f.write(data)
    return path


def layout_arguments(peer: PeerProcess) -> list[str]:
    """`--layout FILE` for a harness peer whose `peer-start` brought a layout, else [];
    OSError naming the option when the options are not acceptable."""
    try:
        layout = check_options(peer.role, dict(peer.spec.options))
    except ValueError as err:
        raise OSError(str(err)) from None
    if layout is None:
        return []
    return ["--layout", str(write_layout(layout, peer.run_dir))]
