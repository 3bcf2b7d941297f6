"""The `harness` command line (typer).

Strategy: one typer app; each command is a thin shell over a module that does the work
and raises typed errors; this file turns those errors into a one-paragraph message on
stderr and DESIGN.md's exit codes (0 fine, 1 the stream/scenario failed, 2 bad input),
never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import HarnessError, branch_of

from . import __version__
from .bench.command import bench_app
from .hosts.command import hosts_app

app = typer.Typer(
    add_completion=True,
    help="Test QEMU live migration the way it really happens (QEMU 7.2 wire format).",
)


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context,
          version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False
          ) -> None:
    if version:
        typer.echo(f"migration-harness {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:  # `harness` alone: the help, as no_args_is_help did
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


@app.command()
def analyze(
    stream: Annotated[Path, typer.Argument(
        help="A migration stream file (precopy or postcopy).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the analysis as JSON.")] = False,
    extract_ram: Annotated[Path | None, typer.Option(
        "--extract-ram", metavar="DIR",
        help="Write each RAM block's final content to DIR/NAME.bin.")] = None,
    return_path: Annotated[Path | None, typer.Option(
        "--return-path", metavar="FILE",
        help="Also decode a capture of the return path (destination -> source bytes).")] = None,
    preempt: Annotated[Path | None, typer.Option(
        "--preempt", metavar="FILE",
        help="Also decode a capture of the postcopy-preempt channel (requested pages); "
             "default: stream.preempt.bin beside a STREAM named stream.fwd.bin. A "
             "stream.preempt.bin given as STREAM is read with its stream.fwd.bin.")] = None,
    multifd: Annotated[list[Path] | None, typer.Option(
        "--multifd", metavar="FILE",
        help="Also decode a capture of a multifd channel (repeat for each); its pages go "
             "into RAM at the main stream's RAM EOS markers (the SYNC protocol). Default: "
             "the stream.multifd-ID.bin files beside a STREAM named stream.fwd.bin.")] = None,
    layout: Annotated[Path | None, typer.Option(
        "--layout", metavar="FILE",
        help="Describe a real machine's device sections with this layout (a cached layout "
             "JSON, or a precopy stream of the same machine with its VM description); "
             "for postcopy captures, which carry no description.")] = None,
    use_cache: Annotated[bool, typer.Option(
        "--cache/--no-cache", help="Without VM description and --layout, try the cached "
                                   "layouts of the stream's machine.")] = True,
) -> None:
    """Decode a migration stream like QEMU's analyze-migration.py, postcopy included."""
    from .analyze import (
        NotAStream,
        analyze_file,
        check_regular_file,
        check_stream_file,
        preempt_pair,
        summary_lines,
    )
    from .analyze import extract_ram as write_ram
    from .analyze_multifd import multifd_siblings
    from .protocol import ProtocolError
    from .qemu.layout import LayoutError

    stream, preempt = preempt_pair(stream, preempt)
    channels = multifd or (multifd_siblings(stream) if stream.name == "stream.fwd.bin" else [])
    for path, check, what in ((stream, check_stream_file, "not a migration stream: "),
                              (return_path, check_regular_file, "--return-path: "),
                              (preempt, check_regular_file, "--preempt: "),
                              *((c, check_regular_file, "--multifd: ") for c in channels),
                              (layout, check_regular_file, "--layout: ")):
        try:
            if path is not None:
                check(path)
        except FileNotFoundError:
            raise _fail(2, f"harness analyze: {path}: no such file")
        except NotAStream as err:
            raise _fail(2, f"harness analyze: {path}: {what}{err}")
        except OSError as err:
            raise _fail(2, f"harness analyze: {path}: {err.strerror or err}")
    try:
        result = analyze_file(stream, return_path, layout, use_cache, preempt,
                              channels or None)
    except LayoutError as err:
        raise _fail(2, f"harness analyze: --layout {layout}: {err}")
    except ProtocolError as err:
        lines = "\n".join(f"  {line}" for line in err.qemu_lines)
        raise _fail(1, f"harness analyze: {stream}: malformed migration stream at {err}\n"
                       f"a QEMU 7.2 destination would print:\n{lines}")
    except OSError as err:
        raise _fail(2, f"harness analyze: {stream}: {err.strerror or err}")
    if extract_ram is not None:
        try:
            written = write_ram(result, extract_ram)
        except FileExistsError as err:
            raise _fail(2, f"harness analyze: --extract-ram {extract_ram}: {err.filename} "
                           "already exists; not overwritten (give a new or empty directory)")
        except OSError as err:
            raise _fail(2, f"harness analyze: --extract-ram {extract_ram}: {err.strerror or err}")
        if not as_json:
            for path in written:
                typer.echo(f"wrote {path}")
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=1))
    else:
        for line in summary_lines(result):
            typer.echo(line)


