"""One root for every error the harness raises on purpose, with four branches.

Strategy: a caller decides by branch, not by module: `ProtocolFailure` -- a migration
stream or a peer's protocol is not what QEMU 7.2 writes or accepts; `ControlFailure` --
the control plane (a peer, an agent, a QMP monitor) did not answer as it must;
`ScenarioFailure` -- what a user gave us (a scenario, an inventory, a report, arguments)
is invalid; `EnvironmentFailure` -- this machine or a host could not do what the run
needs (a binary, an agent, a network, a process that would not start).  Each module keeps
its own classes (`harness.protocol.errors.ProtocolError`, `harness.control.ControlError`,
...) and roots them here; builtin bases (ValueError, TimeoutError, ...) stay beside, so
generic code keeps working.  A test checks that every exception class of the package
descends from `HarnessError`: `except HarnessError` is the whole list of what we raise.
"""

from __future__ import annotations

__all__ = ["ControlFailure", "EnvironmentFailure", "HarnessError", "ProtocolFailure",
           "ScenarioFailure", "branch_of"]


class HarnessError(Exception):
    """Root of every exception the harness raises on purpose."""


class ProtocolFailure(HarnessError):
    """A migration stream, or a peer's protocol, is not what QEMU 7.2 writes or accepts."""


class ControlFailure(HarnessError):
    """The control plane (a peer, an agent, a QMP or HMP monitor) failed to answer right."""


class ScenarioFailure(HarnessError):
    """Input a user gave the harness is invalid: a scenario, an inventory, arguments."""


class EnvironmentFailure(HarnessError):
    """The machine or a host cannot do what the run needs."""


BRANCHES = (ProtocolFailure, ControlFailure, ScenarioFailure, EnvironmentFailure)


def branch_of(error: BaseException) -> str:
    """'protocol', 'control', 'scenario', 'environment', or 'internal' (not ours)."""
    for branch in BRANCHES:
        if isinstance(error, branch):
            return branch.__name__.removesuffix("Failure").lower()
    return "internal"
