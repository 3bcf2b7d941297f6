"""A real QEMU served on the harness control plane: what an agent runs for `kind: qemu`.

Strategy: `python -m harness.qemu.served --control ipc://... --spec-json SPEC` starts QEMU
exactly as the runner's local QEMU peer does (runner/peers.QemuPeer, with this host's
binary; the real guest's image written here from its description), then serves the
control plane (harness/control/server.py) on the agent's private address:

- every QMP command QEMU offers (`query-commands`) is relayed to QEMU's QMP; a refusal
  keeps QEMU's error class and description;
- QEMU's events are forwarded as control events with QEMU's own timestamps: one loop
  waits on the control socket and on QMP's, and takes what QMP has without a round trip
  (`QMPClient.take_available`); events read while a command was answered are forwarded
  right after it;
- `x-` commands give the runner what it reads of a QEMU peer without moving its RAM:
  `x-qemu-facts`, `x-heartbeat`, `x-serial-tail`, `x-memory-evidence` (every RAM block
  read here and sent as digests, harness/realguest/hashed.py: BLAKE2b-128 by default,
  `{"digests": "harness"}` for the harness's own when the other side is a harness
  peer), `x-memory-pages` (the few
  pages a message quotes) and `x-layout` (the machine's layout learnt with this host's
  binary, harness/qemu/layout.py, sent as content);
- `quit` ends QEMU and then the wrapper.

QEMU runs in the wrapper's session (and dies with it: harness.lifeline), so the agent's
process faults on the session hit both as they would hit a local QEMU; when QEMU exits
the wrapper copies QEMU's stderr into its own (the agent's log of the peer: the runner
reads "load of migration failed" there) and exits with QEMU's status, re-raising the
signal that killed it.  Mode `probe` starts no QEMU: it only answers `x-layout`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from harness.control.agent_qemu import QemuSpec
from harness.control.errors import CommandError
from harness.control.messages import GENERIC_ERROR
from harness.control.server import BlobResult, ControlServer

from .qmp import QMPError

log = logging.getLogger(__name__)

IDLE_WAIT = 0.2        # s: the loop's longest wait (QEMU's exit is checked this often)
COMMAND_TIMEOUT = 30.0
MAX_SERIAL = 1 << 16
MAX_PAGES = 16         # pages one `x-memory-pages` sends back
PAGE = 4096
OWN = ("quit", "x-qemu-facts", "x-heartbeat", "x-serial-tail", "x-memory-evidence",
       "x-memory-pages", "x-layout")


class Served:
    """The wrapper's state: the spec, the QemuPeer (None in probe mode), the server."""

    def __init__(self, spec: QemuSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.peer = _qemu_peer(spec, workdir)
        self.blocks: dict[str, np.ndarray] = {}  # the last memory read, for x-memory-pages
        self.stop = False

    # ------------------------------------------------------------------ serving
    def register(self, server: ControlServer) -> None:
        handlers = {"quit": self.quit, "x-qemu-facts": self.facts,
                    "x-heartbeat": self.heartbeat, "x-serial-tail": self.serial_tail,
                    "x-memory-evidence": self.memory_evidence,
                    "x-memory-pages": self.memory_pages, "x-layout": self.layout}
        for name, handler in handlers.items():
            server.register(name, handler)
        if self.spec.mode == "probe":
            return
        for entry in self.peer.execute("query-commands", timeout=10):
            name = str(entry.get("name", ""))
            if name and name not in OWN and name not in ("qmp_capabilities", "query-commands"):
                server.register(name, self._relay(server, name))

    def _relay(self, server: ControlServer, name: str) -> Any:
        def relay(arguments: dict[str, Any]) -> Any:
            try:
                return self.peer._qemu.qmp.execute(name, arguments or None,
                                                   timeout=COMMAND_TIMEOUT)
            except QMPError as err:
                raise CommandError(err.error_class, err.desc) from None
            finally:
                self.forward(server)
        return relay

    def forward(self, server: ControlServer) -> None:
        """What QMP has (read without waiting; events queued while a command was answered
        too) out as control events, with QEMU's timestamps.  A closed QMP is left to the
        exit check."""
        for e in self.peer._qemu.qmp.take_available():
            ts = e.get("timestamp", {})
            at = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
            server.emit(str(e.get("event")), dict(e.get("data", {})), at or None)

    # ------------------------------------------------------------------ x- commands
    def quit(self, arguments: dict[str, Any]) -> Any:
        self.stop = True
        return {}

    def facts(self, arguments: dict[str, Any]) -> Any:
        from .launch import find_qemu

        binary = self.spec.binary or find_qemu() or "qemu-system-x86_64"
        out = self.peer.facts() if self.peer is not None else {}
        return {**out, "hostname": socket.gethostname(), "binary": str(binary),
                "qemu-pid": self.peer.pid if self.peer is not None else None}

    def heartbeat(self, arguments: dict[str, Any]) -> Any:
        try:
            beat = self.peer.heartbeat()
        except ValueError as err:
            return {"heartbeat": None, "error": str(err)}
        except QMPError as err:
            raise CommandError(err.error_class, err.desc) from None
        return {"heartbeat": None if beat is None else asdict(beat)}

    def serial_tail(self, arguments: dict[str, Any]) -> Any:
        limit = arguments.get("limit", 4096)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_SERIAL:
            raise CommandError(GENERIC_ERROR, f"limit: 1 to {MAX_SERIAL} bytes")
        return {"text": self.peer.serial_text(limit)}

    def memory_evidence(self, arguments: dict[str, Any]) -> Any:
        """Every RAM block read here (stopped for the reading, continued if it ran) and
        sent as digests (`{"digests": KIND}`, hashed.DIGEST_KINDS); the blocks stay here
        for x-memory-pages."""
        from harness.realguest.hashed import summarize, summary_message

        kind = _digest_kind(arguments)
        started = time.monotonic()
        try:
            ran = self.peer.runstate() == "running"
            if ran:
                self.peer.execute("stop")
            blocks = dict(self.peer.snapshot())
            if ran:
                self.peer.execute("cont")
        except (QMPError, OSError, ValueError, RuntimeError) as err:
            raise CommandError(GENERIC_ERROR, f"memory unreadable: {err}") from None
        read = round(time.monotonic() - started, 3)
        reference = self._reference(blocks)
        self.blocks = blocks
        try:
            summary = summarize(blocks, _program(self.spec), kind)
        except ValueError as err:
            raise CommandError(GENERIC_ERROR, f"memory undigestible: {err}") from None
        snap = self.peer.last_snapshot
        summary.notes = {"seconds": read, "resumed": ran, "reference-blocks": reference,
                         "hash-seconds": round(time.monotonic() - started - read, 3),
                         "stream-bytes": None if snap is None else snap.stream_bytes,
                         "blocks": {k: int(v.size) for k, v in blocks.items()}}
        value, blob = summary_message(summary)
        return BlobResult(value, blob)

    def _reference(self, blocks: dict[str, np.ndarray]) -> list[str]:
        """A postmigrate source's ROM blocks, from a fresh QEMU of its command line
        (runner/real_guest.py: _reference_roms, done on this host)."""
        listed = [b.name for b in getattr(self.peer.last_snapshot, "listed", [])]
        missing = [name for name in listed if name not in blocks]
        if not missing:
            return []
        from .reference import reference_blocks

        try:
            found = reference_blocks(self.peer.binary, self.peer.command_args(), self.workdir,
                                     missing)
        except (QMPError, OSError, ValueError, RuntimeError) as err:
            log.warning("reference blocks unreadable: %s", err)
            return []
        blocks.update(found)
        return sorted(found)

    def memory_pages(self, arguments: dict[str, Any]) -> Any:
        block, pages = arguments.get("block"), arguments.get("pages")
        data = self.blocks.get(block) if isinstance(block, str) else None
        if data is None:
            raise CommandError(GENERIC_ERROR, f"no block {block!r:.60} read (x-memory-evidence "
                                              "first)")
        if not isinstance(pages, list) or len(pages) > MAX_PAGES or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p * PAGE < data.size
                for p in pages):
            raise CommandError(GENERIC_ERROR, f"pages: at most {MAX_PAGES} page indexes "
                                              f"within {block}")
        chunks = [data[p * PAGE:(p + 1) * PAGE].tobytes() for p in pages]
        return BlobResult({"pages": [{"index": p, "length": len(c)}
                                     for p, c in zip(pages, chunks)]}, b"".join(chunks))

    def layout(self, arguments: dict[str, Any]) -> Any:
        """The machine's layout, learnt (or read from this host's cache) with this host's
        binary and this peer's command line, as content."""
        from .launch import QemuError
        from .layout import LayoutError, learn_layout

        try:
            self.peer._prepare_machine()
            layout = learn_layout(self.peer.binary, self.peer.command_args(), self.workdir)
        except (LayoutError, QemuError, OSError, RuntimeError) as err:
            raise CommandError(GENERIC_ERROR, f"cannot learn the layout: {err}") from None
        return {"layout": layout.to_json(), "key": layout.key, "probe": layout.probe}


