"""The runner's end of an agent connection: a `ControlClient` that may speak CURVE.

Strategy: an agent answers in the control plane's QMP shapes, so the runner's client is
the peers' `ControlClient` (its deadlines, its connection monitor that turns a dead agent
into `PeerGone`, its event queue), with one addition: CURVE keys applied to the DEALER
before it connects (an agent off loopback accepts nobody else).  An agent ignores a
client with the wrong keys without a word (the handshake fails below zmq's messages), so
the caller's deadline is what tells, and its message should say that keys may be why.
"""

from __future__ import annotations

from typing import Any

import zmq

from harness.control.client import ControlClient
from harness.control.curve import ClientKeys

__all__ = ["AgentClient"]


class AgentClient(ControlClient):
    """A control client for an agent; `keys` None means plain TCP (a loopback agent)."""

    def __init__(self, address: str, *, timeout: float, keys: ClientKeys | None = None,
                 context: zmq.Context[Any] | None = None) -> None:
        self._keys = keys
        super().__init__(address, timeout=timeout, context=context)

    def _connect(self, address: str) -> zmq.Socket[Any]:
        if self._keys is not None:
            self._keys.apply(self._sock)
        return super()._connect(address)
