"""Hostile scenario files: alias bombs, deep nesting, huge files and path-like names are
refused with exit 2 and one line naming the file, the place and the bound."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.scenario import ScenarioError, load_scenario, load_scenarios, parse_scenario
from harness.scenario.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from tests.conftest import REPO


def merge_bomb() -> str:
    """~400 bytes whose `<<:` merges copy out 9**9 keys (PyYAML alone ran out of memory)."""
    text = "a: &a {a0: 1, a1: 1, a2: 1, a3: 1, a4: 1, a5: 1, a6: 1, a7: 1, a8: 1}\n"
    for prev, name in zip("abcdefgh", "bcdefghi"):
        text += f"{name}: &{name} {{<<: [{', '.join([f'*{prev}'] * 9)}]}}\n"
    return text + "name: x\n"


def list_bomb() -> str:
    """The classic billion laughs, aimed at steps: (pydantic walks every copy)."""
    text = "x: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for prev, name in zip("abcdefgh", "bcdefghi"):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    return text + "name: x\nsteps: *i\n"


def harness(*args: str) -> subprocess.CompletedProcess[str]:
    # the timeout is a hang guard only: the unbounded loader took minutes on these files
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False)


@pytest.mark.parametrize("bomb", [merge_bomb, list_bomb])
def test_alias_bombs_are_refused(bomb, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert path.stat().st_size < 600
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.file == str(path) and err.value.line is not None
    assert f"more than {MAX_NODES} values once its aliases are expanded" in err.value.reason
    out = harness("validate", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"harness validate: {path}:")
    assert "the bound for a scenario file" in out.stderr and len(out.stderr.splitlines()) == 1


def test_aliases_within_the_bound_still_work():
    text = ("name: shared\nguest: {memory: 16MiB}\nsteps:\n"
            "  - {name: a, on: {pass: 1}, do: &stop stop}\n"
            "  - {name: b, after: a, on: {time: 1s}, do: *stop}\n")
    assert [step.action_name for step in parse_scenario(text).steps] == ["stop", "stop"]


def test_a_loop_of_aliases_is_refused():
    with pytest.raises(ScenarioError) as err:
        parse_scenario("name: x\nguest: &g {devices: [*g]}\n")
    assert (err.value.line, err.value.column) == (2, 8)  # the anchored mapping
    assert "an alias refers to a node that contains it" in err.value.reason


@pytest.mark.parametrize("text", [
    "name: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n",  # PyYAML's composer recursed
    "a: &a " + "[" * 20 + "]" * 20 + "\nb: &b [[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]\nname: x\n",
])
def test_deep_nesting_is_refused(text):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text)
    assert err.value.reason == f"nested deeper than {MAX_DEPTH} levels, the bound for a " \
                               "scenario file"
    assert err.value.line == 2


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\ndescription: '" + "x" * MAX_FILE_BYTES + "'\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert err.value.file == str(path) and err.value.line is None
    assert err.value.reason.startswith("larger than 1024 KiB, the bound for a scenario file")


@pytest.mark.parametrize(("make", "kind"), [
    (lambda tmp: Path("/dev/zero"), "a character device"),  # endless
    (lambda tmp: (os.mkfifo(tmp / "p.yaml"), tmp / "p.yaml")[1], "a named pipe"),  # open hung
])
def test_what_is_no_file_is_refused_without_reading_it(tmp_path, make, kind):
    path = make(tmp_path)
    out = harness("validate", str(path))
    assert out.returncode == 2
    assert out.stderr == f"harness validate: {path}: is {kind}, not a scenario file\n"


def test_a_directory_of_scenarios_still_loads_its_files(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 1\n")
    os.mkfifo(tmp_path / "b.yaml")
    with pytest.raises(ScenarioError) as err:
        load_scenarios([tmp_path])
    assert [p.reason for p in err.value.problems] == ["is a named pipe, not a scenario file"]


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "a..b", "a b", "x" * 101,
                                  "/etc"])
def test_names_that_are_not_one_path_component_are_refused(name):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(f"name: {name!r}\n")
    assert (err.value.field, err.value.line) == ("name", 1)
    assert f"{name!r} is not a scenario name" in err.value.reason


@pytest.mark.parametrize("name", ["precopy", "postcopy-qemu-source", "a.b_c-1", "x" * 100])
def test_ordinary_names_are_accepted(name):
    assert parse_scenario(f"name: {name}\n").name == name


def test_a_file_stem_that_is_no_name_asks_for_name(tmp_path):
    path = tmp_path / "my scenario.yaml"
    path.write_text("seed: 1\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert "'my scenario' is not a scenario name" in err.value.reason
    assert "needs name:" in err.value.reason


def test_run_refuses_a_path_name_with_exit_2(tmp_path):
    path = tmp_path / "escape.yaml"
    path.write_text("name: ../../x\n")
    out = harness("run", "--json", str(tmp_path / "report.json"), str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{path}:1:7: name: '../../x' is not a scenario name" in out.stderr
    assert not (tmp_path / "report.json").exists()