def _digest_kind(arguments: dict[str, Any]) -> str:
    """x-memory-evidence's arguments: nothing, or {"digests": "blake2b"|"harness"}."""
    from harness.realguest.hashed import DIGEST_KINDS

    extra = sorted(set(arguments) - {"digests"})
    kind = arguments.get("digests", "blake2b")
    if extra or not isinstance(kind, str) or kind not in DIGEST_KINDS:
        raise CommandError(GENERIC_ERROR, "x-memory-evidence takes {\"digests\": one of "
                                          f"{sorted(DIGEST_KINDS)}}} only")
    return kind


def _program(spec: QemuSpec) -> Any:
    if spec.program is None:
        return None
    from harness.realguest.image import GuestProgram

    return GuestProgram(**spec.program)


def _qemu_peer(spec: QemuSpec, workdir: Path) -> Any:
    """A QemuPeer as runner/real_guest.make_qemu_peer makes one, on this host."""
    from harness.runner.peers import QemuPeer

    accel, why = spec.accel, ""
    if spec.machine != "none":
        from .machine import resolve_accel

        accel, why = resolve_accel(spec.accel)
    loader = None
    if spec.loader is not None:
        from harness.guest.content import initial_content_array

        loader = workdir / "qemu-source-ram.bin"
        initial_content_array(spec.memory, spec.loader["seed"], spec.loader["fill"],
                              compressible=spec.loader["compressible"]).tofile(loader)
    return QemuPeer(spec.role, workdir, spec.memory, args=list(spec.args), loader=loader,
                    paused=spec.paused, binary=spec.binary, die_with_starter=True,
                    machine=spec.machine, accel=accel if accel != "auto" else "tcg",
                    accel_reason=why, program=_program(spec), new_session=False)


