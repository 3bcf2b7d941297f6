"""tests/shared_runs.py: one local run per scenario file and session, however many ask."""

from __future__ import annotations

import threading
import time

from tests import shared_runs

SCENARIO = """name: shared-once
seed: 5
timeout: 30s
guest: {memory: 8MiB}
expect: {source: completed, destination: completed, memory: identical}
"""


def test_items_asking_for_the_same_file_share_one_run(tmp_path, monkeypatch):
    monkeypatch.setenv(shared_runs.SESSION_ENV, str(10 ** 6 + tmp_path.stat().st_ino % 10 ** 6))
    path = tmp_path / "shared-once.yaml"
    path.write_text(SCENARIO)
    real_run, runs = shared_runs._run, []

    def counted(*args):  # the real run, counted
        runs.append(args[0])
        return real_run(*args)
    monkeypatch.setattr(shared_runs, "_run", counted)
    try:
        got: list[shared_runs.LocalRun] = []
        askers = [threading.Thread(target=lambda: got.append(shared_runs.local_run(path, 60)))
                  for _ in range(3)]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(90)
        assert len(got) == 3 and {r.code for r in got} == {0}
        assert got[0].scenario()["verdict"] == "pass"
        assert runs == [path]  # three askers, one run
        started = time.monotonic()
        again = shared_runs.local_run(path, 60)
        assert time.monotonic() - started < 1 and again == got[0]  # no new run
        path.write_text(SCENARIO.replace("seed: 5", "seed: 6"))  # another file: another run
        assert shared_runs.local_run(path, 60).report != got[0].report
        assert runs == [path, path]
    finally:
        base = shared_runs.session_dir()

        class Controller:  # the session's controller cleans up (no workerinput)
            pass
        shared_runs.cleanup(Controller())
    assert not base.exists()
