"""The scenario's steps: when each fires (its trigger) and what it does (its effect).

Strategy: two kinds of trigger, two places that watch them.  What the runner records --
time since `migrate`, passes, statuses, the source's `remaining` and progress -- is checked
by `StepRunner.tick()` from the coordinator's loop.  What only the wire shows -- the N-th
page request, PONG, section or command, a command inside PACKAGED, a frame by name (the
END section that opens the completion...), N bytes of a channel --
is watched by the protocol-aware proxy (harness.faults): such a step is armed there when
it becomes due (at the start, or when the step it comes `after` fired), and the proxy
either applies its network fault at that exact byte, or holds the stream right there
while the runner carries out the step's action or process fault (then releases it).

`probability` is drawn per occurrence of the trigger (the 2nd, 3rd... pass at or after
`pass: N`, each entry into the status...) from (seed, step, occurrence) alone, so the same
seed takes the same decisions whatever the timing: that is what `--seed` replays.  Steps
the runner cannot carry out are refused before anything starts, never skipped.

A trigger that held is not yet a step that fired: an action fires when it is carried
out, a process or link fault when it hit its target, a network fault when the proxy
reports (FAULT) that it acted on the stream -- a drop armed after the last PONG went by
never fires.  `report()` lists every step with whether it fired; the `steps-fired`
invariant fails a run where a step that must fire did not (harness.invariants).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import ScenarioFailure
from harness.scenario import steps as model

if TYPE_CHECKING:
    from .coordinator import Coordinator

WIRE_TRIGGERS = (model.EventTrigger, model.CommandTrigger, model.FrameTrigger,
                 model.BytesTrigger)


class UnsupportedStep(ScenarioFailure, RuntimeError):
    pass


def needs_proxy(steps: tuple[Any, ...]) -> bool:
    """Whether a scenario's steps need the proxy between the peers."""
    return any(isinstance(s.on, WIRE_TRIGGERS) or isinstance(s.fault, model.NetFault)
               for s in steps)


def draw(seed: int, index: int, occurrence: int, probability: float) -> bool:
    """The seeded decision of one occurrence of a step's trigger."""
    if probability >= 1.0:
        return True
    return random.Random(f"{seed}/{index}/{occurrence}").random() < probability


def describe_trigger(trigger: Any) -> str:
    """The trigger as the scenario file says it, in YAML's flow style (no Python repr)."""
    data = trigger.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return ", ".join(f"{k}: {_flow(v)}" for k, v in data.items())


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def wire_trigger(trigger: Any) -> dict[str, Any]:
    """A wire trigger as the proxy's `x-proxy-arm` takes it."""
    if isinstance(trigger, model.EventTrigger):
        return {"event": trigger.event, "count": trigger.count}
    if isinstance(trigger, model.CommandTrigger):
        return {"command": trigger.command}
    if isinstance(trigger, model.FrameTrigger):
        return {"frame": trigger.frame, "count": trigger.count,
                **({"section": trigger.section} if trigger.section is not None else {})}
    assert isinstance(trigger, model.BytesTrigger)
    return {"bytes": {"channel": trigger.bytes.channel, "after": trigger.bytes.after}}


@dataclass
class StepState:
    index: int
    step: Any
    fired_at: float | None = None
    armed: bool = False  # a wire step handed to the proxy
    occurrences: int = 0  # occurrences of its trigger seen so far (for probability)
    fired_epoch: float | None = None  # when it fired, by the clock peers stamp events with
    acted_at: float | None = None  # when its effect took place (seconds since `migrate`)
    missed: str | None = None  # why its trigger held but its effect did not take place

    @property
    def label(self) -> str:
        return self.step.name or f"steps[{self.index}]"

    @property
    def wire(self) -> bool:
        return isinstance(self.step.on, WIRE_TRIGGERS)


