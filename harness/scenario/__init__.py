"""Scenario files: the model (what a scenario says) and the loader (YAML -> Scenario).

Strategy: `model` holds DESIGN.md section 3's scenario file as frozen pydantic models;
`loader` reads YAML into them and turns every validation problem into one
`file:line:column: field: message` line; `units` parses sizes, rates and durations.
"""

from __future__ import annotations

from .loader import Problem, ScenarioError, load_scenario, load_scenarios, parse_scenario
from .model import (
                    Action,
                    Block,
                    BytesTrigger,
                    CommandAction,
                    CommandTrigger,
                    EventTrigger,
                    Expect,
                    Fault,
                    Guest,
                    Host,
                    LinkFault,
                    MigrationParameters,
                    NetFault,
                    PassTrigger,
                    Peer,
                    ProcessFault,
                    ProgressTrigger,
                    RemainingTrigger,
                    Scenario,
                    SetParametersAction,
                    StatusTrigger,
                    Step,
                    TimeTrigger,
                    Transport,
                    Trigger,
                    TriggerBase,
                    Workload,
)

__all__ = [
    "Action", "Block", "BytesTrigger", "CommandAction", "CommandTrigger", "EventTrigger",
    "Expect", "Fault", "Guest", "Host", "LinkFault", "MigrationParameters", "NetFault",
    "PassTrigger", "Peer", "Problem", "ProcessFault", "ProgressTrigger", "RemainingTrigger",
    "Scenario", "ScenarioError", "SetParametersAction", "StatusTrigger", "Step", "TimeTrigger",
    "Transport", "Trigger", "TriggerBase", "Workload", "load_scenario", "load_scenarios",
    "parse_scenario",
]
