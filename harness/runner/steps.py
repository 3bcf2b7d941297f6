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

The steps are pure: they read the run through a `RunView` (runner/state.py) and return
what should happen as effect objects (runner/effects.py) -- arming, commands, faults --
which the coordinator's actuator carries out.  Nothing here does I/O or imports the
coordinator.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from harness.control.peer_messages import ProxyArm, WireSeen
from harness.errors import ScenarioFailure
from harness.scenario import steps as model
from harness.scenario.model import Scenario

from . import effects as fx
from .state import RunView

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
                **({"section": trigger.section} if trigger.section is not None else {}),
                **({"channel": trigger.channel} if trigger.channel is not None else {})}
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


def step_id(state: StepState) -> str:
    return f"step-{state.index}"


class StepRunner:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.sc = scenario
        self.seed = seed
        self.states = [StepState(i, s) for i, s in enumerate(scenario.steps)]
        self._by_name = {s.name: st for st, s in zip(self.states, scenario.steps) if s.name}
        for state in self.states:
            self._check_supported(state)

    def _check_supported(self, state: StepState) -> None:
        fault = state.step.fault
        if isinstance(fault, model.LinkFault):  # net.* and wire steps: the proxy runs on a
            self._check_link(state, fault)      # host too (issue 14, runner/agent_proxy.py)

    def _check_link(self, state: StepState, fault: model.LinkFault) -> None:
        hosts = (self.sc.source.host, self.sc.destination.host)
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
    def tick(self, view: RunView) -> list[fx.Effect]:
        """The effects of the runner-side steps whose trigger holds, and the arming of
        the wire steps that became due."""
        out: list[fx.Effect] = []
        for state in self.states:
            if state.fired_at is not None or not self._after_done(state):
                continue
            if state.wire:
                if not state.armed:
                    out.append(self._arm(state))
                continue
            if self._occurred(state, view):
                state.occurrences += 1
                if draw(self.seed, state.index, state.occurrences,
                        state.step.on.probability):
                    out += self._fire(state, None, time.time(), view)
        return out

    def _after_done(self, state: StepState) -> bool:
        after = state.step.after
        return after is None or self._by_name[after].fired_at is not None

    def _occurred(self, state: StepState, c: RunView) -> bool:
        """Whether a new occurrence of the trigger is there (the next one to draw for)."""
        trigger, n = state.step.on, state.occurrences
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
            return n == 0 and remaining is not None and remaining < trigger.remaining.below
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
    def _arm(self, state: StepState) -> fx.Arm:
        """Hand a wire-triggered step to the proxy: its network fault, or a hold."""
        fault = state.step.fault
        net = fault if isinstance(fault, model.NetFault) else None
        state.armed = True
        return fx.Arm(state.label, ProxyArm(
            step_id(state), wire_trigger(state.step.on),
            fx.net_args(net) if net else None, net is None, state.step.on.probability))

    def on_wire(self, wire: WireSeen, at: float, view: RunView) -> list[fx.Effect]:
        """The proxy saw an armed step's trigger (and holds the stream if it was asked to);
        `at` is when, by the proxy's clock.  The step's effects."""
        state = self._state_of(wire.id)
        if state is None or state.fired_at is not None:
            return []
        return self._fire(state, wire, at, view)

    def label_of(self, step_id: str) -> str:
        state = self._state_of(step_id)
        return state.label if state is not None else step_id

    def arm_due(self) -> list[fx.Effect]:
        """Arm the wire steps that are due (before the first byte flows, and whenever a
        step they come `after` fired)."""
        return [self._arm(state) for state in self.states
                if state.wire and not state.armed and state.fired_at is None
                and self._after_done(state)]

    def _state_of(self, step_id: str) -> StepState | None:
        try:
            return self.states[int(step_id.removeprefix("step-"))]
        except (ValueError, IndexError):
            return None

    # ------------------------------------------------------------------ effects
    def _fire(self, state: StepState, wire: WireSeen | None, at: float,
              view: RunView) -> list[fx.Effect]:
        state.fired_at = view.elapsed()
        state.fired_epoch = at
        out: list[fx.Effect] = []
        if view.has_proxy:
            # the wire steps that come `after` this one watch from now on, before its
            # effect: a recovery's RECV_BITMAP goes by while `migrate-recover` runs
            out += self.arm_due()
        out += effects_of(state, wire, view)
        if state.step.do is not None:  # an action fires when it is carried out
            state.acted_at = state.fired_at
        return out

    def fault_acted(self, label: str, detail: dict[str, Any], elapsed: float) -> None:
        """A fault record of the step `label`: it fired, unless the record says it was
        skipped or could not be applied."""
        state = next((st for st in self.states if st.label == label), None)
        if state is None or state.acted_at is not None:
            return
        why = detail.get("skipped") or detail.get("error")
        if why:
            state.missed = str(why)
        else:
            state.acted_at = elapsed

    def next_time_due(self, view: RunView) -> float | None:
        """Seconds until the next time trigger holds (None: none is waiting)."""
        waits = [state.step.on.time - (view.elapsed() - self._after_time(state))
                 for state in self.states
                 if state.fired_at is None and self._after_done(state)
                 and isinstance(state.step.on, model.TimeTrigger)]
        return max(0.0, min(waits)) if waits else None

    def wants_source_stats(self) -> bool:
        """Whether a step waits on the source's numbers (remaining, progress)."""
        return any(state.fired_at is None and self._after_done(state) and isinstance(
            state.step.on, (model.RemainingTrigger, model.ProgressTrigger))
            for state in self.states)

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


def effects_of(state: StepState, wire: WireSeen | None, view: RunView) -> list[fx.Effect]:
    """What a fired step does, as effects; `wire` is the proxy's report when the wire
    triggered it (a held stream is released once the effect is done)."""
    step = state.step
    where: dict[str, Any] = {"wire": wire.data} if wire else {}
    release: tuple[fx.Effect, ...] = (fx.Release(step_id(state)),) \
        if wire is not None and wire.held else ()
    label = state.label
    if step.do is not None:
        action = step.do
        if isinstance(action, model.SetParametersAction):
            return [fx.Command(label, "source", "migrate-set-parameters",
                               action.migrate_set_parameters.qmp_arguments(), where),
                    *release]
        if action.command == "migrate-recover":
            return [fx.Recover(label, then=release)]
        peer, command = fx.COMMANDS[action.command]
        if peer == "guest":
            peer = view.guest_side()
        return [fx.Command(label, peer, command, dict(fx.ARGUMENTS.get(action.command, {})),
                           where), *release]
    fault = step.fault
    if isinstance(fault, model.ProcessFault):
        return [fx.ProcessFault(label, fault, where), *release]
    if isinstance(fault, model.LinkFault):
        return [fx.LinkFault(label, step_id(state), fault, where, then=release)]
    if isinstance(fault, model.NetFault) and wire is None:
        # a runner-side trigger: the proxy applies it from now on, and reports (FAULT)
        # where it acted, as it does for the wire-triggered ones it applied itself
        return [fx.Arm(label, ProxyArm(step_id(state), None, fx.net_args(fault), False))]
    return list(release)


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
