"""The shipped scenarios' facts, and the runner's features, run as a user runs them:
`harness run FILE --json OUT`.

`pytest scenarios/` (scenarios/conftest.py) runs every scenario file for its verdict; here
the main ones are run again to check the facts that make each what it claims to be
(passes, the cancel, the refusal, the requests...), beside the runner's own features.
Real peer processes, real sockets, real QEMU where a scenario asks for one (skipped with
the reason when it is absent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.qemu import find_qemu, userfaultfd_available
from tests.conftest import REPO
from tests.qemu_env import NO_QEMU, NO_USERFAULTFD

SCENARIOS = REPO / "scenarios"
NEEDS_QEMU = {"precopy-qemu-destination", "precopy-qemu-source", "postcopy-qemu-destination",
              "postcopy-qemu-source"}
NEEDS_USERFAULTFD = {"postcopy-qemu-destination"}  # a QEMU postcopy destination uses it


def run(*files: Path, tmp: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict, str]:
    out = tmp / "report.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", *map(str, files), "--json",
                           str(out), *extra], capture_output=True, text=True, timeout=240,
                          cwd=REPO, check=False, env={**__import__("os").environ,
                                                      "HARNESS_WORKDIR": str(tmp / "work")})
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, report, proc.stdout + proc.stderr


ACROSS_HOSTS = {"multihost-postcopy"}  # run in network namespaces: tests/e2e/test_multihost.py
ELSEWHERE = {"block-harness-to-qemu"}  # tests/e2e/test_replay_qemu.py (the shared run)


def test_every_top_level_scenario_has_its_facts_checked():
    assert sorted([*FACTS, *ACROSS_HOSTS, *ELSEWHERE]) == \
        sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(
    ["precopy", "precopy-unix", "precopy-cancel", "precopy-blocker", "precopy-exec-file",
     "precopy-pause-before-switchover",
     "precopy-qemu-destination", "precopy-qemu-source", "postcopy", "postcopy-unix",
     "postcopy-immediate", "postcopy-return-path-only", "postcopy-qemu-destination",
     "postcopy-qemu-source", "postcopy-preempt", "precopy-block", "precopy-multifd"]))
def test_shipped_scenario_facts(name, tmp_path):
    if name in NEEDS_QEMU and find_qemu() is None:
        pytest.skip(NO_QEMU)
    if name in NEEDS_USERFAULTFD and not userfaultfd_available():
        pytest.skip(NO_USERFAULTFD)
    code, report, output = run(SCENARIOS / f"{name}.yaml", tmp=tmp_path)
    assert code == 0, output
    [sc] = report["scenarios"]
    assert sc["verdict"] == "pass", sc["reason"]
    assert [s["step"] for s in sc["steps"] if s["must-fire"] and not s["fired"]] == []
    assert all(i["ok"] for i in sc["invariants"]) and sc["invariants"]
    for inv in sc["invariants"]:  # a single scenario's summary lists what was checked
        assert f"ok     {inv['name']}: " in output
    if sc["stats"].get("ram", {}).get("postcopy-requests"):
        assert f"postcopy: {sc['stats']['ram']['postcopy-requests']} page requests" in output
    check = FACTS.get(name)
    if check:
        check(sc)


def postcopy_preempt_facts(sc):
    """tests/e2e/test_preempt_scenarios.py says what postcopy-preempt must show."""
    from tests.e2e.test_preempt_scenarios import postcopy_preempt_facts as facts

    facts(sc)


def _precopy(sc):
    ram = sc["stats"]["ram"]
    assert ram["dirty-sync-count"] >= 3, "the workload should force several passes"
    assert ram["total"] == 256 << 20
    assert ram["normal"] + ram["duplicate"] >= (256 << 20) // 4096
    assert sc["stats"]["downtime"] <= sc["stats"]["total-time"]


def _multifd(sc):
    """The non-zero pages went by the 4 channels, each with one SYNC per RAM EOS (M9/M10)."""
    ram, channels = sc["stats"]["ram"], sc["stats"]["x-multifd"]
    assert len(channels) == 4 and all(c["pages"] > 0 for c in channels)
    assert sum(c["pages"] for c in channels) == ram["normal"]
    assert len({c["syncs"] for c in channels}) == 1
    assert channels[0]["syncs"] >= ram["dirty-sync-count"]  # setup, each PART, END
    assert ram["multifd-bytes"] > 10 * ram["precopy-bytes"]  # main: zero pages, framing


def _cancel(sc):
    assert sc["source"]["statuses"] == ["setup", "active", "cancelling", "cancelled"]
    steps = [t for t in sc["timeline"] if t["name"] == "step"]
    assert steps and steps[0]["data"]["command"] == "migrate_cancel"
    assert sc["source"]["runstate"] == "running"
    assert "unexpected end of migration stream" in sc["destination"]["error"]


def _pause_before_switchover(sc):
    assert sc["source"]["statuses"] == ["setup", "active", "pre-switchover", "device",
                                        "completed"]
    events = [(t["name"], t["data"].get("status") or t["data"].get("command"))
              for t in sc["timeline"] if t["peer"] in ("source", "runner")
              and t["name"] in ("MIGRATION", "step")]
    paused = events.index(("MIGRATION", "pre-switchover"))
    [step] = [t for t in sc["timeline"] if t["name"] == "step"]
    # accepted: the source was in pre-switchover then (else "Migration not in expected
    # state"), so the switch waited for the step
    assert step["data"]["command"] == "migrate-continue" and "error" not in step["data"]
    assert paused < events.index(("step", "migrate-continue"))


def _block(sc):
    """Block migration: every chunk of the 32 MiB disk travelled (zero ones as 11-byte
    records), the chunks the guest rewrote went again, and the disk and the RAM arrived
    (what the guest wrote last included: disks-identical compares the final images)."""
    block = sc["stats"]["x-block"]
    assert block["total"] == 32 << 20
    assert block["chunks"] + block["zero-chunks"] == 32 + block["dirty-chunks"]
    assert sc["stats"]["ram"]["transferred"] > 15 << 20
    names = {i["name"]: i["ok"] for i in sc["invariants"]}
    assert names["disks-identical"] and names["memory-identical"]


def _blocker(sc):
    assert sc["source"]["error"] == "State blocked by non-migratable device 'blocker'"
    assert sc["source"]["statuses"] == []


def _exec(sc):
    names = [(t["peer"], t["data"].get("status")) for t in sc["timeline"]
             if t["name"] == "MIGRATION"]
    # the destination only starts reading once the source has written the whole file
    assert names.index(("source", "completed")) < names.index(("destination", "setup"))


def _unix(sc):
    [migrate] = [t for t in sc["timeline"] if t["name"] == "migrate"]
    assert migrate["data"]["uri"].startswith("unix:")
    assert sc["destination"]["statuses"][-1] == "completed"


def _qemu_peer(role):
    def check(sc):
        assert sc[role]["kind"] == "qemu"
    return check


def _switched(sc):
    assert sc["source"]["statuses"] == ["setup", "active", "postcopy-active", "completed"]
    assert sc["destination"]["statuses"] == ["setup", "active", "postcopy-active", "completed"]
    assert "downtime" in sc["stats"]


def _postcopy(sc):
    _switched(sc)
    names = [(t["name"], t["data"].get("pass"), t["data"].get("status")) for t in sc["timeline"]
             if t["peer"] == "source" and t["name"] in ("MIGRATION", "MIGRATION_PASS")]
    assert names.index(("MIGRATION_PASS", 2, None)) < names.index(("MIGRATION", None,
                                                                   "postcopy-active"))
    dst = sc["destination-stats"]["x-postcopy"]
    assert dst["requests"] > 0 and dst["requests"] == sc["stats"]["ram"]["postcopy-requests"]
    assert dst["blocked-ms"] >= 0
    # QEMU 7.2 reports postcopy-blocktime only with that capability, which this one leaves off
    assert "postcopy-blocktime" not in sc["destination-stats"]
    assert sc["stats"]["x-return-path"]["shut"] == 0


def _immediate(sc):
    _switched(sc)
    passes = [t["data"]["pass"] for t in sc["timeline"] if t["name"] == "MIGRATION_PASS"]
    assert passes == [1, 2]  # setup's sync, then the last one at the switch: no precopy pass
    assert sc["destination-stats"]["x-postcopy"]["requests"] > 20


def _return_path_only(sc):
    assert sc["stats"]["x-return-path"] == {"pongs": [1], "shut": 0}
    assert "postcopy-active" not in sc["source"]["statuses"]


def _qemu_postcopy(role):
    def check(sc):
        _qemu_peer(role)(sc)
        _switched(sc)
        if role == "source":  # QEMU served the harness guest's faults
            requests = sc["stats"]["ram"]["postcopy-requests"]
            assert requests > 0
            assert requests == sc["destination-stats"]["x-postcopy"]["requests"]
    return check


FACTS = {"precopy": _precopy, "precopy-unix": _unix, "precopy-cancel": _cancel,
         "precopy-blocker": _blocker,
         "precopy-pause-before-switchover": _pause_before_switchover,
         "precopy-exec-file": _exec, "precopy-qemu-destination": _qemu_peer("destination"),
         "precopy-qemu-source": _qemu_peer("source"), "postcopy": _postcopy,
         "postcopy-unix": _switched, "postcopy-immediate": _immediate,
         "postcopy-return-path-only": _return_path_only,
         "postcopy-qemu-destination": _qemu_postcopy("destination"),
         "postcopy-qemu-source": _qemu_postcopy("source"),
         "postcopy-preempt": postcopy_preempt_facts, "precopy-block": _block,
         "precopy-multifd": _multifd}


def test_fd_transport_migrates_over_an_inherited_socketpair(tmp_path):
    scenario = tmp_path / "fd.yaml"
    scenario.write_text(
        "name: precopy-fd\nseed: 4\ntimeout: 60s\n"
        "guest: {memory: 16MiB, fill: 0.5, workload: {dirty-rate: 4MiB/s}}\n"
        "transport: fd\n"
        "expect: {source: completed, destination: completed, memory: identical,\n"
        "         guest-runs-on: destination}\n")
    code, report, output = run(scenario, tmp=tmp_path)
    assert code == 0, output
    assert report["scenarios"][0]["verdict"] == "pass"
    [migrate] = [t for t in report["scenarios"][0]["timeline"] if t["name"] == "migrate"]
    assert migrate["data"]["uri"] == "fd:migfd"


def test_unmet_expectation_exits_1_with_junit(tmp_path):
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text("name: wrong\ntimeout: 60s\nguest: {memory: 8MiB}\n"
                        "expect: {source: failed, guest-runs-on: source}\n")
    junit = tmp_path / "junit.xml"
    code, report, output = run(scenario, tmp=tmp_path, extra=("--junit", str(junit)))
    assert code == 1, output
    [sc] = report["scenarios"]
    assert sc["verdict"] == "fail"
    assert "source-status: source ended completed, expected failed" in sc["reason"]
    assert "guest-runs-on" in sc["reason"]
    xml = junit.read_text()
    assert '<testsuite name="migration-harness" tests="1" failures="1" errors="0"' in xml
    assert "expected failed" in xml


def test_bad_scenario_exits_2_naming_file_line_and_field(tmp_path):
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("name: bad\nguest:\n  memory: 8MiB\nexpect:\n  source: finished\n")
    code, report, output = run(scenario, tmp=tmp_path)
    assert code == 2
    assert f"{scenario}:5:11: expect.source:" in output
    assert "Traceback" not in output and report == {}


def test_seed_override_is_reported(tmp_path):
    scenario = tmp_path / "seed.yaml"
    scenario.write_text("name: seeded\nseed: 1\ntimeout: 60s\nguest: {memory: 8MiB}\n"
                        "expect: {source: completed, memory: identical}\n")
    code, report, output = run(scenario, tmp=tmp_path, extra=("--seed", "99"))
    assert code == 0, output
    assert report["scenarios"][0]["seed"] == 99


def test_steps_fire_on_time_and_status_and_act_on_the_peers(tmp_path):
    """time -> migrate-set-parameters speeds a throttled migration up; status -> stop, then
    cont after the stop: the guest stopped mid-migration and still moved intact."""
    scenario = tmp_path / "steps.yaml"
    scenario.write_text("""\
