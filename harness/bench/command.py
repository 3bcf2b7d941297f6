"""`harness bench`: the benchmarks' command line (mounted by harness/cli.py).

Strategy: thin shells, as harness/hosts/command.py: each command parses its options, runs
one module of this package and prints its figures (and writes them as JSON); bad input
is one line and exit 2, a run that could not be carried out one line and exit 1 (3 when
the pure-Python path was asked for and cannot be had), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["bench_app"]


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


bench_app = typer.Typer(help="Benchmarks, each against a baseline measured in the same "
                                "run.  Without a command: all of them (`bench all`).")

JsonOption = Annotated[Path | None, typer.Option("--json", metavar="FILE",
                                                 help="Write the figures as JSON.")]


def _bench_out(figures: list[Any], json_path: Path | None) -> None:
    from .figures import print_table, write_json

    print_table(figures)
    if json_path:
        write_json(figures, json_path)


def _bench_json_dir(command: str, json_path: Path | None) -> None:
    if json_path is not None and not json_path.resolve().parent.is_dir():
        raise _fail(2, f"harness bench {command}: --json {json_path}: no such directory "
                       f"{json_path.resolve().parent}")


def _bench_parse(command: str, parse: Any, text: str) -> int:
    try:
        return int(parse(text))
    except ValueError as err:
        raise _fail(2, f"harness bench {command}: {err}")


@bench_app.callback(invoke_without_command=True)
def bench_default(ctx: typer.Context) -> None:
    """Benchmarks; without a command, `bench all` with its defaults."""
    if ctx.invoked_subcommand is None:
        bench_all()


NoExtensionsOption = Annotated[bool, typer.Option(
    "--no-extensions", help="Set HARNESS_NO_EXTENSIONS=1 for this run (this process and "
    "every peer it starts): the pure-Python page path, to compare with the C one.")]
RepeatOption = Annotated[int, typer.Option(
    min=1, help="Interleaved rounds of each baseline and figure (medians compared).")]


def _bench_no_extensions(command: str, wanted: bool) -> None:
    if wanted:
        from .suite import no_extensions

        try:
            no_extensions()
        except RuntimeError as err:
            raise _fail(3, f"harness bench {command}: {err}")


@bench_app.command("all")
def bench_all(
    precopy_size: Annotated[str, typer.Option(help="Guest RAM of the precopy benchmark.")
                            ] = "1GiB",
    zero_size: Annotated[str, typer.Option(help="Guest RAM of the all-zero guest.")] = "8GiB",
    postcopy_size: Annotated[str, typer.Option(help="Guest RAM of the postcopy benchmark.")
                             ] = "256MiB",
    codec_size: Annotated[str, typer.Option(help="RAM decoded by the codec benchmark.")
                          ] = "256MiB",
    qemu_guest_size: Annotated[str, typer.Option(
        help="RAM of the QEMU -> QEMU postcopy guest (pc).")] = "64MiB",
    repeat: RepeatOption = 5,
    push: Annotated[list[str], typer.Option(
        help="Postcopy background push rates (0: unlimited); repeatable.")
                    ] = ["0", "64MiB/s"],  # noqa: B006
    no_extensions: NoExtensionsOption = False,
    json_path: JsonOption = None,
) -> None:
    """Every benchmark: precopy vs raw stream and QEMU, the zero guest and its memory,
    decode vs memcpy, postcopy latency vs a raw round trip (with postcopy-preempt too),
    QEMU -> QEMU postcopy latency; one table."""
    from harness.scenario.units import parse_rate, parse_size

    from . import suite

    _bench_json_dir("all", json_path)
    _bench_no_extensions("all", no_extensions)
    try:
        sizes = suite.Sizes(parse_size(precopy_size), parse_size(zero_size),
                            parse_size(postcopy_size), repeat,
                            pushes=tuple(parse_rate(p) for p in push),
                            codec=parse_size(codec_size),
                            qemu_guest=parse_size(qemu_guest_size))
    except ValueError as err:
        raise _fail(2, f"harness bench all: {err}")
    try:
        figures, seconds = suite.run(sizes)
    except (RuntimeError, TimeoutError, OSError) as err:
        raise _fail(1, f"harness bench all: {err}")
    _bench_out(figures, json_path)
    typer.echo(f"harness bench all: {seconds:.0f} s")


@bench_app.command("precopy")
def bench_precopy(
    size: Annotated[str, typer.Option(help="Guest RAM size.")] = "1GiB",
    repeat: RepeatOption = 5,
    no_extensions: NoExtensionsOption = False,
    json_path: JsonOption = None,
) -> None:
    """Precopy of an idle random-content guest over TCP vs a raw socket stream (and QEMU)."""
    from harness.scenario.units import parse_size

    from . import precopy

    _bench_json_dir("precopy", json_path)
    _bench_no_extensions("precopy", no_extensions)
    nbytes = _bench_parse("precopy", parse_size, size)
    try:
        figures = precopy.run(nbytes, repeat=repeat)
    except (RuntimeError, TimeoutError, OSError) as err:
        raise _fail(1, f"harness bench precopy: {err}")
    _bench_out(figures, json_path)


@bench_app.command("multifd")
def bench_multifd(
    size: Annotated[str, typer.Option(help="Guest RAM size.")] = "1GiB",
    channels: Annotated[list[int], typer.Option(
        min=1, max=255, help="multifd-channels of one figure; repeatable.")] = [2, 4],  # noqa: B006
    repeat: RepeatOption = 5,
    no_extensions: NoExtensionsOption = False,
    json_path: JsonOption = None,
) -> None:
    """Precopy of an idle random-content guest over N multifd channels vs a raw stream."""
    from harness.scenario.units import parse_size

    from . import multifd

    _bench_json_dir("multifd", json_path)
    _bench_no_extensions("multifd", no_extensions)
    nbytes = _bench_parse("multifd", parse_size, size)
    try:
        figures = multifd.run(nbytes, repeat=repeat, channels=tuple(channels))
    except (RuntimeError, TimeoutError, OSError) as err:
        raise _fail(1, f"harness bench multifd: {err}")
    _bench_out(figures, json_path)


@bench_app.command("zero")
def bench_zero(
    size: Annotated[str, typer.Option(help="Guest RAM size.")] = "8GiB",
    json_path: JsonOption = None,
) -> None:
    """An all-zero guest: GB/s of guest memory, and the peers' peak RSS/PSS vs its size."""
    from harness.scenario.units import parse_size

    from . import zero

    _bench_json_dir("zero", json_path)
    nbytes = _bench_parse("zero", parse_size, size)
    try:
        figures = zero.run(nbytes)
    except (RuntimeError, TimeoutError, OSError) as err:
        raise _fail(1, f"harness bench zero: {err}")
    _bench_out(figures, json_path)