@app.command()
def run(
    scenarios: Annotated[list[Path], typer.Argument(
        metavar="SCENARIO|DIR...", help="Scenario files (YAML), or directories of them.")],
    json_path: Annotated[Path | None, typer.Option("--json", metavar="FILE",
                                                   help="Write the JSON report.")] = None,
    junit_path: Annotated[Path | None, typer.Option("--junit", metavar="FILE",
                                                    help="Write a JUnit XML report.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override every scenario's seed.")
                    ] = None,
    record: Annotated[bool, typer.Option(
        "--record", help="Save both directions of each migration stream (stream.fwd.bin, "
                         "stream.rp.bin; with postcopy-preempt through the proxy, "
                         "stream.preempt.bin; with multifd, stream.multifd-ID.bin per "
                         "channel) in the scenario's work directory, which is "
                         "kept.")
                      ] = False,
    repeat: Annotated[int, typer.Option(
        "--repeat", min=1, help="Run each scenario this many times with the same seed and "
                                "report which ones are flaky.")] = 1,
    html_path: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE", help="Write a self-contained HTML report with plots.")
                         ] = None,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="DURATION",
        help="Override every scenario's timeout (e.g. 20s): the deadline at which a run "
             "that has not settled is reported with where each peer was stuck.")] = None,
    peers: Annotated[str | None, typer.Option(
        "--peers", metavar="qemu|harness|ROLE=KIND,...",
        help="Run the scenarios with a real QEMU on both sides (qemu) or one "
             "(source=qemu): on the scenario's machine, or pc running the harness's own x86 "
             "guest when it says none; or with the harness's own peers (harness, "
             "destination=harness...), the differential matrix of scenarios/qemu-7.2. "
             "What changes is in the report; a scenario that cannot apply is skipped with "
             "the reason.")] = None,
    hosts: Annotated[Path | None, typer.Option(
        "--hosts", metavar="INVENTORY",
        help="Run every scenario across the hosts of this inventory file (their agents): "
             "the first two hosts take source and destination unless --place says "
             "(`harness hosts check INVENTORY` checks them first).")] = None,
    place: Annotated[str | None, typer.Option(
        "--place", metavar="source=HOST,destination=HOST[,proxy=HOST]",
        help="With --hosts: the inventory host of each role.")] = None,
) -> None:
    """Run scenarios (files, or directories: every scenario in them).

    A scenario with `hosts:` (agents) runs when its file is named; found in a directory, it
    is skipped (SKIP, with the reason) rather than reaching out to the addresses in it.

    Exit status:
    0: every scenario met its `expect`;
    1: a scenario failed (the migration did not do what it should);
    2: bad input (a scenario file, an option);
    3: none failed, but one could not be carried out (verdict `error`: a peer, agent or
    QEMU missing, the environment failing, the run interrupted)."""
    from .runner.run import RunInterrupted, run_files
    from .scenario import ScenarioError

    for option, path in (("--json", json_path), ("--junit", junit_path), ("--html", html_path)):
        if path is not None and not path.resolve().parent.is_dir():
            raise _fail(2, f"harness run: {option} {path}: no such directory "
                           f"{path.resolve().parent}")
    from .scenario.harness_peers import parse_peer_kinds
    from .scenario.units import parse_duration

    try:
        sides = parse_peer_kinds(peers) if peers is not None else {}
    except ValueError as err:
        raise _fail(2, f"harness run: {err}")
    try:
        deadline = parse_duration(timeout) if timeout is not None else None
    except ValueError as err:
        raise _fail(2, f"harness run: --timeout: {err}")
    if deadline is not None and deadline <= 0:
        raise _fail(2, f"harness run: --timeout {timeout}: expected a duration above 0")
    from .hosts.command import hosts_options

    try:
        inventory, placement = hosts_options(hosts, place)
    except (ValueError, ScenarioError) as err:
        raise _fail(2, f"harness run: {err}")
    try:
        results = run_files(scenarios, json_path=json_path, junit_path=junit_path, seed=seed,
                            record=record, repeat=repeat, html_path=html_path, peers=sides,
                            timeout=deadline, inventory=inventory, placement=placement)
    except ScenarioError as err:
        raise _fail(2, f"harness run: {err}")
    except RunInterrupted as err:  # SIGINT/SIGTERM/SIGHUP: reports written, peers reaped
        raise _fail(3, f"harness run: {err}")
    raise typer.Exit(run_exit_code([r.verdict for r in results]))


