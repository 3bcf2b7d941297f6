"""The scenario format's reference: `harness schema` and docs/scenario-format.md come from
the model, describe what the loader accepts, and cannot go stale."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from harness.scenario import parse_scenario
from harness.scenario.loader import _Loader
from harness.scenario.reference import EXAMPLE, PAGE, json_schema, markdown
from tests.conftest import REPO

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the test extra) is needed "
                                 "to check the schema as an editor would")

SHIPPED = sorted([*REPO.glob("scenarios/**/*.yaml"), *REPO.glob("examples/**/*.yaml")])


def validator() -> Any:
    return jsonschema.Draft202012Validator(json_schema())


def file_data(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # the loader's dialect: `on:` stays a key


def test_the_committed_page_is_what_the_model_generates():
    assert PAGE == REPO / "docs" / "scenario-format.md"
    assert PAGE.read_text(encoding="utf-8") == markdown(), (
        "docs/scenario-format.md is stale: run python -m harness.scenario.reference")


def test_the_page_names_every_key_of_every_mapping():
    page = markdown()
    schema = json_schema()
    for name, definition in [("", schema), *schema["$defs"].items()]:
        if name:
            assert f"\n## {name}\n" in page
        members = [definition, *definition.get("anyOf", [])]
        for key in (k for member in members for k in member.get("properties", {})):
            assert f"| `{key}` |" in page, (name, key)


def test_the_example_is_a_valid_scenario():
    scenario = parse_scenario(EXAMPLE)
    assert scenario.name == "postcopy-basic" and len(scenario.steps) == 3
    assert validator().is_valid(file_data(EXAMPLE))


def test_schema_keys_are_the_files_kebab_case():
    schema = json_schema()
    keys = set(schema["properties"])
    for definition in schema["$defs"].values():
        for member in [definition, *definition.get("anyOf", [])]:
            keys |= set(member.get("properties", {}))
    assert {"dirty-rate", "guest-runs-on", "max-bandwidth", "migrate-set-parameters",
            "pass"} <= keys
    assert not [key for key in keys if "_" in key]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_scenario_matches_the_schema(path):
    text = path.read_text(encoding="utf-8")
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in validator().iter_errors(file_data(text))]
    assert errors == []
    parse_scenario(text, file=str(path), source_file=path)  # and the loader agrees


@pytest.mark.parametrize("text", [
    "name: a\nguets: {memory: 1M}\n",  # unknown key
    "name: a\nguest: {memory: [1]}\n",  # not a size
    "name: a\nsteps: [{on: {pass: 1}, do: migrate-stop}]\n",  # not an action
    "name: a\ncapabilities: {postcopy: true}\n",  # not a capability
    "name: ../x\n",  # not a name
])
def test_the_schema_refuses_what_the_loader_refuses(text):
    assert not validator().is_valid(file_data(text))
    with pytest.raises(Exception, match="^<string>:"):
        parse_scenario(text)


def test_harness_schema_prints_it():
    out = subprocess.run([sys.executable, "-m", "harness", "schema"], capture_output=True,
                         text=True, timeout=120, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json_schema()


def test_the_generator_checks_and_writes(tmp_path, monkeypatch):
    from harness.scenario import reference

    out = subprocess.run([sys.executable, "-m", "harness.scenario.reference", "--check"],
                         capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    page = tmp_path / "docs" / "scenario-format.md"
    monkeypatch.setattr(reference, "PAGE", page)
    assert reference.main(["--check"]) == 1  # missing: stale
    assert reference.main([]) == 0 and page.read_text(encoding="utf-8") == markdown()
    assert reference.main(["--check"]) == 0
    assert reference.main(["--bogus"]) == 2
