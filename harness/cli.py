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

from . import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Test QEMU live migration the way it really happens (QEMU 7.2 wire format).",
)


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False
          ) -> None:
    if version:
        typer.echo(f"migration-harness {__version__}")
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
) -> None:
    """Decode a migration stream like QEMU's analyze-migration.py, postcopy included."""
    from .analyze import analyze_file, summary_lines
    from .analyze import extract_ram as write_ram
    from .protocol import ProtocolError

    for path in (stream, return_path):
        if path is not None and not path.is_file():
            raise _fail(2, f"harness analyze: {path}: no such file")
    try:
        result = analyze_file(stream, return_path)
    except ProtocolError as err:
        lines = "\n".join(f"  {line}" for line in err.qemu_lines)
        raise _fail(1, f"harness analyze: {stream}: malformed migration stream at {err}\n"
                       f"a QEMU 7.2 destination would print:\n{lines}")
    except OSError as err:
        raise _fail(2, f"harness analyze: {stream}: {err.strerror or err}")
    if extract_ram is not None:
        try:
            written = write_ram(result, extract_ram)
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