name: steps
seed: 9
timeout: 60s
guest: {memory: 64MiB, fill: 1.0, workload: {dirty-rate: 2MiB/s}}
parameters: {max-bandwidth: 8MiB}
steps:
  - name: pause-guest
    on: {status: {peer: source, is: active}}
    do: stop
  - name: resume-guest
    after: pause-guest
    on: {time: 0.4s}
    do: cont
  - name: unthrottle
    after: resume-guest
    on: {time: 0.6s}
    do: {migrate-set-parameters: {max-bandwidth: 4GiB}}
expect: {source: completed, destination: completed, memory: identical,
         guest-runs-on: destination}
""")
    code, report, output = run(scenario, tmp=tmp_path)
    assert code == 0, output
    [sc] = report["scenarios"]
    fired = [(t["data"]["step"], t["data"]["command"], t["data"].get("error"))
             for t in sc["timeline"] if t["name"] == "step"]
    assert fired == [("pause-guest", "stop", None), ("resume-guest", "cont", None),
                     ("unthrottle", "migrate-set-parameters", None)]
    stop = next(t for t in sc["timeline"] if t["name"] == "STOP" and t["peer"] == "source")
    resume = next(t for t in sc["timeline"] if t["name"] == "RESUME" and t["peer"] == "source"
                  and t["t"] > stop["t"])
    assert resume["at"] > stop["at"]
    # `after: pause-guest` + 0.4 s, by the runner's clock: when each step fired (the peer's
    # STOP may come late on a busy machine, so the peers' events may be closer than that)
    steps = {s["step"]: s for s in sc["steps"]}
    assert steps["resume-guest"]["t"] - steps["pause-guest"]["t"] >= 0.4 - 1e-5
    assert steps["unthrottle"]["t"] - steps["resume-guest"]["t"] >= 0.6 - 1e-5
    # throttled, 64 MiB at 8 MiB/s cannot take under 8 s, however idle the machine: the new
    # bandwidth applied live
    assert sc["stats"]["total-time"] < 7500


def test_progress_and_remaining_fire_once_that_much_has_been_sent(tmp_path):
    """At 16 MiB/s (1.6 MiB per 100 ms window, overshooting by less than a page), half of a
    64 MiB guest cannot have gone before 1.9 s, nor all but 16 MiB before 2.9 s; both steps
    fire, in that order."""
    scenario = tmp_path / "progress.yaml"
    scenario.write_text("""\