class StepRunner:
    def __init__(self, steps: tuple[Any, ...], coordinator: Coordinator) -> None:
        self.c = coordinator
        self.states = [StepState(i, s) for i, s in enumerate(steps)]
        self._by_name = {s.name: st for st, s in zip(self.states, steps) if s.name}
        for state in self.states:
            self._check_supported(state)

    def _check_supported(self, state: StepState) -> None:
        fault = state.step.fault
        if isinstance(fault, model.LinkFault):  # net.* and wire steps: the proxy runs on a
            self._check_link(state, fault)      # host too (issue 14, runner/agent_proxy.py)

    def _check_link(self, state: StepState, fault: model.LinkFault) -> None:
        hosts = (self.c.sc.source.host, self.c.sc.destination.host)
        if None in hosts:
            raise UnsupportedStep(f"{state.label}: {fault.kind} acts on the network link "
                                  "between two hosts; it needs source: {host: ...} and "
                                  "destination: {host: ...} on hosts with agents (a local "
                                  "run has no link to cut)")
        if hosts[0] == hosts[1]:
            raise UnsupportedStep(f"{state.label}: {fault.kind}: both peers are on host "
                                  f"{hosts[0]}, so no link between hosts carries the stream")
        if fault.host not in hosts:
            raise UnsupportedStep(f"{state.label}: {fault.kind} on host {fault.host}, which "
                                  f"runs neither peer (source on {hosts[0]}, destination on "
                                  f"{hosts[1]})")

    # ------------------------------------------------------------------ the loop's side
    def tick(self) -> bool:
        """Fire the runner-side steps whose trigger holds; arm due wire steps.  True when
        anything fired."""
        fired = False
        for state in self.states:
            if state.fired_at is not None or not self._after_done(state):
                continue
            if state.wire:
                if not state.armed:
                    self._arm(state)
                    fired = True
                continue
            if self._occurred(state):
                state.occurrences += 1
                if draw(self.c.seed, state.index, state.occurrences,
                        state.step.on.probability):
                    self._fire(state, None, time.time())
                    fired = True
        return fired

    def _after_done(self, state: StepState) -> bool:
        after = state.step.after
        return after is None or self._by_name[after].fired_at is not None

    def _occurred(self, state: StepState) -> bool:
        """Whether a new occurrence of the trigger is there (the next one to draw for)."""
        trigger, n = state.step.on, state.occurrences
        c = self.c
        if isinstance(trigger, model.TimeTrigger):
            start = self._after_time(state)
            return n == 0 and c.elapsed() - start >= trigger.time
        if isinstance(trigger, model.PassTrigger):
            return c.passes >= trigger.pass_ + n
        if isinstance(trigger, model.StatusTrigger):
            # an entry into the status counts if it happened after the step it comes
            # `after:` fired (by the peers' own timestamps: the runner may learn of a
            # pause in the same poll as of the reset that caused it)
            cond = trigger.status
            since = self._after_epoch(state)
            seen = sum(1 for at, status in c.status_log[cond.peer]
                       if status == cond.is_ and at >= since)
            return seen > n
        if isinstance(trigger, model.RemainingTrigger):
            remaining = c.source_ram().get("remaining")
            return n == 0 and remaining is not None and int(remaining) < trigger.remaining.below
        if isinstance(trigger, model.ProgressTrigger):
            return n == 0 and c.progress_share() * 100 >= trigger.progress  # a percentage
        return False

    def _after_epoch(self, state: StepState) -> float:
        after = state.step.after
        fired = self._by_name[after].fired_epoch if after else None
        return fired or 0.0

    def _after_time(self, state: StepState) -> float:
        """A time trigger counts from `migrate`, or from the firing of its `after` step."""
        after = state.step.after
        fired = self._by_name[after].fired_at if after else None
        return fired or 0.0

    # ------------------------------------------------------------------ wire steps
    def _arm(self, state: StepState) -> None:
        from .effects import arm_in_proxy

        arm_in_proxy(self.c, state)
        state.armed = True

    def on_wire(self, step_id: str, data: dict[str, Any], at: float) -> None:
        """The proxy saw an armed step's trigger (and holds the stream if it was asked to);
        `at` is when, by the proxy's clock."""
        state = self._state_of(step_id)
        if state is None or state.fired_at is not None:
            return
        self._fire(state, data, at)

    def label_of(self, step_id: str) -> str:
        state = self._state_of(step_id)
        return state.label if state is not None else step_id

    def arm_due(self) -> None:
        """Arm the wire steps that are due before the first byte flows."""
        for state in self.states:
            if state.wire and not state.armed and state.fired_at is None \
                    and self._after_done(state):
                self._arm(state)

    def _state_of(self, step_id: str) -> StepState | None:
        try:
            return self.states[int(step_id.removeprefix("step-"))]
        except (ValueError, IndexError):
            return None

    # ------------------------------------------------------------------ effects
    def _fire(self, state: StepState, wire: dict[str, Any] | None, at: float) -> None:
        from .effects import carry_out

        state.fired_at = self.c.elapsed()
        state.fired_epoch = at
        if self.c.proxy is not None:
            # the wire steps that come `after` this one watch from now on, before its
            # effect: a recovery's RECV_BITMAP goes by while `migrate-recover` runs
            self.arm_due()
        carry_out(self.c, state, wire)
        if state.step.do is not None:  # an action fires when it is carried out
            state.acted_at = state.fired_at

    def fault_acted(self, label: str, detail: dict[str, Any]) -> None:
        """A fault record of the step `label`: it fired, unless the record says it was
        skipped or could not be applied."""
        state = next((st for st in self.states if st.label == label), None)
        if state is None or state.acted_at is not None:
            return
        why = detail.get("skipped") or detail.get("error")
        if why:
            state.missed = str(why)
        else:
            state.acted_at = self.c.elapsed()

    # ------------------------------------------------------------------ the end
    def waiting(self) -> list[str]:
        """Steps that have not fired, and what each waits for."""
        out = []
        for state in self.states:
            if state.fired_at is None:
                wait = f"on {describe_trigger(state.step.on)}"
                if state.step.after and not self._after_done(state):
                    wait += f", after {state.step.after!r}"
                out.append(f"{state.label!r} ({wait})")
        return out

    def report(self) -> list[dict[str, Any]]:
        """Every step: what it waits for, what it does, whether (and when) it fired."""
        return [_step_report(state, self._after_done(state)) for state in self.states]

    def not_fired(self) -> list[dict[str, Any]]:
        """The steps that must fire (not optional, no probability) and did not."""
        return [r for r in self.report() if not r["fired"] and r["must-fire"]]

    def may_still_fire(self) -> bool:
        """Whether a step could fire with nothing else moving: a time trigger to come."""
        return any(state.fired_at is None and self._after_done(state)
                   and isinstance(state.step.on, model.TimeTrigger)
                   for state in self.states)


