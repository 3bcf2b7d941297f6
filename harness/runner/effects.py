"""What a step does when it fires: a QMP action, a process fault, or a network fault.

Strategy: one function per kind of effect, each leaving a record on the timeline and, for
faults, in the run's fault list (what fired, when, where).  Actions go to the peer QEMU
would take them on (`migrate-cancel`, `migrate-pause`, `migrate-start-postcopy`,
`migrate-continue` -- out of pre-switchover -- and `migrate-set-parameters` to the source;
`stop`/`cont` to whichever side has the guest;
`migrate-recover` to both, as a user recovers a paused postcopy: the destination listens
again, then the source resumes).  Process faults act on the peer's whole process tree
(harness.faults.process) -- through its agent when the peer runs on another host -- and
link faults are applied by the agent of the host they name, toward the other host.  Network faults are armed in the proxy, which applies them at
the byte the trigger names; a runner-side trigger arms them "now".  A wire-triggered
step with an action or a process fault was armed with `hold`: the proxy stopped the
stream at the exact frame, and is released once the effect is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.control import CommandError, ControlError
from harness.faults import process
from harness.scenario import steps as model

from .agent_peer import AgentPeer

if TYPE_CHECKING:
    from .coordinator import Coordinator
    from .steps import StepState

#: plain action -> (peer, QMP command); "guest" is whichever side has the guest (also the
#: monitor's)
COMMANDS = {
    "migrate-cancel": ("source", "migrate_cancel"),
    "migrate-start-postcopy": ("source", "migrate-start-postcopy"),
    "migrate-pause": ("source", "migrate-pause"),
    "migrate-continue": ("source", "migrate-continue"),
    "stop": ("guest", "stop"),
    "cont": ("guest", "cont"),
}
#: the arguments a plain action's command takes (`migrate-continue` leaves the one pause
#: QEMU 7.2 has: pause-before-switchover's)
ARGUMENTS: dict[str, dict[str, Any]] = {"migrate-continue": {"state": "pre-switchover"}}


def step_id(state: StepState) -> str:
    return f"step-{state.index}"


def arm_in_proxy(c: Coordinator, state: StepState) -> None:
    """Hand a wire-triggered step to the proxy: its network fault, or a hold."""
    from .steps import wire_trigger

    fault = state.step.fault
    net = fault if isinstance(fault, model.NetFault) else None
    args: dict[str, Any] = {"id": step_id(state), "trigger": wire_trigger(state.step.on),
                            "probability": state.step.on.probability,
                            "fault": _net_args(net) if net else None, "hold": net is None}
    c.proxy_execute("x-proxy-arm", args)
    c.note("runner", "armed", {"step": state.label, "trigger": args["trigger"],
                               "fault": args["fault"], "hold": args["hold"]})


def carry_out(c: Coordinator, state: StepState, wire: dict[str, Any] | None) -> None:
    """Do what the step says; `wire` is the proxy's report when the wire triggered it."""
    step = state.step
    where = {"wire": wire} if wire else {}
    try:
        if step.do is not None:
            _action(c, state.label, step.do, where)
        elif isinstance(step.fault, model.ProcessFault):
            _process_fault(c, state.label, step.fault, where)
        elif isinstance(step.fault, model.LinkFault):
            c.link_fault(state.label, step.fault, step_id(state), where)
        elif isinstance(step.fault, model.NetFault) and wire is None:
            # a runner-side trigger: the proxy applies it from now on, and reports (FAULT)
            # where it acted, as it does for the wire-triggered ones it applied itself
            c.proxy_execute("x-proxy-arm", {"id": step_id(state), "trigger": None,
                                            "fault": _net_args(step.fault), "hold": False})
            c.note("runner", "armed", {"step": state.label, "trigger": None,
                                       "fault": _net_args(step.fault)})
    finally:
        if wire is not None and wire.get("held"):
            c.proxy_execute("x-proxy-release", {"id": step_id(state)})


def _net_args(fault: model.NetFault) -> dict[str, Any]:
    return fault.model_dump(mode="json", exclude_none=True)


def _action(c: Coordinator, label: str, action: Any, where: dict[str, Any]) -> None:
    if isinstance(action, model.SetParametersAction):
        _command(c, label, "source", "migrate-set-parameters",
                 action.migrate_set_parameters.qmp_arguments(), where)
        return
    if action.command == "migrate-recover":
        c.recover(label)
        return
    peer, command = COMMANDS[action.command]
    if peer == "guest":
        peer = "destination" if c.status["destination"] in ("completed", "postcopy-active",
                                                           "postcopy-paused") else "source"
    _command(c, label, peer, command, dict(ARGUMENTS.get(action.command, {})), where)


def _command(c: Coordinator, label: str, peer: str, command: str, arguments: dict[str, Any],
             where: dict[str, Any]) -> None:
    data: dict[str, Any] = {"step": label, "peer": peer, "command": command, **where}
    try:
        data["result"] = c.peer(peer).execute(command, arguments)
    except CommandError as err:
        data["error"] = err.desc
    except ControlError as err:  # the peer is gone (killed by an earlier step...)
        data["error"] = f"the {peer} did not answer: {err}"
    c.note("runner", "step", data)


def _process_fault(c: Coordinator, label: str, fault: model.ProcessFault,
                   where: dict[str, Any]) -> None:
    peer = c.peer(fault.target)
    pid = peer.pid
    if pid is None or not peer.alive():
        c.record_fault(label, fault.kind, fault.target, {**where, "skipped": "not running"})
        return
    if isinstance(peer, AgentPeer):
        _remote_process_fault(c, label, fault, peer, where)
        return
    if fault.kind == "kill":
        hit = process.kill(pid)
    elif fault.kind == "crash":
        hit = process.crash(pid)
    else:
        frozen = process.freeze(pid)
        c.frozen[fault.target] = frozen
        if fault.duration is not None:
            c.after(fault.duration, lambda: c.thaw(fault.target, label))
        hit = frozen.pids
    c.record_fault(label, fault.kind, fault.target,
                   {**where, "pids": hit, **({"duration": fault.duration}
                                              if fault.duration is not None else {})})


def _remote_process_fault(c: Coordinator, label: str, fault: model.ProcessFault,
                          peer: AgentPeer, where: dict[str, Any]) -> None:
    """The same faults on a peer of another host, applied by its agent to its session."""
    detail: dict[str, Any] = {**where, "host": peer.host}
    try:
        if fault.kind == "stop":
            frozen = peer.freeze()
            c.frozen[fault.target] = frozen
            if fault.duration is not None:
                c.after(fault.duration, lambda: c.thaw(fault.target, label))
            detail["pids"] = frozen.pids
        else:
            reply = peer.fault(fault.kind)
            detail["pids"] = reply.get("pids", [])
    except ControlError as err:
        detail["error"] = f"the agent of host {peer.host} did not apply it: {err}"
    if fault.duration is not None:
        detail["duration"] = fault.duration
    c.record_fault(label, fault.kind, fault.target, detail)
