"""The console's help: one line per command as HMP's `help` prints it, and the details.

Strategy: data, not docstrings: `COMMANDS` maps each command to (arguments, summary,
details); `help` prints `name args -- summary` lines as QEMU's HMP does (hmp-commands.hx),
`help CMD` the line and the details.  The one-line texts of QEMU's own commands are
QEMU 7.2's, the rest say what this console does differently (it drives two peers).
"""

from __future__ import annotations

from harness.scenario.names import (
    CHANNEL_NAMES,
    DIRECTIONS,
    EVENT_NAMES,
    FRAME_NAMES,
    MESSAGE_NAMES,
    NET_FAULT_KINDS,
    PLAIN_ACTIONS,
)

from .hmp import INFO_TOPICS

_INJECT = f"""\
Fire a fault now.  The keys are those of a scenario file's `fault:` (sizes such as 8MiB,
durations such as 300ms or 1.5s), written key=value:

  process faults (on the peer's whole process tree, with psutil):
    inject kill target=destination         SIGKILL
    inject crash target=source             SIGABRT to the peer, SIGKILL to its children
    inject stop target=source duration=1s  SIGSTOP, SIGCONT after the duration
    inject stop target=destination         frozen until `thaw destination` (or quit)
  network faults (need the proxy: --start --proxy, or a run that has one):
    inject net.reset channel=main          reset both sides of the connection
    inject net.blackhole duration=1s       bytes stop moving (for good without duration)
    inject net.delay delay=50ms duration=2s
    inject net.bandwidth rate=1MiB/s
    inject net.drop message=REQ_PAGES      drop the next such message (return path)
    inject net.corrupt frame=RAM_PAGE where=payload
    inject net.truncate frame=PACKAGED

  network kinds: {", ".join(NET_FAULT_KINDS)}
  channel: {" | ".join(CHANNEL_NAMES)} | multifd-N (the multifd channel whose init says id N);
  direction: {" | ".join(DIRECTIONS)}
  message: {", ".join(MESSAGE_NAMES)}
  frame: {", ".join(FRAME_NAMES)}
The proxy reports where it acted (a FAULT event); with no connection through it yet a
network fault waits for the next one."""

_TRIGGER = f"""\
Arm a fault or an action for a moment of the protocol: first the trigger's keys (those of
a scenario file's `on:`), then a fault kind with its keys (as for inject) or an action.

  trigger event=page-request count=10 net.drop message=REQ_PAGES
  trigger command=POSTCOPY_RUN kill target=source
  trigger frame=SECTION_END net.reset channel=main
  trigger bytes=8MiB channel=main net.blackhole duration=1s
  trigger pass=2 migrate_start_postcopy
  trigger status=postcopy-paused peer=destination migrate_recover
  trigger time=1.5s migrate_cancel
  trigger remaining=16MiB stop target=source duration=500ms
  trigger progress=50% net.bandwidth rate=4MiB/s probability=0.5

  on the wire (armed in the proxy, which acts at that very byte, or holds the stream
  until the console has carried out a process fault or an action):
    event={" | ".join(EVENT_NAMES)} [count=N], command=MIG_CMD, frame=NAME [count=N],
    bytes=SIZE [channel=main|return-path]
  watched by the console: pass=N (the source's RAM pass), status=STATUS
    [peer=source|destination] (the next time the peer enters it), time=DURATION (after
    arming), remaining=SIZE (below), progress=PERCENT (of RAM sent once)
  any trigger: probability=0..1
  actions: {", ".join(PLAIN_ACTIONS)} (or with underscores, as HMP spells them)
`trigger` alone lists them (so does `info triggers`); each prints a TRIGGER line when it
fires."""

#: command -> (arguments, summary, details)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "migrate": ("[-d] [-b] [-i] [-r] [uri]",
                "migrate to URI (using -d to not wait for completion)",
                ("Without -d, prints a progress line each second until the migration ends "
                "(completed, failed,\ncancelled, postcopy-paused); Ctrl-C cancels it "
                "(migrate_cancel).  -r resumes a paused\npostcopy migration to URI.  "
                "-b migrates the disks too (block migration), -i incrementally;\n"
                "both for this migration only.  "
                "Without a URI: the proxy's address when there is one, else where the\n"
                "destination listens (a console that started its peers makes it listen "
                "now).")),
    "migrate_cancel": ("", "cancel the current VM migration", ""),
    "migrate_start_postcopy": (
        "", "Followup to a migration command to switch the migration to postcopy mode.",
        ("The postcopy-ram capability must be set on both source and destination before "
        "the\noriginal migration command (migrate_set_capability sets it on both).")),
    "migrate_continue": ("state", "Continue migration from the given paused state",
                         "On the source; state: pre-switchover (pause-before-switchover)."),
    "migrate_pause": ("[source|destination]", "Pause an ongoing migration (postcopy-only)",
                      ""),
    "migrate_recover": ("[uri]", "Continue a paused postcopy migration",
                        ("On both peers: migrate-recover on the destination (uri, default "
                        "tcp:127.0.0.1:0), then\nmigrate -r on the source to where it "
                        "listens (through the proxy when there is one).")),
    "migrate_set_capability": ("capability state",
                               "Enable/Disable the usage of a capability for migration",
                               "Sets it on both peers.  state: on | off."),
    "migrate_set_parameter": ("parameter value", "Set the parameter for migration",
                              ("Sets it on both peers.  Sizes take k/M/G or KiB/MiB/GiB; a "
                              "bare number for max-bandwidth\nis MiB/s (as HMP); durations "
                              "are ms, or take a unit.  Example:\n"
                              "  migrate_set_parameter max-bandwidth 100M")),
    "info": ("[subcommand] [source|destination]", "show various information",
             "Subcommands (on the source unless a peer is named):\n" + "\n".join(
                 f"  info {name:<22} -- {text}" for name, text in INFO_TOPICS.items())),
    "inject": ("fault [key=value...]", "fire a fault now (process or network)", _INJECT),
    "trigger": ("[trigger-keys... fault|action [key=value...]]",
                "arm a fault or an action for a moment of the protocol", _TRIGGER),
    "stop": ("[source|destination]", "stop emulation (the side that has the guest)", ""),
    "cont": ("[source|destination]", "resume emulation (the side that has the guest)", ""),
    "thaw": ("source|destination", "continue a peer frozen by inject stop (SIGCONT)", ""),
    "help": ("[cmd]", "show the help", ""),
    "quit": ("", "quit the console (reaps the peers it started; attached peers stay)",
             "Ctrl-D and Ctrl-C at the prompt do the same."),
}


def summary_lines() -> list[str]:
    return [f"{name} {args} -- {summary}" for name, (args, summary, _) in
            sorted(COMMANDS.items())]


def command_help(name: str) -> list[str]:
    args, summary, details = COMMANDS[name]
    lines = [f"{name} {args} -- {summary}"]
    return lines + (details.splitlines() if details else [])
