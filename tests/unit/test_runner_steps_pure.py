"""The runner's steps are pure: a run's state in, effect objects out; the peers' and the
proxy's vocabulary is typed at the boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.control import ProtocolMessageError
from harness.control import peer_messages as pm
from harness.migration.status import MigrationStatus as S
from harness.runner import effects as fx
from harness.runner.state import RunState
from harness.runner.steps import StepRunner
from harness.scenario import parse_scenario

RUNNER = Path(__file__).resolve().parents[2] / "harness" / "runner"


def _runner(steps: str, **more: str) -> tuple[StepRunner, RunState]:
    sc = parse_scenario(f"name: pure\ncapabilities: {{postcopy-ram: true}}\nsteps:\n{steps}"
                        + "".join(f"{k}: {v}\n" for k, v in more.items()))
    state = RunState(seed=3)
    state.migrate_started = state.t0
    return StepRunner(sc, 3), state


def test_a_pass_trigger_returns_the_command_and_does_nothing_itself():
    steps, state = _runner("  - on: {pass: 2}\n    do: migrate-start-postcopy\n")
    assert steps.tick(state) == []  # pass 0: nothing
    state.passes = 2
    out = steps.tick(state)
    assert out == [fx.Command("steps[0]", "source", "migrate-start-postcopy", {}, {})]
    assert steps.tick(state) == []  # fired once
    assert steps.report()[0]["fired"] is True


def test_stop_goes_to_the_side_that_has_the_guest():
    steps, state = _runner("  - on: {status: {peer: destination, is: postcopy-active}}\n"
                           "    do: stop\n")
    state.set_status("destination", S.POSTCOPY_ACTIVE, 1.0)
    (command,) = steps.tick(state)
    assert isinstance(command, fx.Command) and command.peer == "destination"


def test_a_held_wire_step_is_armed_then_fires_and_releases_after_its_effect():
    steps, state = _runner("  - on: {command: POSTCOPY_RUN}\n"
                           "    fault: {kind: kill, target: source}\n")
    state.has_proxy = True
    (arm,) = steps.arm_due()
    assert isinstance(arm, fx.Arm) and arm.request.hold and arm.request.fault is None
    assert arm.request.wire()[1]["trigger"] == {"command": "POSTCOPY_RUN"}
    assert steps.arm_due() == []  # armed once
    out = steps.on_wire(pm.WireSeen("step-0", held=True, data={"id": "step-0"}), 5.0, state)
    assert [type(e) for e in out] == [fx.ProcessFault, fx.Release]
    assert out[1] == fx.Release("step-0")
    assert steps.report()[0]["fired"] is False  # a fault fires when it acted...
    steps.fault_acted("steps[0]", {"pids": [1]}, 0.5)
    assert steps.report()[0]["fired"] is True   # ...and the actuator's record says so


def test_a_recovery_carries_the_release_to_after_it_finished():
    steps, state = _runner("  - on: {frame: RECV_BITMAP}\n    do: migrate-recover\n")
    out = steps.on_wire(pm.WireSeen("step-0", held=True), 1.0, state)
    assert out == [fx.Recover("steps[0]", then=(fx.Release("step-0"),))]


def test_a_status_step_after_another_counts_entries_after_it_only():
    steps, state = _runner("  - name: cut\n    on: {pass: 1}\n    fault: {kind: net.reset}\n"
                           "  - on: {status: {peer: source, is: postcopy-paused}}\n"
                           "    after: cut\n    do: migrate-recover\n")
    state.set_status("source", S.POSTCOPY_PAUSED, 0.0)  # before `cut` fired: not counted
    state.passes = 1
    first = steps.tick(state)
    assert isinstance(first[0], fx.Arm) and first[0].request.trigger is None
    assert steps.tick(state) == []
    state.set_status("source", S.POSTCOPY_PAUSED, 10 ** 10)
    assert steps.tick(state) == [fx.Recover("steps[1]")]


def test_time_triggers_say_when_they_are_due():
    steps, state = _runner("  - on: {time: 30s}\n    do: migrate-cancel\n")
    due = steps.next_time_due(state)
    assert due is not None and 29 < due <= 30
    assert steps.tick(state) == []


def test_nothing_below_the_coordinator_imports_it():
    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}

    below = [p for p in sorted(RUNNER.glob("*.py")) if p.name not in ("coordinator.py",
                                                                       "run.py")]
    assert len(below) > 10
    for path in below:
        assert not {"coordinator", "harness.runner.coordinator"} & imported(path), path.name
    for name in ("steps.py", "effects.py", "state.py"):  # pure: no actuator either
        assert "actuator" not in imported(RUNNER / name), name


def test_events_are_typed_at_the_boundary():
    assert pm.decode_event("MIGRATION", {"status": "postcopy-paused"}) == \
        pm.MigrationEvent(S.POSTCOPY_PAUSED)
    assert pm.decode_event("MIGRATION_PASS", {"pass": 3}) == pm.PassEvent(3)
    assert pm.decode_event("BLOCK_JOB_READY", {"x": 1}) is None  # not ours: as it came
    with pytest.raises(ProtocolMessageError, match="'status' 'flying' is not a"):
        pm.decode_event("MIGRATION", {"status": "flying"})
    with pytest.raises(ProtocolMessageError, match="member 'pass' has the wrong type"):
        pm.decode_event("MIGRATION_PASS", {"pass": "3"})
    with pytest.raises(ProtocolMessageError, match="member 'id' is missing"):
        pm.decode_event("WIRE", {"held": True})
    info = pm.MigrationInfo.of({"status": "active", "ram": {"remaining": 7},
                                "socket-address": [{"type": "inet", "host": "::1",
                                                    "port": "4444"}]})
    assert info.status is S.ACTIVE and info.ram_int("remaining") == 7
    assert info.listening_port() == ("::1", 4444)
    with pytest.raises(ProtocolMessageError, match="'ram' has the wrong type"):
        pm.MigrationInfo.of({"status": "active", "ram": [1]})
    assert pm.Migrate("tcp:a:1", resume=True).wire() == ("migrate", {"uri": "tcp:a:1",
                                                                    "resume": True})
    assert pm.SetParameters({"max-bandwidth": 5}).wire() == ("migrate-set-parameters",
                                                             {"max-bandwidth": 5})


def test_outcomes_carry_migration_statuses_and_report_them_as_qemu_names():
    import json

    from harness.runner.result import PeerOutcome

    out = PeerOutcome(status="postcopy-paused", statuses=["setup", "active"])
    assert out.status is S.POSTCOPY_PAUSED and out.statuses == [S.SETUP, S.ACTIVE]
    assert json.loads(json.dumps(out.to_json()))["status"] == "postcopy-paused"
    assert PeerOutcome(status="flying").status == "flying"  # not QEMU's: kept as it came