name: progress
seed: 12
timeout: 60s
guest: {memory: 64MiB, fill: 1.0}
parameters: {max-bandwidth: 16MiB}
steps:
  - name: half
    on: {progress: 50%}
    do: {migrate-set-parameters: {downtime-limit: 400}}
  - name: nearly
    on: {remaining: {below: 16MiB}}
    do: {migrate-set-parameters: {max-bandwidth: 1GiB}}
expect: {source: completed, destination: completed, memory: identical}
""")
    code, report, output = run(scenario, tmp=tmp_path)
    assert code == 0, output
    [sc] = report["scenarios"]
    migrate = next(t["t"] for t in sc["timeline"] if t["name"] == "migrate")
    fired = {t["data"]["step"]: t["t"] - migrate for t in sc["timeline"] if t["name"] == "step"}
    assert list(fired) == ["half", "nearly"], output
    assert 1.8 <= fired["half"] < fired["nearly"]
    assert fired["nearly"] >= 2.8


def test_a_killed_peer_leaves_no_guest_memory_behind(tmp_path):
    """SIGKILL gives a peer no chance to unlink its guest's shared memory: the runner that
    reaped it removes the segments, and the leftover check would name any it missed."""
    from harness.guest.leaks import leftover_segments

    scenario = tmp_path / "kill.yaml"
    scenario.write_text("""\