# ---------------------------------------------------------------------- the process
def serve(control: str, spec: QemuSpec, workdir: Path) -> int:
    """Start QEMU (unless probing), serve until `quit`, SIGTERM or QEMU's exit; the status
    QEMU exited with (0 for a probe)."""
    served = Served(spec, workdir)
    signal.signal(signal.SIGTERM, lambda *_: setattr(served, "stop", True))
    if spec.mode == "run":
        served.peer.start()  # raises with QEMU's command line and stderr
    server = ControlServer(control, role=spec.role)
    try:
        served.register(server)
        _loop(served, server)
        if spec.mode == "run" and served.peer.alive():
            served.forward(server)
            server.serve_once(0)
    finally:
        server.close()
        if spec.mode == "run":
            served.peer.close()
    return 0 if spec.mode == "probe" else int(served.peer.exit_code() or 0)


def _loop(served: Served, server: ControlServer) -> None:
    """Wait on the control socket and QMP's (readable: events, or EOF when QEMU went);
    after each wake, forward what QMP has.  QMP's descriptor leaves the poller at EOF."""
    poller = zmq.Poller()
    poller.register(server.socket, zmq.POLLIN)
    qmp = served.peer._qemu.qmp if served.spec.mode == "run" else None
    watched = qmp.fileno() if qmp is not None else None
    if watched is not None:
        poller.register(watched, zmq.POLLIN)
    while not served.stop:
        ready = dict(poller.poll(IDLE_WAIT * 1000))
        if ready.get(server.socket):
            server.serve_once(0)
        if qmp is None:
            continue
        served.forward(server)
        if qmp.eof and watched is not None:  # else EOF would wake the poll at once, forever
            poller.unregister(watched)
            watched = None
        if not served.peer.alive():
            served.forward(server)
            server.serve_once(0)
            return


def _exit_like(code: int) -> None:
    """Exit as QEMU did: its status, or the signal that killed it."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
    os._exit(code if code >= 0 else 128 - code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.qemu.served")
    parser.add_argument("--control", required=True, help="ipc:// address to serve on")
    parser.add_argument("--spec-json", required=True, help="the QemuSpec (agent_qemu.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="qemu-peer: %(message)s")
    try:
        spec = QemuSpec.from_json(args.spec_json)
    except ValueError as err:
        print(f"qemu-peer: {err}", file=sys.stderr)
        sys.exit(2)
    workdir = Path.cwd()
    try:
        code = serve(args.control, spec, workdir)
    except Exception as err:  # noqa: BLE001 - QEMU did not start: said once, status 1
        print(f"qemu-peer: {type(err).__name__}: {err}", file=sys.stderr)
        code = 1
    _copy_stderr(workdir / f"{spec.role}.stderr")
    _exit_like(code)


def _copy_stderr(path: Path, limit: int = 1 << 16) -> None:
    """QEMU's stderr (its last `limit` bytes) into ours: the agent's log of this peer."""
    with contextlib.suppress(OSError), path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - limit))
        sys.stderr.write(f.read().decode(errors="replace"))


if __name__ == "__main__":
    main()
