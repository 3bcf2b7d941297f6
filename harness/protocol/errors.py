"""Protocol errors.

Strategy (after h11): two errors for protocol trouble, both under one root.
`RemoteProtocolError` means the peer sent bytes QEMU would refuse; `LocalProtocolError`
means we were asked to produce or do something the protocol forbids.  Every error
carries the absolute byte offset in the stream where it was detected, the first
message in QEMU's own words (where QEMU has one), the follow-up lines QEMU prints
("error while loading state ..."), and the errno QEMU ends its load with, so a
peer can print exactly what a real QEMU 7.2 destination prints.
"""

from __future__ import annotations

import errno as _errno
from typing import Self

from harness.errors import ProtocolFailure

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]

#: glibc's strerror() of the errnos a QEMU load ends with ("load of migration failed: ...")
_STRERROR = {
    _errno.EINVAL: "Invalid argument",
    _errno.EIO: "Input/output error",
    _errno.ENOTSUP: "Operation not supported",
    _errno.ERANGE: "Numerical result out of range",
    _errno.ENOENT: "No such file or directory",
    _errno.EPERM: "Operation not permitted",
}


class ProtocolError(ProtocolFailure):
    """Root of every protocol error raised by `harness.protocol`."""

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        context: tuple[str, ...] | list[str] = (),
        errno: int = _errno.EINVAL,
        qemu: bool = True,
    ) -> None:
        self.message = message
        self.qemu = qemu  # False: QEMU prints no line of its own here (the message is ours)
        self.offset = offset
        self.context = tuple(context)
        self.errno = errno
        super().__init__(str(self))

    def with_context(self, line: str) -> Self:
        """Append one of QEMU's follow-up lines (outermost last)."""
        self.context = self.context + (line,)
        self.args = (str(self),)
        return self

    def at(self, offset: int) -> Self:
        """Set the offset if it is not known yet."""
        if self.offset is None:
            self.offset = offset
            self.args = (str(self),)
        return self

    @property
    def qemu_lines(self) -> list[str]:
        """The lines a QEMU 7.2 destination prints for this failure, in order."""
        own = [self.message] if self.qemu else []
        return [*own, *self.context, f"load of migration failed: {_STRERROR.get(self.errno, f'errno {self.errno}')}"]

    def __str__(self) -> str:
        where = f"offset {self.offset} (0x{self.offset:x}): " if self.offset is not None else ""
        tail = "".join(f" / {line}" for line in self.context)
        return f"{where}{self.message}{tail}"


class LocalProtocolError(ProtocolError):
    """We tried to encode or do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The bytes we received are not a stream QEMU 7.2 would accept."""