def describe_effect(step: Any) -> str:
    """`do: migrate-cancel` / `fault: net.drop PONG on return-path` in a few words."""
    if step.do is not None:
        return f"do: {step.do.command}"
    fault = step.fault
    text = f"fault: {fault.kind}"
    for key in ("message", "frame", "target", "channel", "host"):
        value = getattr(fault, key, None)
        if value:
            text += f" {key} {value}"
    return text


def _step_report(state: StepState, after_done: bool) -> dict[str, Any]:
    step = state.step
    out: dict[str, Any] = {
        "step": state.label, "on": describe_trigger(step.on), "does": describe_effect(step),
        "fired": state.acted_at is not None, "must-fire": step.must_fire,
    }
    if step.after:
        out["after"] = step.after
    if state.acted_at is not None:
        out["t"] = round(state.acted_at, 6)
    elif state.missed:
        out["why-not"] = state.missed
    elif state.fired_at is not None:
        out["why-not"] = (f"its trigger held at {state.fired_at:.3f} s but the fault "
                          "never acted on anything")
    elif state.armed:
        out["why-not"] = "armed in the proxy; the wire never showed its trigger"
    elif not after_done:
        out["why-not"] = f"the step it comes after ({step.after}) never fired"
    else:
        out["why-not"] = "its trigger never held"
    return out
