"""Control plane: QMP-shaped commands and events between the runner and each peer, over zmq.

Strategy: a peer process owns a `ControlServer` (zmq ROUTER) and registers one handler per
command; the runner owns one `ControlClient` (zmq DEALER) per peer.  What crosses is typed
(`messages`: Execute, Return, Error, Event, Hello) and encoded as exactly the JSON QMP uses,
with an optional raw second frame for bulk bytes.  Every wait has a deadline, and a peer
that dies is reported (`PeerGone`), never waited on forever.
"""

from __future__ import annotations

from harness.control.address import check_address, ipc_path, new_ipc_address
from harness.control.client import ControlClient, LinkState
from harness.control.errors import (
    CommandError,
    ControlError,
    ControlTimeout,
    PeerGone,
    ProtocolMessageError,
)
from harness.control.messages import (
    COMMAND_NOT_FOUND,
    DEVICE_NOT_ACTIVE,
    DEVICE_NOT_FOUND,
    GENERIC_ERROR,
    KVM_MISSING_CAP,
    QMP_ERROR_CLASSES,
    Error,
    Event,
    Execute,
    Hello,
    Kind,
    Message,
    Return,
    decode,
    encode,
    from_frames,
    to_frames,
)
from harness.control.qmp_socket import QmpSocketError, QmpSocketServer
from harness.control.server import BlobResult, ControlServer, Handler, ServerState

__all__ = [
    "COMMAND_NOT_FOUND", "DEVICE_NOT_ACTIVE", "DEVICE_NOT_FOUND", "GENERIC_ERROR",
    "KVM_MISSING_CAP", "QMP_ERROR_CLASSES", "BlobResult", "CommandError", "ControlClient",
    "ControlError", "ControlServer", "ControlTimeout", "Error", "Event", "Execute", "Handler",
    "Hello", "Kind", "LinkState", "Message", "PeerGone", "ProtocolMessageError",
    "QmpSocketError", "QmpSocketServer", "Return",
    "ServerState", "check_address", "decode", "encode", "from_frames", "ipc_path",
    "new_ipc_address", "to_frames",
]
