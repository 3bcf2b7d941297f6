"""The README's fault-matrix table lists every scenario of scenarios/faults once, with the
outcome its file expects -- the table cannot drift from the files."""

from __future__ import annotations

import re
from pathlib import Path

from harness.scenario.loader import load_scenario

REPO = Path(__file__).resolve().parents[2]
FAULTS = REPO / "scenarios" / "faults"
ROW = re.compile(r"^\| \[([\w-]+)\]\(scenarios/faults/([\w-]+)\.yaml\) \| [^|]+ \| [^|]+ \| "
                 r"([^|]+) \| ([^|]+) \|$")


def _table() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in (REPO / "README.md").read_text().splitlines():
        if match := ROW.match(line):
            name, stem, outcome, _qemu = match.groups()
            assert name == stem, line
            assert name not in rows, f"{name} listed twice"
            rows[name] = outcome.strip()
    return rows


def _outcome(path: Path) -> str:
    expect = load_scenario(path).expect
    parts = []
    if expect.source:
        parts.append(f"source `{expect.source}`")
    if expect.destination:
        parts.append(f"destination `{expect.destination}`")
    if expect.memory:
        parts.append(f"memory {expect.memory}")
    if expect.guest_runs_on:
        parts.append("guest runs nowhere" if expect.guest_runs_on == "nowhere"
                     else f"guest on {expect.guest_runs_on}")
    return ", ".join(parts)


def test_the_matrix_has_at_least_30_scenarios_and_the_readme_lists_each_once():
    files = sorted(p.stem for p in FAULTS.glob("*.yaml"))
    assert len(files) >= 30
    assert sorted(_table()) == files


def test_each_row_states_the_outcome_its_scenario_expects():
    table = _table()
    for path in sorted(FAULTS.glob("*.yaml")):
        assert table[path.stem] == _outcome(path), path.name


def test_each_scenario_says_why_its_outcome_is_right():
    for path in sorted(FAULTS.glob("*.yaml")):
        assert "Expected:" in load_scenario(path).description, path.name


def _qemu_column() -> dict[str, str]:
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        if match := ROW.match(line):
            rows[match[1]] = match[4].strip()
    return rows


def test_the_qemu_column_says_as_expected_or_how_qemu_differs_and_the_file_says_why():
    column = _qemu_column()
    assert sorted(column) == sorted(p.stem for p in FAULTS.glob("*.yaml"))
    for name, text in column.items():
        described = "With real QEMU 7.2" in load_scenario(FAULTS / f"{name}.yaml").description
        assert text == "as expected" or text.startswith(("**differs**: ",
                                                         "**not applicable**: ")), name
        assert described == (text != "as expected"), name
