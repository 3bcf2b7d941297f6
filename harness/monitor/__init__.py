"""`harness monitor`: an interactive console to break migrations by hand, in HMP's manner.

Strategy: a `Session` (the peers: started here, or attached to from a run's
control.json), a `Console` on the standard library's `cmd` with readline (history in
~/.cache/migration-harness/, completion) for commands, and an `EventPump` thread that
prints events above the prompt and fires the console's triggers.  Each thread has its
own `Link` to the peers.  Whatever ends the console -- quit, Ctrl-D, Ctrl-C at the
prompt, SIGTERM/SIGHUP, an error -- goes through one `finally` that stops the thread,
continues frozen peers and reaps every process the console started.

    harness monitor --start [--memory 256MiB] [--dirty-rate 32MiB/s] [--proxy]
    harness monitor --attach WORKDIR/control.json
    harness monitor --source ADDR --destination ADDR [--proxy-address ADDR]
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

from .hmp import MonitorError
from .session import (
    Link,
    Session,
    StartOptions,
    attach_session,
    read_control_file,
    start_session,
)

__all__ = ["MonitorError", "StartOptions", "attach", "attach_file", "start"]

BANNER = "harness monitor - type 'help' for more information"
HISTORY_LENGTH = 1000


def start(opts: StartOptions) -> int:
    """Start the peers, run the console on them, reap them; the exit code."""
    with _signals_end_the_console():
        session = start_session(opts)
        return _serve(session, opts.seed, configure=True)


def attach_file(path: Path) -> int:
    source, destination, proxy, pids = read_control_file(path)
    return attach(source, destination, proxy, pids)


def attach(source: str, destination: str, proxy: str | None,
           pids: dict[str, int | None] | None = None) -> int:
    with _signals_end_the_console():
        return _serve(attach_session(source, destination, proxy, pids), None, configure=False)


def _serve(session: Session, seed: int | None, configure: bool) -> int:
    from .console import Console
    from .events import EventPump, Output
    from .steps import TriggerBook

    links: list[Link] = []
    pump: EventPump | None = None
    try:
        links.append(Link(session.peers))
        links.append(Link(session.peers))
        out = Output(sys.stdout, redraw=sys.stdin.isatty() and sys.stdout.isatty())
        notes = _events_on(links[0]) if configure else _events_notes(links[0])
        book = TriggerBook(seed)
        pump = EventPump(session, links[1], out, book)
        pump.start()
        console = Console(session, links[0], out, book)
        out.lines([BANNER, *console.peer_lines(), *notes])
        with _history():
            try:
                console.cmdloop()
            except KeyboardInterrupt:
                out.lines(["", "quit (Ctrl-C)"])
        return 0
    finally:
        if pump is not None:
            pump.stop()
        for link in links[:1] if pump is not None else links:
            link.close()
        session.close()


def _events_on(link: Link) -> list[str]:
    """A console that started its peers turns QEMU's `events` capability on (statuses
    arrive as MIGRATION events), as the runner does."""
    for role in ("source", "destination"):
        link.execute(role, "migrate-set-capabilities",
                     {"capabilities": [{"capability": "events", "state": True}]})
    return []


def _events_notes(link: Link) -> list[str]:
    notes = []
    for role in ("source", "destination"):
        caps = link.execute(role, "query-migrate-capabilities") or []
        if not any(c.get("capability") == "events" and c.get("state") for c in caps):
            notes.append(f"note: the 'events' capability is off on the {role}: its status "
                         f"changes will not show (migrate_set_capability events on)")
    return notes


@contextmanager
def _signals_end_the_console() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal went away) end the console like `quit` does."""
    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def history_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "migration-harness" / "monitor_history"


@contextmanager
def _history() -> Iterator[None]:
    """The session's history in the history file, read at start and written at the end."""
    try:
        import readline
    except ImportError:  # pragma: no cover - no readline: a plain console
        yield
        return
    readline.set_completer_delims(" \t\n")
    path = history_path()
    with suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        with suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
