"""exec: channels: the pipes between the harness and its `/bin/sh -c CMD` child.

Strategy: both roles run the command the same way and differ only in which end of which
pipe is the migration stream.  Source: the stream goes into the command's stdin, and its
stdout is the return path only when asked (QEMU leaves it on /dev/null:
`io/channel-command.c`, O_WRONLY).  Destination: the stream comes from the command's
stdout, and its stdin is the return path only when asked.  The child's pipe ends are
closed in the harness right after the spawn (otherwise EOF never arrives), the harness's
ends are close-on-exec (other children must not hold them), and the stream pipe asks
for a 1 MiB buffer (fewer wake-ups per MiB).  If anything fails, every fd opened here is
closed before the error leaves.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess

from .channel import FdChannel
from .exec_child import ExecChild
from .uri import Role

__all__ = ["PIPE_SIZE", "close_fds", "exec_channel", "grow_pipe"]

PIPE_SIZE = 1024 * 1024  # /proc/sys/fs/pipe-max-size's default


def exec_channel(command: str, role: Role, *, return_path: bool,
                 exit_timeout: float) -> FdChannel:
    """Spawn the command and wrap its pipes; raises OSError if the shell cannot start."""
    stream_read, stream_write = os.pipe()
    back_read, back_write = os.pipe() if return_path else (None, None)
    ours: tuple[int | None, int | None]
    theirs: tuple[int | None, int | None]
    if role == "source":  # we write the stream, the command reads it on stdin
        ours, theirs = (back_read, stream_write), (stream_read, back_write)
    else:  # the command writes the stream on stdout, we read it
        ours, theirs = (stream_read, back_write), (back_read, stream_write)
    try:
        child = ExecChild.spawn(command, stdin=_or_null(theirs[0]), stdout=_or_null(theirs[1]))
    except BaseException:
        close_fds(*ours)
        raise
    finally:
        close_fds(*theirs)
    grow_pipe(stream_write if role == "source" else stream_read)
    return FdChannel(f"exec:{command} (pid {child.pid})", read_fd=ours[0], write_fd=ours[1],
                     child=child, exit_timeout=exit_timeout)


def _or_null(fd: int | None) -> int:
    return subprocess.DEVNULL if fd is None else fd


def grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer; ignored when the kernel refuses."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