def run_exit_code(verdicts: list[str]) -> int:
    """`harness run`'s exit status: 1 when any scenario failed, else 3 when any could not be
    carried out (`error`), else 0."""
    if "fail" in verdicts:
        return 1
    return 3 if "error" in verdicts else 0


@app.command()
def validate(
    scenarios: Annotated[list[Path], typer.Argument(help="Scenario files (YAML).")],
) -> None:
    """Check scenario files only: exit 0 when all are valid, 2 otherwise."""
    from .scenario import ScenarioError, load_scenarios

    try:
        loaded = load_scenarios(scenarios)
    except ScenarioError as err:
        raise _fail(2, f"harness validate: {err}")
    for sc in loaded:
        typer.echo(f"{sc.source_file}: {sc.name}: valid ({len(sc.steps)} steps)")


@app.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (docs/scenario-format.md describes it), for
    editors: `harness schema > scenario.schema.json`."""
    from .scenario.reference import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def report(
    reports: Annotated[list[Path], typer.Argument(
        help="JSON reports written by `harness run --json` (one per run).")],
    html_path: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE", help="Also write the comparison as self-contained HTML, "
                                       "each run's plots side by side.")] = None,
) -> None:
    """Compare runs side by side: a table per scenario; exit 2 on a file that is not one."""
    from .report.compare import ReportError, load_report, print_comparison, run_labels
    from .report.formats import report_console

    try:
        docs = [load_report(path) for path in reports]
    except ReportError as err:
        raise _fail(2, f"harness report: {err}")
    runs = list(zip(run_labels(reports), docs))
    print_comparison(runs, report_console())
    if html_path is not None:
        from .report.html import write_html

        try:
            write_html(html_path, runs)
        except OSError as err:
            raise _fail(2, f"harness report: --html {html_path}: {err.strerror or err}")
        typer.echo(f"wrote {html_path}")


def _peer_options(role: str, control: str | None, guest_json: str | None, memory: str,
                  machine: str,
                  seed: int, fill: float, dirty_rate: str, pattern: str, hotset: str | None,
                  devices: str, fd: list[str], paused: bool, incoming: str | None,
                  qmp: str | None = None,
                  drive: list[str] | None = None,
                  uuid: str | None = None,
                  layout: Path | None = None,
                  objects: list[str] | None = None,
                  replay_devices: Path | None = None):  # type: ignore[no-untyped-def]
    from .control.qmp_socket import parse_qmp_option
    from .guest.disks import parse_drives
    from .migration.peer import PeerOptions, parse_guest_json, parse_uuid
    from .scenario.units import parse_rate, parse_size
    from .transport import parse_fd_args

    given = guest_json is not None
    if guest_json is None:
        import json

        rate = parse_rate(dirty_rate)
        guest_json = json.dumps({
            "machine": machine, "seed": seed, "fill": fill,
            "blocks": [{"name": "ram", "size": parse_size(memory)}],
            "devices": [d for d in devices.split(",") if d],
            "workload": {"dirty_rate": rate, "pattern": pattern,
                         "hotset": parse_size(hotset) if hotset else 0, "seed": seed}
            if rate else None})
    if control is None:  # --qmp alone, as QEMU's -qmp: the control plane stays in-process
        import os

        control = f"inproc://harness-{role}-{os.getpid()}"
    try:
        guest = parse_guest_json(guest_json)
    except ValueError as err:  # built from --memory, --pattern...: name no --guest-json
        raise err if given else ValueError(str(err).removeprefix("--guest-json: ")) from None
    if layout is not None:  # a real machine's blocks and devices (harness.guest.machine)
        from .guest.machine import load_layout, spec_from_layout

        machine_layout = load_layout(layout)
        guest = spec_from_layout(guest, machine_layout)
        print(f"harness {role}: layout {layout}: machine {machine_layout.machine}, "
              f"{len(machine_layout.blocks)} RAM blocks, "
              f"{len(machine_layout.device_names())} device sections", file=sys.stderr)
    replay = None
    if replay_devices is not None:  # a paused QEMU's blocks and devices (harness.qemu.replay)
        from .qemu.replay import load_replay, replay_guest_spec

        replay = load_replay(replay_devices)
        guest = replay_guest_spec(guest, replay)
    return PeerOptions(role=role, control=control, guest=guest, drives=parse_drives(drive),
                       fds=parse_fd_args(fd), autostart=not paused, incoming=incoming,
                       qmp=parse_qmp_option(qmp) if qmp is not None else None,
                       uuid=parse_uuid(uuid) if uuid is not None else None,
                       objects=list(objects or ()), replay=replay)


_CONTROL = typer.Option("--control", metavar="ADDR",
                        help="Control address to serve QMP-shaped commands on (ipc:// or "
                             "tcp://); --qmp alone is enough to drive a peer by hand.")
_GUEST = typer.Option("--guest-json", metavar="JSON", help="The whole guest as JSON.")
_DRIVE = typer.Option("--drive", metavar="id=NAME,file=PATH", help=(
    "A raw disk image for block migration, as QEMU's -drive file=PATH,format=raw,id=NAME "
    "(its size a multiple of 1 MiB); repeatable.  The source reads it, the destination "
    "writes what it receives into it."))
_QMP = typer.Option("--qmp", metavar="unix:PATH",
                    help="Also serve real QMP on this unix socket, as QEMU's "
                         "-qmp unix:PATH,server=on,wait=off (qemu.qmp, qmp-shell).")
_KEYS = typer.Option("--keys", metavar="DIR", help=(
    "CURVE keys from `harness agent keygen DIR` (as an agent's): only the client keys in "
    "DIR/authorized may talk to the control plane.  A non-loopback tcp:// --control needs "
    "--keys or --insecure."))
_INSECURE = typer.Option("--insecure", help=(
    "Serve a non-loopback tcp:// --control without authentication (prints a warning)."))
_ALLOW_EXEC = typer.Option("--allow-exec", help=(
    "Allow exec: and file: migration URIs and x-record, which run commands or write files "
    "here, from control clients (`harness run` passes it to the peers it starts)."))
_OBJECT = typer.Option("--object", metavar="TYPE,id=ID,...", help=(
    "A TLS object as QEMU's -object: tls-creds-x509,id=..,dir=..,endpoint=client|server"
    "[,verify-peer=on|off] or authz-simple,id=..,identity=.. (',,' is a comma); repeatable."))
_UUID = typer.Option("--uuid", metavar="UUID", help="The guest's UUID, as QEMU's -uuid (sent "
                                                    "and checked with validate-uuid).")


def _peer_main(role: str, options: dict) -> None:  # type: ignore[type-arg]
    import logging

    logging.basicConfig(level=logging.WARNING, format=f"harness {role}: %(message)s")
    from .control import check_address

    if options["control"] is None and options["qmp"] is None:
        raise _fail(2, f"harness {role}: give --control ADDR (the runner's control plane) "
                       f"or --qmp unix:PATH (real QMP, as QEMU's -qmp), or both")
    from .control.guard import control_access

    keys, insecure, allow_exec = (options.pop(k) for k in ("keys", "insecure", "allow_exec"))
    try:
        if options["control"] is not None:
            check_address(options["control"])  # --control, before anything starts
        server_keys, warning = control_access(options["control"], keys, insecure)
        opts = _peer_options(role, **options)
    except (ValueError, KeyError) as err:
        raise _fail(2, f"harness {role}: {err}")
    opts.keys, opts.allow_exec = server_keys, allow_exec
    if warning:
        typer.echo(f"harness {role}: {warning}", err=True)
    if role == "source":
        from source.main import run as run_peer
    else:
        from destination.main import run as run_peer
    from .control.errors import ControlError
    from .control.qmp_socket import QmpSocketError
    from .migration.peer import PeerStartError

    try:
        code = run_peer(opts)
    except (QmpSocketError, ControlError, PeerStartError) as err:  # starting: nothing ran yet
        raise _fail(2, f"harness {role}: {err}")
    raise typer.Exit(code)


@app.command()
def source(
    control: Annotated[str | None, _CONTROL] = None,
    guest_json: Annotated[str | None, _GUEST] = None,
    memory: str = "16MiB", machine: str = "none", seed: int = 0, fill: float = 0.0,
    dirty_rate: str = "0", pattern: str = "uniform", hotset: str | None = None,
    devices: str = "timer,globalstate",
    fd: Annotated[list[str], typer.Option(help="An inherited fd for fd: URIs: NAME=N.")] = [],  # noqa: B006
    paused: Annotated[bool, typer.Option(help="Start with the guest stopped (QEMU's -S).")
                      ] = False,
    qmp: Annotated[str | None, _QMP] = None,
    uuid: Annotated[str | None, _UUID] = None,
    drive: Annotated[list[str], _DRIVE] = [],  # noqa: B006
    keys: Annotated[Path | None, _KEYS] = None,
    insecure: Annotated[bool, _INSECURE] = False,
    allow_exec: Annotated[bool, _ALLOW_EXEC] = False,
    obj: Annotated[list[str], _OBJECT] = [],  # noqa: B006
    replay_devices: Annotated[Path | None, typer.Option(
        "--replay-devices", metavar="FILE", help="Migrate as the real machine of this "
        "capture (a paused QEMU's precopy stream, harness.qemu.replay): its machine name, "
        "RAM blocks and ROM contents, and its device sections sent verbatim; the guest's "
        "pages go in pc.ram.  Precopy only.")] = None,
) -> None:
    """Run a migration source peer (what `harness run` starts)."""
    _peer_main("source", {"drive": drive, "control": control, "guest_json": guest_json, "memory": memory,
                              "machine": machine, "seed": seed, "fill": fill, "dirty_rate": dirty_rate,
                              "pattern": pattern, "hotset": hotset, "devices": devices, "fd": fd,
                              "paused": paused, "incoming": None, "qmp": qmp, "uuid": uuid,
                              "keys": keys, "insecure": insecure, "allow_exec": allow_exec,
                              "objects": obj, "replay_devices": replay_devices})


@app.command()
def destination(
    control: Annotated[str | None, _CONTROL] = None,
    guest_json: Annotated[str | None, _GUEST] = None,
    memory: str = "16MiB", machine: str = "none", seed: int = 0,
    devices: str = "timer,globalstate",
    incoming: Annotated[str, typer.Option(help="'defer' (wait for migrate-incoming) or a URI.")
                        ] = "defer",
    fd: Annotated[list[str], typer.Option(help="An inherited fd for fd: URIs: NAME=N.")] = [],  # noqa: B006
    paused: Annotated[bool, typer.Option(help="Do not start the guest after the load.")
                      ] = False,
    qmp: Annotated[str | None, _QMP] = None,
    uuid: Annotated[str | None, _UUID] = None,
    drive: Annotated[list[str], _DRIVE] = [],  # noqa: B006
    keys: Annotated[Path | None, _KEYS] = None,
    insecure: Annotated[bool, _INSECURE] = False,
    allow_exec: Annotated[bool, _ALLOW_EXEC] = False,
    layout: Annotated[Path | None, typer.Option(
        "--layout", metavar="FILE", help="A real machine's layout (MachineLayout JSON, "
        "harness.qemu.layout): the guest gets its machine name, RAM blocks and device "
        "sections, whose values are loaded and kept.")] = None,
    obj: Annotated[list[str], _OBJECT] = [],  # noqa: B006
) -> None:
    """Run a migration destination peer (what `harness run` starts)."""
    _peer_main("destination", {"drive": drive, "control": control, "guest_json": guest_json, "memory": memory,
                                   "machine": machine, "seed": seed, "fill": 0.0, "dirty_rate": "0",
                                   "pattern": "uniform", "hotset": None, "devices": devices, "fd": fd,
                                   "paused": paused, "incoming": incoming, "qmp": qmp,
                                   "uuid": uuid, "keys": keys, "insecure": insecure,
                                   "allow_exec": allow_exec, "layout": layout,
                                   "objects": obj})


@app.command()
def proxy(
    control: Annotated[str, _CONTROL],
    listen: Annotated[str, typer.Option(metavar="URI", help="Where the source connects "
                                        "(tcp:HOST:PORT or unix:PATH; port 0: any).")],
    target: Annotated[str, typer.Option(metavar="URI", help="Where each connection is "
                                        "forwarded (the destination's URI).")],
    seed: Annotated[int, typer.Option(help="Seed of random faults (jitter, corrupt).")] = 0,
    insecure: Annotated[bool, typer.Option("--insecure", help=(
        "Allow a non-loopback tcp:// --control without authentication (whoever reaches it "
        "can cut, corrupt and redirect the stream)."))] = False,
    layout: Annotated[Path | None, typer.Option(
        "--layout", metavar="FILE", help="Frame a real machine's device sections exactly with "
        "this layout (a cached layout JSON, or a precopy stream with its VM description).")
                      ] = None,
    record: Annotated[Path | None, typer.Option(
        "--record", metavar="DIR", help="Keep what it delivers in DIR/stream.fwd.bin and "
        "DIR/stream.rp.bin (new files, for harness analyze).")] = None,
    preempt: Annotated[bool, typer.Option(
        "--preempt", help="postcopy-preempt is on: the connection after each main one is its "
        "preempt channel (requested pages), forwarded as a second connection (recorded "
        "in DIR/stream.preempt.bin).")] = False,
    multifd: Annotated[int, typer.Option(
        "--multifd", metavar="N", min=0, max=255, help="multifd is on with N channels: the N "
        "connections after each main one are its multifd channels, connected to the target "
        "in the order accepted (recorded in DIR/stream.multifd-ID.bin).")] = 0,
    tls: Annotated[Path | None, typer.Option(
        "--tls", metavar="DIR|passthrough", help="Terminate TLS: be the TLS server of the "
        "source (the pair in DIR/tls-destination) and a TLS client of the target "
        "(DIR/tls-source), so faults and triggers act on the plaintext (a tls: scenario's "
        "work directory); `passthrough`: forward the TLS bytes, framed as TLS_RECORDs.")
                   ] = None,
) -> None:
    """Run the fault-injecting proxy between the peers (what `harness run` starts)."""
    from .control.curve import bind_needs_keys
    from .faults.proxy_main import main as run_proxy

    if bind_needs_keys(control) and not insecure:
        raise _fail(2, f"harness proxy: --control {control} is not a loopback address: "
                       f"whoever reaches it can cut, corrupt and redirect the stream "
                       f"(x-proxy-target), so it needs an explicit --insecure")
    if bind_needs_keys(control):
        typer.echo(f"harness proxy: warning: --insecure: the control plane on {control} has "
                   f"no authentication", err=True)
    raise typer.Exit(run_proxy(control, listen, target, seed, layout, record, preempt,
                               multifd, tls))


@app.command()
def monitor(
    start: Annotated[bool, typer.Option("--start", help=(
        "Start a source and a destination peer (and with --proxy the fault proxy) and "
        "drive them; they are reaped when the console ends."))] = False,
    attach: Annotated[Path | None, typer.Option(metavar="CONTROL.JSON", help=(
        "Attach to a live run's peers: the control.json in its work directory (or the "
        "directory).  The peers are left running at the end."))] = None,
    source_addr: Annotated[str | None, typer.Option(
        "--source", metavar="ADDR", help="Attach to this source control address.")] = None,
    destination_addr: Annotated[str | None, typer.Option(
        "--destination", metavar="ADDR", help="Attach to this destination control address.")
                                ] = None,
    proxy_addr: Annotated[str | None, typer.Option(
        "--proxy-address", metavar="ADDR", help="With --source/--destination: the fault "
                                                "proxy's control address.")] = None,
    with_proxy: Annotated[bool, typer.Option("--proxy", help=(
        "With --start: put the fault proxy between the peers (net.* faults, wire "
        "triggers)."))] = False,
    proxy_preempt: Annotated[bool, typer.Option("--proxy-preempt", help=(
        "With --start --proxy: the proxy takes the connection after each main one as its "
        "postcopy-preempt channel (for migrations with that capability)."))] = False,
    proxy_multifd: Annotated[int, typer.Option("--proxy-multifd", metavar="N", min=0, max=255,
                                               help=(
        "With --start --proxy: the proxy takes the N connections after each main one as "
        "multifd channels (for migrations with multifd, multifd-channels N)."))] = 0,
    memory: Annotated[str, typer.Option(help="With --start: guest RAM.")] = "256MiB",
    dirty_rate: Annotated[str, typer.Option(help="With --start: the source guest's dirty "
                                                 "rate (0: idle).")] = "0",
    fill: Annotated[float, typer.Option(help="With --start: share of non-zero pages.")] = 0.5,
    seed: Annotated[int, typer.Option(help="With --start: guest content, workload and "
                                           "random faults.")] = 0,
    workdir: Annotated[Path | None, typer.Option(metavar="DIR", help=(
        "With --start: keep peer logs and control.json here (default: a temporary "
        "directory, removed at the end)."))] = None,
) -> None:
    """An interactive console, in the manner of QEMU's HMP, to break migrations by hand."""
    from . import monitor as console
    from .scenario.units import parse_rate, parse_size

    modes = [start, attach is not None, source_addr is not None or destination_addr is not None]
    if sum(modes) != 1:
        raise _fail(2, "harness monitor: give one of --start, --attach CONTROL.JSON, or "
                       "--source ADDR --destination ADDR")
    try:
        if start:
            if (proxy_preempt or proxy_multifd) and not with_proxy:
                raise _fail(2, "harness monitor: --proxy-preempt and --proxy-multifd go with "
                               "--proxy")
            opts = console.StartOptions(parse_size(memory), parse_rate(dirty_rate), fill, seed,
                                        with_proxy, workdir, proxy_preempt, proxy_multifd)
            code = console.start(opts)
        elif attach is not None:
            code = console.attach_file(attach)
        elif source_addr is None or destination_addr is None:
            raise _fail(2, "harness monitor: --source and --destination go together")
        else:
            code = console.attach(source_addr, destination_addr, proxy_addr)
    except ValueError as err:
        raise _fail(2, f"harness monitor: {err}")
    except (console.MonitorError, OSError) as err:
        raise _fail(1, f"harness monitor: {err}")
    raise typer.Exit(code)


