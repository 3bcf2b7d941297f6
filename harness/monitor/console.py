"""The console: HMP's migration commands, plus `inject` and `trigger`, on `cmd.Cmd`.

Strategy: one `do_*` per command, each a few lines over `actions`, `hmp` and `steps`;
refusals travel as `MonitorError` / `UsageError` and are printed as HMP prints them
("Error: ...", or the usage hint), never as a traceback, and the console goes on.
Completion is per command (`complete_*`) over the names QEMU and the scenario files use.
Commands run in the main thread on its own `Link`; events are the event thread's
(harness.monitor.events), which the console tells when the prompt is showing.
"""

from __future__ import annotations

import cmd
import shlex
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from harness.control import ControlError
from harness.runner.steps import wire_trigger
from harness.scenario import steps as model
from harness.scenario.names import (
    CHANNEL_NAMES,
    DIRECTIONS,
    EVENT_NAMES,
    FAULT_KINDS,
    FRAME_NAMES,
    FRAME_PARTS,
    LINK_FAULT_KINDS,
    MESSAGE_NAMES,
    MIG_CMD_NAMES,
    MIGRATION_STATUSES,
    PEER_NAMES,
)

from . import actions, hmp, steps
from .events import Output, short_id
from .helptext import COMMANDS, command_help, summary_lines
from .hmp import MonitorError, UsageError
from .session import Link, Session

PROMPT = "(harness) "
WAIT_LIMIT = 600.0  # s a synchronous `migrate` waits before it goes on detached
CANCEL_WAIT = 10.0
#: statuses a synchronous `migrate` stops waiting at (it cannot leave them by itself)
ENDED = frozenset({"completed", "failed", "cancelled", "postcopy-paused"})
#: completion of `key=` values
VALUES: dict[str, tuple[str, ...]] = {
    "channel": CHANNEL_NAMES, "direction": DIRECTIONS, "target": PEER_NAMES,
    "peer": PEER_NAMES, "message": MESSAGE_NAMES, "frame": FRAME_NAMES,
    "where": FRAME_PARTS, "event": EVENT_NAMES, "command": MIG_CMD_NAMES,
    "status": MIGRATION_STATUSES,
}
_FAULTS = tuple(k for k in FAULT_KINDS if k not in LINK_FAULT_KINDS)


