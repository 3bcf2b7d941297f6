"""The README's first screen tells a newcomer what this is, for whom, and what it needs; the
quick start stays two lines; the long benchmark diary lives in docs/; the licence matches."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_first_screen_says_what_for_whom_and_requirements() -> None:
    first = "\n".join(README.splitlines()[:30])
    assert "For people who build or change live migration" in first
    for need in ("Linux", "Python 3.11", "/dev/shm", "root"):
        assert need in first, need


def test_quick_start_is_two_lines() -> None:
    block = re.search(r"## Quick start\n\n```sh\n(.*?)```", README, re.DOTALL)
    assert block is not None
    assert block[1].splitlines() == ["pip install . && harness run scenarios/postcopy.yaml",
                                     "pip install -e '.[test]' && pytest -n auto"]


def test_nothing_stale_and_the_diary_moved() -> None:
    assert "being built" not in README
    assert "[docs/benchmarks.md](docs/benchmarks.md)" in README
    assert "Tried and left out" not in README
    assert "Tried and left out" in (REPO / "docs" / "benchmarks.md").read_text()


def test_license_file_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
