"""QEMU 7.2's migration stream and return path, sans-IO.

Decode with `StreamDecoder` / `ReturnPathDecoder` (feed bytes, pull events), encode with
`StreamEncoder` and the command / return-path dataclasses.  No sockets, threads, clocks,
zmq or psutil in this package: only the standard library and numpy.
"""

from __future__ import annotations

from .commands import (
    Command,
    EnableColo,
    OpenReturnPath,
    Packaged,
    Ping,
    PostcopyAdvise,
    PostcopyListen,
    PostcopyRamDiscard,
    PostcopyResume,
    PostcopyRun,
    RecvBitmapRequest,
    discard_commands,
    encode_command,
)
from .constants import MigCmd, RamFlag, RpMsg, SectionType, TARGET_PAGE_SIZE
from .decoder import NEED_DATA, StreamDecoder, decode_all
from .encoder import StreamEncoder
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    Configuration,
    DeviceState,
    EndOfStream,
    Event,
    PackagedEnd,
    PackagedStart,
    RamBlockInfo,
    RamEos,
    RamMemSize,
    RamPages,
    SectionFooter,
    SectionHeader,
    StreamClosed,
    StreamHeader,
    StreamWarning,
    VmDescription,
)
from .return_path import (
    Pong,
    RecvBitmap,
    ReqPages,
    ReqPagesId,
    ResumeAck,
    ReturnPathDecoder,
    RpMessage,
    Shut,
    encode_rp,
    pack_received_bitmap,
)
from .vmstate import DeviceDescription, Field, VMStateDescription, devices_from_vmdesc

__all__ = [name for name in dir() if not name.startswith("_")]