agent_app = typer.Typer(invoke_without_command=True, help=(
    "Run migration peers on this host for a runner elsewhere (`harness agent --bind ...`); "
    "`harness agent keygen DIR` makes its CURVE keys.  An agent runs processes on request: "
    "remote code execution by design, so non-loopback binds need --keys."))
app.add_typer(agent_app, name="agent")


@agent_app.callback()
def agent(
    ctx: typer.Context,
    bind: Annotated[str, typer.Option(metavar="tcp://ADDR:PORT", help=(
        "Where runners connect (port 0: any free port; the address is printed)."))
                    ] = "tcp://127.0.0.1:7340",
    keys: Annotated[Path | None, typer.Option(metavar="DIR", help=(
        "CURVE keys from `harness agent keygen DIR`: only the client keys in DIR/authorized "
        "may talk to the agent.  Required for any non-loopback --bind."))] = None,
    allow_exec: Annotated[bool, typer.Option("--allow-exec", help=(
        "Allow exec: (and file:) migration URIs, which run commands (write files) here."))
                          ] = False,
    orphan_grace: Annotated[float, typer.Option(metavar="SECONDS", help=(
        "Stop a run's peers when its runner is silent this long."))] = 10.0,
    workdir: Annotated[Path | None, typer.Option(metavar="DIR", help=(
        "Where peer logs go (default: a temporary directory, removed at exit)."))] = None,
) -> None:
    """Serve runners: start and reap peers, relay their commands and events."""
    if ctx.invoked_subcommand is not None:
        return
    import logging

    from .control import curve
    from .control.agent import main as run_agent

    logging.basicConfig(level=logging.WARNING, format="harness agent: %(message)s")
    try:
        curve.check_bind(bind)
    except ValueError as err:
        raise _fail(2, f"harness agent: {err}")
    if keys is None and curve.bind_needs_keys(bind):
        raise _fail(2, f"harness agent: --bind {bind} is not a loopback address: an agent "
                       f"starts processes for whoever reaches it, so it needs CURVE keys "
                       f"(harness agent keygen DIR, then --keys DIR)")
    try:
        server_keys = curve.load_server_keys(keys) if keys is not None else None
    except curve.KeyError_ as err:
        raise _fail(2, f"harness agent: --keys: {err}")
    if orphan_grace <= 0:
        raise _fail(2, "harness agent: --orphan-grace must be positive")
    try:
        code = run_agent(bind, server_keys, allow_exec, orphan_grace, workdir,
                         lambda line: print(line, flush=True))
    except OSError as err:
        raise _fail(2, f"harness agent: {err}")
    raise typer.Exit(code)


