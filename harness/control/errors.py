"""Errors of the control plane.

Strategy: one root, `ControlError`, so a runner can catch everything the control plane
raises in one clause; below it one class per thing a caller reacts to differently.
`CommandError` is an ordinary QMP error reply (class and desc as QEMU names them);
`ControlTimeout` and `PeerGone` are the two ways a peer fails to answer (still there but
silent, or its connection is known to be gone) and also subclass the builtin
`TimeoutError` / `ConnectionError` so generic code handles them sensibly;
`ProtocolMessageError` is a message that is not valid control-plane JSON.  Every class
keeps its constructor arguments in `args`, so the errors pickle across processes.
"""

from __future__ import annotations

from harness.errors import ControlFailure

__all__ = ["CommandError", "ControlError", "ControlTimeout", "PeerGone", "ProtocolMessageError"]


class ControlError(ControlFailure):
    """Root of every error raised by `harness.control`."""


class ProtocolMessageError(ControlError):
    """Bytes that are not a control-plane message (bad JSON, unknown shape, wrong types)."""


class CommandError(ControlError):
    """A QMP error reply: `error_class` ("GenericError", "CommandNotFound", ...) and `desc`.

    Handlers raise it to answer with that error; clients raise it when one arrives.
    """

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(error_class, desc)
        self.error_class = error_class
        self.desc = desc

    def __str__(self) -> str:
        return f"{self.error_class}: {self.desc}"


class ControlTimeout(ControlError, TimeoutError):
    """No reply (or event) within the deadline; the message names what, where and how long."""


class PeerGone(ControlError, ConnectionError):
    """The peer's connection is gone (process exited or killed), so no reply can come."""
