"""One local `harness run FILE` per scenario file and test session, shared by every item.

Strategy: several items need the same local run of a shipped scenario -- its item in
`pytest scenarios/`, its facts in tests/e2e/test_real_guest_scenarios.py, the local half
of the cross-host comparison in tests/e2e/test_multihost_matrix.py.  Running it once per
session keeps the suite's time down.  The runs live in one directory shared by the
session's xdist workers (named after the pid of the session's controller, which `begin`
puts in the environment the workers inherit): one entry per (file, content hash).  The first item to ask takes an exclusive
`flock` on the entry's lock, runs `python -m harness run FILE --json ...` (its work
directory beside it, every process reaped, bounded by `timeout`), writes the result and
releases the lock; the others wait on the lock (bounded too) and read the same result.
The directory is removed when the session ends (`cleanup`, from the conftests).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOCK_POLL = 0.1


@dataclass(frozen=True)
class LocalRun:
    code: int
    output: str
    report: Path  # the JSON report (it may be missing when the run could not start)

    def scenario(self) -> dict[str, Any]:
        if not self.report.exists():
            return {}
        scenarios = json.loads(self.report.read_text()).get("scenarios") or [{}]
        return dict(scenarios[0])


SESSION_ENV = "HARNESS_TEST_SESSION"


def begin(config: Any) -> None:
    """The controller of a session (not an xdist worker) names the session: its pid."""
    if not hasattr(config, "workerinput"):
        os.environ[SESSION_ENV] = str(os.getpid())


def session_dir() -> Path:
    session = os.environ.get(SESSION_ENV) or str(os.getpid())
    path = Path(tempfile.gettempdir()) / f"harness-local-runs-{int(session)}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def local_run(path: Path, timeout: float) -> LocalRun:
    """The session's one local run of the scenario file `path` (run now if it is the
    first ask, else waited for)."""
    key = f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    base = session_dir()
    result, report = base / f"{key}.result", base / f"{key}.json"
    with _locked(base / f"{key}.lock", timeout + 30):
        if not result.exists():
            code, output = _run(path, report, base / f"{key}.work", timeout)
            result.write_text(json.dumps({"code": code, "output": output}))
    done = json.loads(result.read_text())
    return LocalRun(int(done["code"]), str(done["output"]), report)


@contextlib.contextmanager
def _locked(lock: Path, wait: float) -> Any:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock}: another item's run of this scenario did "
                                       f"not end within {wait:g} s") from None
                time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def _run(path: Path, report: Path, work: Path, timeout: float) -> tuple[int, str]:
    out = report.with_suffix(".out")
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", str(path), "--json", str(report)],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "HARNESS_WORKDIR": str(work)})
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = -1
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = out.read_text(errors="replace")[-50000:]
    if code == -1:
        text += f"\n(harness run did not end within {timeout:g} s: killed)"
    return code, text


def cleanup(config: Any) -> None:
    """The controller removes the session's directory at the end."""
    if not hasattr(config, "workerinput"):
        shutil.rmtree(session_dir(), ignore_errors=True)
