"""Fixtures shared by every tier: where the QEMU vectors are, the pattern file.

Tests that need ../shared (QEMU's captured streams, DESIGN.md) find it through SHARED_DIR
and skip, naming ../shared, when it is absent; HARNESS_SHARED_DIR points SHARED_DIR
elsewhere (a missing directory shows that no test needs it to pass).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import shared_runs

REPO = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("HARNESS_SHARED_DIR") or REPO.parent / "shared")
SHARED_VECTORS = SHARED_DIR / "qemu-vectors"


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown under -p no:xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`pytest -n auto` on a small machine: one worker more than its CPUs.  Most of the
    suite's time is spent waiting -- on throttled migrations, QEMU, sockets -- not on a
    CPU (a scenario at 16 MiB/s sleeps in its rate limiter), so on 2 cores a third worker
    overlaps those waits.  PYTEST_XDIST_AUTO_NUM_WORKERS still decides when it is set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    cpus = len(os.sched_getaffinity(0))
    return cpus + 1 if cpus <= 4 else cpus


def pytest_cmdline_main(config: pytest.Config) -> None:
    """Under xdist, idle workers steal pending items (`--dist worksteal`) unless a --dist
    was given: the suite's items run 0.1 to 40 s, and a worker left with a queue of long
    ones kept the others idle at the end."""
    given = any(arg.startswith("--dist") or arg == "-d"
                for arg in config.invocation_params.args)
    if getattr(config.option, "dist", "no") == "load" and not given:
        config.option.dist = "worksteal"


def shared_file(relative: str) -> Path:
    """SHARED_DIR / relative, or a skip naming ../shared."""
    path = SHARED_DIR / relative
    if not path.exists():
        pytest.skip(f"{relative} not found at {path} (it lives in ../shared, which this "
                    "checkout does not have)")
    return path


@pytest.fixture(scope="session")
def vectors() -> Path:
    """../shared/qemu-vectors, or a skip saying why."""
    if not SHARED_VECTORS.is_dir():
        pytest.skip(f"QEMU 7.2 vectors not found at {SHARED_VECTORS} (they live in ../shared, "
                    "which this checkout does not have)")
    return SHARED_VECTORS


def pattern_bytes() -> bytes:
    """qemu-vectors/precopy/pattern.bin, rebuilt from its documented formula."""
    data = bytearray()
    for i in range(3):
        data.extend(((i * 7 + j) & 0xFF) for j in range(4096))
    data += bytes(4095) + b"\x01"
    return bytes(data)


def pytest_configure(config: pytest.Config) -> None:
    shared_runs.begin(config)  # one local run per shipped scenario and session


def pytest_sessionfinish(session: pytest.Session) -> None:
    shared_runs.cleanup(session.config)
