"""`harness proxy`: the fault-injecting proxy as a process, driven like a peer.

Strategy: the process is a `Proxy` plus a `ControlServer` on the runner's address,
answering QMP-shaped commands (as `harness.migration.peer` does for the peers) and
forwarding the proxy's events to every client.  The main thread only serves commands;
the proxy runs in its own threads.  `quit`, SIGTERM and SIGINT lead to the same end: the
serving loop stops, the proxy closes every session and joins its threads, the control
socket goes.

Commands:
    x-proxy-arm {"id": str, "trigger": TRIGGER|null, "fault": NETFAULT|null, "hold": bool,
                 "probability"?: number}
    x-proxy-release {"id": str}
    x-proxy-target {"uri": str}
    x-proxy-layout {"file": str|null}   frame new streams with this machine layout (a layout
                                        JSON or a precopy stream with its vmdesc; null: none)
    x-proxy-layout {"layout": {...}|null}  the same, the layout inline (MachineLayout.to_json;
                                        what a runner sends a proxy on another host)
    query-proxy
    quit
Events:
    WIRE {id, trigger, session, channel, offset, frame, count, held}   a trigger matched
    FAULT {id, kind, channel, direction, flow, session, offset, frame, detail}  it acted
    SESSION {n, event: accepted|closed, reason[, channel: main|preempt with --preempt,
             main|multifd with --multifd]}
    SESSION {n, event: identified, channel: multifd-ID, main}   (--multifd) its init's id
    HOLD_RELEASED {id, by: x-proxy-release|deadline, held}
    FRAMING_LOST {session, channel, message}
    LAYOUT_LEARNED {key, devices}   a stream's vmdesc added to the layout (and its cache)
    PROXY_ERROR {session, error}
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.control import CommandError, ControlError, ControlServer
from harness.protocol import RemoteProtocolError
from harness.qemu.layout import MAX_DEPTH, MAX_VMDESC_BYTES, LayoutError, MachineLayout, read_layout

from .proxy import Proxy
from .tls_endpoint import proxy_tls

__all__ = ["ProxyProcess", "main"]

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0002  # s: how long a pump waits for the GIL at most
MAX_INLINE_LAYOUT = MAX_VMDESC_BYTES + 65536  # as a layout file (qemu/layout.read_layout)


class ProxyProcess:
    """The proxy and its control server; `run()` serves until quit or SIGTERM."""

    def __init__(self, control: str, listen: str, target: str, seed: int = 0,
                 layout: MachineLayout | None = None, record: Path | None = None,
                 preempt: bool = False, multifd: int = 0, tls: Path | None = None) -> None:
        self.server = ControlServer(control, role="proxy")
        self.stop = threading.Event()
        try:
            terminate = proxy_tls(tls)  # --tls DIR: terminated here; passthrough
            self.proxy = Proxy(listen, target, seed=seed, emit=self.server.emit, layout=layout,
                               record=record, preempt=preempt, multifd=multifd, tls=terminate)
        except BaseException:
            self.server.close()
            raise
        for name, handler in (("x-proxy-arm", self._arm), ("x-proxy-release", self._release),
                              ("x-proxy-target", self._target), ("x-proxy-layout", self._layout),
                              ("query-proxy", self._query), ("quit", self._quit)):
            self.server.register(name, _plain_errors(handler))

    def run(self) -> int:
        def on_signal(*_: object) -> None:
            self.stop.set()
            self.server.wakeup()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # a page request must not wait 5 ms (Python's default) for the GIL behind the
        # thread forwarding the bulk of the stream
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            self.proxy.start()
            self.server.serve_forever(self.stop)
        finally:
            try:
                self.proxy.close()
                self.server.serve_once(0)  # the last events (sessions closed) go out
            finally:
                self.server.close()
        return 0

    # ------------------------------------------------------------------ commands
    def _arm(self, args: dict[str, Any]) -> Any:
        _only(args, "x-proxy-arm", {"id", "trigger", "fault", "hold", "probability"})
        hold = args.get("hold", False)
        if not isinstance(hold, bool):
            raise CommandError("GenericError", "x-proxy-arm: hold must be true or false")
        probability = args.get("probability")
        if probability is not None and (isinstance(probability, bool)
                                        or not isinstance(probability, (int, float))):
            raise CommandError("GenericError",
                               "x-proxy-arm: probability must be a number between 0 and 1")
        for key in ("trigger", "fault"):
            if args.get(key) is not None and not isinstance(args[key], dict):
                raise CommandError("GenericError", f"x-proxy-arm: {key} must be an object or null")
        if probability is not None and args.get("trigger") is None:
            raise ValueError("x-proxy-arm: probability applies to a trigger (none given)")
        return self.proxy.arm(args.get("id", ""), args.get("trigger"), args.get("fault"), hold,
                              probability)

    def _release(self, args: dict[str, Any]) -> Any:
        _only(args, "x-proxy-release", {"id"})
        return self.proxy.release(str(args.get("id", "")))

    def _target(self, args: dict[str, Any]) -> Any:
        _only(args, "x-proxy-target", {"uri"})
        uri = args.get("uri")
        if not isinstance(uri, str):
            raise CommandError("GenericError", "x-proxy-target needs uri (a tcp: or unix: URI)")
        return self.proxy.set_target(uri)

    def _layout(self, args: dict[str, Any]) -> Any:
        _only(args, "x-proxy-layout", {"file", "layout"})
        if "file" in args and "layout" in args:
            raise ValueError("x-proxy-layout: give file or layout, not both")
        if "layout" in args:  # inline: a proxy on another host than the runner's
            doc = args["layout"]
            return {"layout": self.proxy.set_layout(None if doc is None else inline_layout(doc))}
        path = args.get("file")
        if path is not None and (not isinstance(path, str) or not 0 < len(path) < 4096):
            raise CommandError("GenericError", "x-proxy-layout: file must be a path or null")
        return {"layout": self.proxy.set_layout(None if path is None else load_layout(path))}

    def _query(self, args: dict[str, Any]) -> Any:
        _only(args, "query-proxy", set())
        return self.proxy.query()

    def _quit(self, args: dict[str, Any]) -> Any:
        self.stop.set()
        return {}


def _only(args: dict[str, Any], command: str, allowed: set[str]) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise ValueError(f"{command}: unexpected argument {extra[0]!r} "
                         f"(it takes: {', '.join(sorted(allowed)) or 'nothing'})")


def _plain_errors(handler: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    def wrapped(args: dict[str, Any]) -> Any:
        try:
            return handler(args or {})
        except ValueError as err:
            raise CommandError("GenericError", str(err)) from None

    return wrapped


def load_layout(path: str | Path) -> MachineLayout:
    """A machine layout from a file (ValueError naming the file when it is none)."""
    try:
        return read_layout(Path(path))
    except (LayoutError, RemoteProtocolError) as err:
        raise ValueError(f"layout {path}: {err}") from None
    except OSError as err:
        raise ValueError(f"layout {path}: {err.strerror or err}") from None


def inline_layout(doc: Any) -> MachineLayout:
    """A machine layout given inline (`x-proxy-layout {"layout": {...}}`, the document
    of `MachineLayout.to_json`), bounded like a layout file: nesting first (iteratively),
    then size, then `MachineLayout.from_json`'s checks.  ValueError saying what is off."""
    todo: list[tuple[Any, int]] = [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"x-proxy-layout: the layout nests deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        todo += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]
    size = len(json.dumps(doc))
    if size > MAX_INLINE_LAYOUT:
        raise ValueError(f"x-proxy-layout: a layout of {size} bytes exceeds {MAX_INLINE_LAYOUT}")
    try:
        return MachineLayout.from_json(doc)
    except LayoutError as err:
        raise ValueError(f"x-proxy-layout: {err}") from None


def main(control: str, listen: str, target: str, seed: int = 0,
         layout: str | Path | None = None, record: Path | None = None,
         preempt: bool = False, multifd: int = 0, tls: Path | None = None) -> int:
    """Run the proxy process; 0 after quit/SIGTERM, 2 when it cannot start.  `preempt`:
    postcopy-preempt is on, each main connection is followed by its preempt channel;
    `multifd`: N multifd channels follow each main connection."""
    logging.basicConfig(level=logging.WARNING, format="harness proxy: %(message)s")
    try:
        machine = None if layout is None else load_layout(layout)
        process = ProxyProcess(control, listen, target, seed, machine, record, preempt,
                               multifd, tls)
    except (ValueError, OSError, ControlError) as err:
        log.error("cannot start: %s", err)
        return 2
    return process.run()