class Console(cmd.Cmd):
    prompt = PROMPT
    identchars = cmd.Cmd.identchars + "-"

    def __init__(self, session: Session, link: Link, out: Output,
                 book: steps.TriggerBook) -> None:
        super().__init__()
        self.session, self.link, self.out, self.book = session, link, out, book
        self.out.prompt = self.prompt
        self._injected = 0

    # ------------------------------------------------------------------ the loop
    def preloop(self) -> None:
        self.out.at_prompt = True

    def precmd(self, line: str) -> str:
        self.out.at_prompt = False
        return line

    def postcmd(self, stop: bool, line: str) -> bool:
        self._discard_events()
        self.out.at_prompt = not stop
        return stop

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except MonitorError as err:
            self.out.lines([f"Error: {err}"])
        except UsageError as err:
            self.out.lines(err.lines())
        except KeyboardInterrupt:
            self.out.lines(["", "(interrupted)"])
        except Exception as err:  # noqa: BLE001 - a bug of ours: said, never a traceback
            self.out.lines([f"Error: internal error: {type(err).__name__}: {err}"])
        return False

    def emptyline(self) -> bool:
        return False  # unlike cmd's default, an empty line does not repeat the last one

    def default(self, line: str) -> None:
        self.out.lines([f"unknown command: '{line.split()[0]}'"])

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return _matching(COMMANDS, text)

    def _discard_events(self) -> None:
        """Our link gets every event too; the event thread prints them, we drop ours."""
        for client in self.link.clients.values():
            with suppress(ControlError):  # a closed or lost client has none to drop
                client.events()

    # ------------------------------------------------------------------ quit, help
    def do_quit(self, arg: str) -> bool:
        return True

    do_q = do_quit

    def do_EOF(self, arg: str) -> bool:
        self.out.lines([""])
        return True

    def do_help(self, arg: str) -> None:
        name = arg.strip()
        if not name:
            self.out.lines(summary_lines())
        elif name in COMMANDS:
            self.out.lines(command_help(name))
        else:
            self.out.lines([f"unknown command: '{name}'"])

    def complete_help(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return self.completenames(text)

    # ------------------------------------------------------------------ info
    def do_info(self, arg: str) -> None:
        words = _words("info", arg)
        if not words:
            self.out.lines(command_help("info")[1:])
            return
        topic, peer = words[0], _peer("info", words[1:], "source")
        show = getattr(self, f"_info_{topic}", None)
        if topic not in hmp.INFO_TOPICS or show is None:
            self.out.lines([f"unknown command: 'info {topic}'"])
            return
        self.out.lines(show(peer))

    def _info_migrate(self, peer: str) -> list[str]:
        return hmp.format_info_migrate(self.link.execute(peer, "query-migrate") or {})

    def _info_migrate_capabilities(self, peer: str) -> list[str]:
        return hmp.format_capabilities(self.link.execute(peer, "query-migrate-capabilities"))

    def _info_migrate_parameters(self, peer: str) -> list[str]:
        return hmp.format_parameters(self.link.execute(peer, "query-migrate-parameters"))

    def _info_status(self, peer: str) -> list[str]:
        return [hmp.format_status(self.link.execute(peer, "query-status"))]

    def _info_peers(self, peer: str) -> list[str]:
        return self.peer_lines()

    def peer_lines(self) -> list[str]:
        lines = []
        for role, info in self.session.peers.items():
            client = self.link.clients.get(role)
            state = client.state.value if client is not None else "not connected"
            lines.append(f"{role}: {info.address} pid {info.pid} ({state})")
        if self.session.workdir is not None:
            lines.append(f"work directory: {self.session.workdir} (logs, control.json)")
        return lines

    def _info_proxy(self, peer: str) -> list[str]:
        info = self.link.execute("proxy", "query-proxy")
        sessions = info.get("sessions") or {}
        lines = [f"listen: {info.get('listen')}", f"target: {info.get('target')}",
                 (f"sessions: {sessions.get('accepted', 0)} accepted, "
                 f"{sessions.get('active', 0)} active")]
        for flow, counts in (info.get("bytes") or {}).items():
            lines.append(f"bytes {flow}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += [f"armed: {short_id(str(a.get('id')), self.book)} {a.get('trigger')} "
                  f"{a.get('fault')}" for a in info.get("armed") or []]
        lines += [f"fault: {short_id(str(f.get('id')), self.book)} {f.get('kind')} "
                  f"{f.get('flow')} offset {f.get('offset')}" for f in info.get("faults") or []]
        return lines

    def _info_triggers(self, peer: str) -> list[str]:
        lines = []
        for t in self.book.all():
            where = " (in the proxy)" if t.wire else ""
            lines.append(f"{t.name}: on {t.describe()}: {t.effect.describe()}{where} "
                         f"[{t.state}]" + (f" {t.result}" if t.result else ""))
        return lines or ["no triggers"]

    def complete_info(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        position = len(line[:begidx].split())
        return _matching(hmp.INFO_TOPICS if position == 1 else PEER_NAMES, text)

    # ------------------------------------------------------------------ migrate
    def do_migrate(self, arg: str) -> None:
        words = _words("migrate", arg)
        flags = {w for w in words if w.startswith("-")}
        rest = [w for w in words if not w.startswith("-")]
        if flags - {"-d", "-r", "-b", "-i"}:
            raise UsageError("migrate", f"migrate: unknown option {min(flags)}")
        if len(rest) > 1:
            raise UsageError("migrate", "migrate: extraneous characters at the end of line")
        uri = rest[0] if rest else None
        if "-r" in flags:
            if uri is None:
                raise UsageError("migrate", "migrate: -r needs the URI to resume to")
            self.link.execute("source", "migrate", {"uri": uri, "resume": True})
            return
        target = actions.migrate_uri(self.link, self.session, uri)
        # hmp_migrate: -b full block migration, -i incremental (both for this one only)
        block = {name: True for flag, name in (("-b", "blk"), ("-i", "inc")) if flag in flags}
        self.link.execute("source", "migrate", {"uri": target, **block})
        if uri is None:
            via = "the proxy" if self.link.has("proxy") else "the destination"
            self.out.lines([f"migrating to {target} ({via})"])
        if "-d" not in flags:
            self._wait_migration()

    def _wait_migration(self) -> None:
        """As hmp_migrate_status_cb: query-migrate at once, then each second, until the
        migration ends; Ctrl-C cancels it (migrate_cancel) and returns to the prompt."""
        deadline = time.monotonic() + WAIT_LIMIT
        try:
            while True:
                info = self.link.execute("source", "query-migrate", timeout=5) or {}
                status = info.get("status", "setup")
                if status in ENDED:
                    self._migration_ended(info)
                    return
                if status == "pre-switchover":  # the prompt back: migrate_continue is typed there
                    self.out.lines([hmp.progress_line(info), (
                        "Migration paused before switchover: migrate_continue pre-switchover "
                        "goes on")])
                    return
                self.out.lines([hmp.progress_line(info)])
                self._discard_events()
                if time.monotonic() > deadline:
                    raise MonitorError(f"the migration is still {status} after "
                                       f"{WAIT_LIMIT:g} s; it goes on detached")
                time.sleep(1.0)
        except KeyboardInterrupt:
            self.out.lines(["", "Ctrl-C: cancelling the migration (migrate_cancel)"])
            self.link.execute("source", "migrate_cancel")
            self._await_end()

    def _migration_ended(self, info: dict[str, Any]) -> None:
        lines = [hmp.progress_line(info)]
        if info.get("error-desc"):
            lines.append(f"Error: {info['error-desc']}")
        self.out.lines(lines)

    def _await_end(self) -> None:
        deadline = time.monotonic() + CANCEL_WAIT
        while True:
            info = self.link.execute("source", "query-migrate", timeout=5) or {}
            status = info.get("status", "none")
            if status in ENDED or time.monotonic() > deadline:
                self.out.lines([f"Migration status: {status}"])
                return
            time.sleep(0.05)

    def do_migrate_cancel(self, arg: str) -> None:
        _no_args("migrate_cancel", arg)
        self.link.execute("source", "migrate_cancel")

    def do_migrate_start_postcopy(self, arg: str) -> None:
        _no_args("migrate_start_postcopy", arg)
        self.link.execute("source", "migrate-start-postcopy")

    def do_migrate_continue(self, arg: str) -> None:
        """hmp_migrate_continue: the state is parsed as HMP parses it (its words)."""
        words = _words("migrate_continue", arg)
        if not words:
            raise UsageError("migrate_continue", "migrate_continue: string expected")
        if len(words) > 1:
            raise UsageError("migrate_continue",
                             "migrate_continue: extraneous characters at the end of line")
        if words[0] not in MIGRATION_STATUSES:
            raise MonitorError(f"invalid parameter value: {words[0]}")
        self.link.execute("source", "migrate-continue", {"state": words[0]})

    def do_migrate_pause(self, arg: str) -> None:
        self.link.execute(_peer("migrate_pause", _words("migrate_pause", arg), "source"),
                          "migrate-pause")

    def do_migrate_recover(self, arg: str) -> None:
        words = _words("migrate_recover", arg)
        if len(words) > 1:
            raise UsageError("migrate_recover",
                             "migrate_recover: extraneous characters at the end of line")
        self.out.lines([actions.recover(self.link, self.session, words[0] if words else None)])

    # ------------------------------------------------------------------ configuration
    def do_migrate_set_capability(self, arg: str) -> None:
        words = _words("migrate_set_capability", arg)
        if not words:
            raise UsageError("migrate_set_capability", "migrate_set_capability: string expected")
        if len(words) > 2:
            raise UsageError("migrate_set_capability",
                             "migrate_set_capability: extraneous characters at the end of line")
        state = hmp.capability_state("migrate_set_capability", words[0],
                                     words[1] if len(words) > 1 else "")
        self._on_both("migrate-set-capabilities",
                      {"capabilities": [{"capability": words[0], "state": state}]})

    def do_migrate_set_parameter(self, arg: str) -> None:
        words = _words("migrate_set_parameter", arg)
        if len(words) < 2:
            raise UsageError("migrate_set_parameter", "migrate_set_parameter: string expected")
        if len(words) > 2:
            raise UsageError("migrate_set_parameter",
                             "migrate_set_parameter: extraneous characters at the end of line")
        self._on_both("migrate-set-parameters", hmp.parameter_arguments(words[0], words[1]))

    def _on_both(self, command: str, arguments: dict[str, Any]) -> None:
        """Source first; a refusal names the peer that refused."""
        for role in ("source", "destination"):
            try:
                self.link.execute(role, command, arguments)
            except MonitorError as err:
                raise MonitorError(f"{role}: {err}") from None

    def complete_migrate_set_capability(self, text: str, line: str, begidx: int,
                                        endidx: int) -> list[str]:
        position = len(line[:begidx].split())
        return _matching(hmp.CAPABILITIES if position == 1 else ("on", "off"), text)

    def complete_migrate_set_parameter(self, text: str, line: str, begidx: int,
                                       endidx: int) -> list[str]:
        if len(line[:begidx].split()) != 1:
            return []
        return _matching(hmp.PARAMETERS, text)

    # ------------------------------------------------------------------ guest
    def do_stop(self, arg: str) -> None:
        words = _words("stop", arg)
        peer = _peer("stop", words, "") or actions.guest_side(self.link)
        self.link.execute(peer, "stop")

    def do_cont(self, arg: str) -> None:
        words = _words("cont", arg)
        peer = _peer("cont", words, "") or actions.guest_side(self.link)
        self.link.execute(peer, "cont")

    def do_thaw(self, arg: str) -> None:
        peer = _peer("thaw", _words("thaw", arg), "")
        if not peer:
            raise UsageError("thaw", "thaw: which peer? (source or destination)")
        pids = self.session.frozen.thaw(peer)
        if not pids:
            raise MonitorError(f"the {peer} is not frozen by this console")
        self.out.event(f"monitor THAW target={peer} pids={','.join(map(str, pids))}")

    def _complete_peer(self, text: str, *ignored: Any) -> list[str]:
        return _matching(PEER_NAMES, text)

    complete_stop = complete_cont = complete_thaw = complete_migrate_pause = _complete_peer

    # ------------------------------------------------------------------ faults
    def do_inject(self, arg: str) -> None:
        effect = steps.parse_inject(_words("inject", arg))
        self._injected += 1
        text = actions.carry_out(effect, self.link, self.session, f"i{self._injected}")
        if text.startswith("FAULT"):
            self.out.event(f"monitor {text}")
        else:
            self.out.lines([text])

    def do_trigger(self, arg: str) -> None:
        words = _words("trigger", arg)
        if not words:
            self.out.lines(self._info_triggers(""))
            return
        on, effect = steps.parse_trigger(words)
        trigger = self.book.new(on, effect)
        net = effect.fault if isinstance(effect.fault, model.NetFault) else None
        if (trigger.wire or net is not None) and not self.link.has("proxy"):
            raise MonitorError("this trigger needs the fault proxy between the peers: "
                               "start the console with --start --proxy")
        if trigger.wire:
            trigger.proxy_id = actions.proxy_id(trigger.name)
            self.link.execute("proxy", "x-proxy-arm", {
                "id": trigger.proxy_id, "trigger": wire_trigger(on),
                "probability": on.probability,
                "fault": net.model_dump(mode="json", exclude_none=True) if net else None,
                "hold": net is None})
        self.book.add(trigger)
        where = " (in the proxy)" if trigger.wire else ""
        self.out.lines([(f"{trigger.name}: armed{where}: on {trigger.describe()}: "
                        f"{effect.describe()}")])

    def complete_inject(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        words = line[:begidx].split()[1:]
        if not words:
            return _matching(_FAULTS, text)
        return _key_values(text, steps.FAULT_KEYS.get(words[0], ()))

    def complete_trigger(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        words = line[:begidx].split()[1:]
        head = next((w for w in words if "=" not in w), None)
        if head is not None:
            return _key_values(text, steps.FAULT_KEYS.get(head, ()))
        heads = [*_FAULTS, *steps.ACTIONS] if words else []
        return _key_values(text, steps.TRIGGER_KEYS) + _matching(heads, text)


def _words(command: str, arg: str) -> list[str]:
    try:
        return shlex.split(arg)
    except ValueError as err:
        raise UsageError(command, f"{command}: {err}") from None


def _no_args(command: str, arg: str) -> None:
    if arg.strip():
        raise UsageError(command, f"{command}: extraneous characters at the end of line")


def _peer(command: str, words: list[str], default: str) -> str:
    if len(words) > 1:
        raise UsageError(command, f"{command}: extraneous characters at the end of line")
    if not words:
        return default
    if words[0] not in PEER_NAMES:
        raise UsageError(command, f"{command}: {words[0]!r} is not a peer (source or "
                                  f"destination)")
    return words[0]


def _matching(names: Iterable[str], text: str) -> list[str]:
    """Completions of a word, each with the space that ends it (Python's readline module
    appends none); `key=` completions go without, so the value follows."""
    return [f"{name} " for name in names if name.startswith(text)]


def _key_values(text: str, keys: tuple[str, ...]) -> list[str]:
    """`key=` for the keys, or `key=value` for the values of the key being typed."""
    key, sep, value = text.partition("=")
    if sep:
        return [f"{key}={v} " for v in VALUES.get(key, ()) if v.startswith(value)]
    return [f"{k}=" for k in keys if k.startswith(text)]


__all__ = ["Console"]
