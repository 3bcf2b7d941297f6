"""DESIGN.md's import rules and house style, checked on the source tree."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

#: what a sans-IO codec must not touch: I/O, threads, processes, clocks, zmq, psutil
FORBIDDEN_IN_PROTOCOL = {"socket", "selectors", "select", "ssl", "threading", "_thread",
                         "asyncio", "concurrent", "multiprocessing", "subprocess", "signal",
                         "time", "zmq", "psutil", "mmap", "os", "io", "pathlib"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py")) if (REPO / package).is_dir() else []


@pytest.mark.parametrize("path", _modules("harness/protocol"), ids=lambda p: p.name)
def test_protocol_is_sans_io(path):
    # zstandard: multifd's zstd pages (protocol/multifd.py), a codec like zlib, no I/O
    allowed = set(sys.stdlib_module_names) - FORBIDDEN_IN_PROTOCOL | {"numpy", "zstandard",
                                                                      "__future__"}
    for name in _imports(path):
        if name == "harness.errors":  # the error root: no imports of its own
            continue
        top = name.split(".")[0]
        assert top in allowed, f"{path.name} imports {name}"
        assert not name.startswith("harness.") or name.startswith("harness.protocol"), name


def test_the_error_root_the_protocol_may_import_imports_nothing():
    assert _imports(REPO / "harness" / "errors.py") == {"__future__"}


def test_the_forbidden_list_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nfrom threading import Thread\nimport time\n")
    allowed = set(sys.stdlib_module_names) - FORBIDDEN_IN_PROTOCOL
    assert {n for n in _imports(bad) if n.split('.')[0] not in allowed} == {
        "socket", "threading", "time"}


def test_source_and_destination_never_import_each_other():
    for package, other in (("source", "destination"), ("destination", "source")):
        for path in _modules(package):
            assert not any(n == other or n.startswith(other + ".") for n in _imports(path)), path


def test_runner_never_imports_the_peers():
    for path in _modules("harness/runner"):
        assert not any(n.split(".")[0] in ("source", "destination") for n in _imports(path))


@pytest.mark.parametrize("path", _modules("harness") + _modules("source") + _modules("destination"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_starts_with_its_strategy(path):
    if path.name in ("__main__.py",):
        return
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.strip()) > 20, f"{path} has no module docstring"