@bench_app.command("postcopy")
def bench_postcopy(
    size: Annotated[str, typer.Option(help="Guest RAM size.")] = "256MiB",
    rate: Annotated[str, typer.Option(help="The destination guest's dirty rate.")] = "64MiB/s",
    push: Annotated[list[str], typer.Option(
        help="max-postcopy-bandwidth of the background push (0: unlimited); repeatable.")
                    ] = ["0", "64MiB/s"],  # noqa: B006
    repeat: RepeatOption = 5,
    no_extensions: NoExtensionsOption = False,
    json_path: JsonOption = None,
) -> None:
    """Postcopy page-request latency (p50, p99) vs a raw request/response round trip."""
    from harness.scenario.units import parse_rate, parse_size

    from . import postcopy

    _bench_json_dir("postcopy", json_path)
    _bench_no_extensions("postcopy", no_extensions)
    nbytes = _bench_parse("postcopy", parse_size, size)
    dirty = _bench_parse("postcopy", parse_rate, rate)
    pushes = tuple(_bench_parse("postcopy", parse_rate, p) for p in push)
    try:
        figures = postcopy.run(nbytes, dirty, pushes, repeat)
    except (RuntimeError, TimeoutError, OSError) as err:
        raise _fail(1, f"harness bench postcopy: {err}")
    _bench_out(figures, json_path)