name: kill
seed: 13
timeout: 60s
guest: {memory: 32MiB, fill: 0.5}
parameters: {max-bandwidth: 8MiB}
steps:
  - on: {pass: 1}
    fault: {kind: kill, target: destination}
  - on: {pass: 1}
    fault: {kind: kill, target: source}
expect: {guest-runs-on: nowhere}
""")
    code, report, output = run(scenario, tmp=tmp_path)
    assert code == 0, output
    [sc] = report["scenarios"]
    pids = [t["data"]["pid"] for t in sc["timeline"] if t["name"] == "started"]
    assert len(pids) == 2 and [f["kind"] for f in sc["faults"]] == ["kill", "kill"]
    assert all(leftover_segments(pid) == [] for pid in pids)
    leftovers = next(i for i in sc["invariants"] if i["name"] == "no-leftover-processes")
    assert leftovers["ok"] and "no guest memory" in leftovers["detail"]


def test_analyze_reads_a_recording_of_our_own_postcopy_run(tmp_path):
    code, report, output = run(SCENARIOS / "postcopy-immediate.yaml", tmp=tmp_path,
                               extra=("--record",))
    assert code == 0, output
    [sc] = report["scenarios"]
    work = Path(sc["workdir"])
    fwd, rp = work / "stream.fwd.bin", work / "stream.rp.bin"
    proc = subprocess.run([sys.executable, "-m", "harness", "analyze", "--json", str(fwd),
                           "--return-path", str(rp)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    names = [c["name"] for c in doc["commands"]]
    assert names[:3] == ["OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE"]
    at = names.index("PACKAGED")
    assert "POSTCOPY_RAM_DISCARD" in names[3:at]
    assert names[at + 1:at + 4] == ["POSTCOPY_LISTEN", "PING", "POSTCOPY_RUN"]
    assert doc["vmdesc"] is None and doc["eof"]
    kinds = [m["name"] for m in doc["return_path"]]
    requests = sc["destination-stats"]["x-postcopy"]["requests"]
    assert kinds[:4] == ["PONG"] * 4 and kinds[-1] == "SHUT"
    assert kinds.count("REQ_PAGES_ID") + kinds.count("REQ_PAGES") == requests
    assert kinds[4] == "REQ_PAGES_ID"
    [block] = doc["ram"]["blocks"]
    assert block["zero_pages"] + block["normal_pages"] >= (64 << 20) // 4096
