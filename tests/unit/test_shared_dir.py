"""No test needs ../shared to pass: the ones that use it find it through tests/conftest.py
and skip, naming ../shared, when it is absent (HARNESS_SHARED_DIR points elsewhere)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_only_conftest_knows_where_shared_is():
    builds_path = re.compile(r"""/ *["']shared["']|["']\.\./shared""")  # REPO.parent / "shared"
    offenders = [str(path.relative_to(REPO)) for path in sorted(REPO.glob("tests/**/*.py"))
                 if path.name != "conftest.py" and path.name != "test_shared_dir.py"
                 and builds_path.search(path.read_text())]
    assert offenders == []


def test_without_shared_they_skip_and_say_why(tmp_path):
    env = {**os.environ, "HARNESS_SHARED_DIR": str(tmp_path / "no-shared")}
    tests = ["tests/unit/test_scenario_model.py::test_the_example_here_is_the_one_in_design_md",
             "tests/unit/test_qemu_vectors.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "-rs", *tests], capture_output=True, text=True,
                         timeout=600, cwd=REPO, env=env, check=False)
    assert out.returncode == 0, out.stdout[-3000:]
    skips = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("(it lives in ../shared" in line or "(they live in ../shared" in line
                         for line in skips), skips
    assert "DESIGN.md not found" in out.stdout and "QEMU 7.2 vectors not found" in out.stdout
    assert " failed" not in out.stdout
