"""Every exception class the harness defines descends from `harness.errors.HarnessError`,
through one of its four branches (or the root itself for an internal bug)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import harness
from harness.errors import (
    ControlFailure,
    EnvironmentFailure,
    HarnessError,
    ProtocolFailure,
    ScenarioFailure,
    branch_of,
)

#: control-flow signals: raised and caught inside one module, never a failure that leaves it
SIGNALS = {
    "harness.control.qmp_json._Reject",    # ends one bad JSON value inside the parser
    "harness.faults.endpoint.Stopped",     # the proxy's endpoint is told to stop
    "harness.faults.endpoint.Quiet",       # a read that found nothing within its slice
    "harness.protocol.wire.NeedData",      # the incremental decoder wants more bytes
    "harness.runner.run.Interrupted",      # a signal turned into KeyboardInterrupt
    "harness.scenario.loader._Bound",      # a YAML bound, re-raised as a ScenarioError
}


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(harness.__path__, "harness."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) \
                    and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_exception_class_of_the_package_has_the_one_root():
    classes = _exception_classes()
    assert len(classes) >= 30  # the walk found the package's errors, not nothing
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, HarnessError))
    assert outside == sorted(SIGNALS)


def test_the_branches_say_what_kind_of_failure_it_was():
    from harness.control import PeerGone
    from harness.protocol.errors import RemoteProtocolError
    from harness.qemu.launch import QemuError
    from harness.scenario import ScenarioError

    assert branch_of(PeerGone("gone")) == "control"
    assert branch_of(RemoteProtocolError("bad")) == "protocol"
    assert branch_of(QemuError("no binary")) == "environment"
    assert branch_of(ScenarioError.__new__(ScenarioError)) == "scenario"
    assert branch_of(ValueError("x")) == "internal"
    assert issubclass(PeerGone, ConnectionError)  # builtin bases stay beside the branch
    for branch in (ProtocolFailure, ControlFailure, ScenarioFailure, EnvironmentFailure):
        assert issubclass(branch, HarnessError)
