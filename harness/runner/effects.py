"""What a step does when it fires, as objects: the steps return them, the actuator does them.

Strategy: a fired step becomes a short list of effects -- plain frozen dataclasses that
say what to do and to whom, decided from the scenario and a read-only view of the run
(`steps.effects_of`), never doing it.  `runner/actuator.py` carries them out.  Actions go
to the peer QEMU would take them on (`migrate-cancel`, `migrate-pause`,
`migrate-start-postcopy`, `migrate-continue` -- out of pre-switchover -- and
`migrate-set-parameters` to the source; `stop`/`cont` to whichever side has the guest;
`migrate-recover` to both, as a user recovers a paused postcopy: the destination listens
again, then the source resumes).  Process faults act on the peer's whole process tree
(through its agent when the peer runs on another host); link faults are applied by the
agent of the host they name, toward the other host.  Network faults are armed in the
proxy, which applies them at the byte the trigger names; a runner-side trigger arms them
"now".  A wire-triggered step with an action or a process fault was armed with `hold`:
the proxy stopped the stream at the exact frame, and is released (`Release`) once the
effect is done -- after a slow effect (a recovery, a link fault) has finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.control.peer_messages import ProxyArm
from harness.scenario import steps as model

__all__ = ["ARGUMENTS", "COMMANDS", "Arm", "Command", "Effect", "LinkFault", "ProcessFault",
           "Recover", "Release"]

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


@dataclass(frozen=True)
class Arm:
    """Hand a step to the proxy: its network fault, or a hold at its wire trigger."""

    label: str
    request: ProxyArm


@dataclass(frozen=True)
class Command:
    """A QMP command to one peer, recorded on the timeline as the step's."""

    label: str
    peer: str
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recover:
    """migrate-recover: the destination listens anew, then the source resumes to it."""

    label: str
    then: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class ProcessFault:
    label: str
    fault: model.ProcessFault
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkFault:
    """A link fault on `fault.host`, toward the other peer's host, by that host's agent."""

    label: str
    step_id: str
    fault: model.LinkFault
    where: dict[str, Any] = field(default_factory=dict)
    then: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class Release:
    """Let the stream the proxy holds for a step go on."""

    step_id: str


Effect = Arm | Command | Recover | ProcessFault | LinkFault | Release


def net_args(fault: model.NetFault) -> dict[str, Any]:
    """A network fault as the proxy's `x-proxy-arm` takes it."""
    return fault.model_dump(mode="json", exclude_none=True)
