"""The scenario's steps: when each fires (its trigger) and what it does (its action).

Strategy: `StepRunner.tick()` is called by the coordinator loop; each step fires at most
once, when its trigger holds, the step it comes `after` has fired, and its `probability`
(drawn once, from the scenario seed) allows it.  Triggers read only what the coordinator
has recorded (time since `migrate`, passes, statuses seen); actions go to the peers as
QMP commands.  Trigger and action kinds this runner does not implement yet are reported
as an error when the run starts, never silently skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.control import CommandError
from harness.scenario import steps as model

if TYPE_CHECKING:
    from .coordinator import Coordinator

SUPPORTED_TRIGGERS = (model.TimeTrigger, model.PassTrigger, model.StatusTrigger)
#: action -> (peer, QMP command)
COMMANDS = {
    "migrate-cancel": ("source", "migrate_cancel"),
    "migrate-start-postcopy": ("source", "migrate-start-postcopy"),
    "migrate-pause": ("source", "migrate-pause"),
    "stop": ("guest", "stop"),
    "cont": ("guest", "cont"),
}


class UnsupportedStep(RuntimeError):
    pass


class StepRunner:
    def __init__(self, steps: tuple[Any, ...], coordinator: Coordinator) -> None:
        self.steps = list(steps)
        self.c = coordinator
        self.fired: dict[int, float] = {}
        self._names = {s.name: i for i, s in enumerate(self.steps) if s.name}
        self._draws: dict[int, bool] = {}
        for i, step in enumerate(self.steps):
            self._check_supported(i, step)

    def _check_supported(self, index: int, step: Any) -> None:
        label = step.name or f"steps[{index}]"
        if step.fault is not None:
            raise UnsupportedStep(f"{label}: faults ({step.fault.kind}) are not implemented yet")
        if not isinstance(step.on, SUPPORTED_TRIGGERS):
            raise UnsupportedStep(f"{label}: the trigger {type(step.on).KEY!r} is not "
                                  f"implemented yet")
        action = step.do
        if isinstance(action, model.CommandAction) and action.command not in COMMANDS:
            raise UnsupportedStep(f"{label}: the action {action.command!r} is not implemented yet")

    def tick(self) -> None:
        for i, step in enumerate(self.steps):
            if i in self.fired or not self._ready(i, step):
                continue
            self.fired[i] = self.c.elapsed()
            self._fire(i, step)

    def _ready(self, index: int, step: Any) -> bool:
        if step.after is not None and self._names.get(step.after) not in self.fired:
            return False
        if not self._holds(step.on):
            return False
        if index not in self._draws:
            self._draws[index] = self.c.rng.random() < step.on.probability
        return self._draws[index]

    def _holds(self, trigger: Any) -> bool:
        if isinstance(trigger, model.TimeTrigger):
            return self.c.elapsed() >= trigger.time
        if isinstance(trigger, model.PassTrigger):
            return self.c.passes >= trigger.pass_
        if isinstance(trigger, model.StatusTrigger):
            cond = trigger.status
            return cond.is_ in self.c.statuses[cond.peer]
        return False

    def _fire(self, index: int, step: Any) -> None:
        label = step.name or f"steps[{index}]"
        action = step.do
        if isinstance(action, model.SetParametersAction):
            peer, command = "source", "migrate-set-parameters"
            arguments = action.migrate_set_parameters.qmp_arguments()
        else:
            peer, command = COMMANDS[action.command]
            arguments = {}
        if peer == "guest":
            peer = "destination" if self.c.status["destination"] == "completed" else "source"
        try:
            result: Any = self.c.peer(peer).execute(command, arguments)
            self.c.note("runner", "step", {"step": label, "peer": peer, "command": command,
                                           "result": result})
        except CommandError as err:
            self.c.note("runner", "step", {"step": label, "peer": peer, "command": command,
                                           "error": err.desc})