@agent_app.command("keygen")
def agent_keygen(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write the keys.")],
) -> None:
    """Write a server and a client CURVE keypair (secret files 0600) and authorize the client."""
    from .control import curve

    try:
        written = curve.keygen(directory)
    except (curve.KeyError_, OSError) as err:
        raise _fail(2, f"harness agent keygen: {err}")
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"agent host: harness agent --bind tcp://ADDR:PORT --keys {directory}  "
               f"(needs server.key_secret and authorized/); runner host: keys: {directory} "
               f"on the host in the scenario, or {curve.KEYS_ENV}={directory} (needs "
               f"client.key_secret and server.key)")


app.add_typer(hosts_app, name="hosts")  # harness hosts check (harness/hosts/command.py)

app.add_typer(bench_app, name="bench")  # harness bench (harness/bench/command.py)


def _click_error() -> type[Exception]:
    """click's error class (typer 0.26 carries its own copy of click)."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    return ClickException


def main() -> None:
    """`harness`: a bad option or argument is one line naming the command (exit 2), as every
    error of ours is, not click's usage box."""
    error = _click_error()
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
    except error as err:
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else "harness"
        print(f"{where}: {err.format_message()} (see {where} --help)", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except HarnessError as err:  # one a command did not turn into its own line: still one
        print(f"harness: {err}", file=sys.stderr)
        sys.exit(BRANCH_EXIT[branch_of(err)])
    sys.exit(code if isinstance(code, int) else 0)


#: the exit status of an error no command handled, by its branch (harness/errors.py):
#: bad input 2, a failed migration protocol 1, what could not be carried out 3
BRANCH_EXIT = {"scenario": 2, "protocol": 1, "control": 3, "environment": 3, "internal": 3}
