"""Fixtures of the pair tier: short socket directories and guests that are always closed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.guest import Guest, GuestSpec
from harness.runner.peers import short_dir


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = short_dir("mhp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def guests():
    made: list[Guest] = []

    def make(spec: GuestSpec, source: bool) -> Guest:
        g = Guest.create(spec, initial_content=source, prefault=not source)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()
