"""The owner's side of a postcopy guest's fault path: where its page requests go.

Strategy: a destination guest under postcopy writes its page requests itself (the
workload process plays the vCPU and QEMU's fault thread at once).  `FaultFds` owns the
fds of that path: the request fd the workload writes on -- a dup of the return path's
socket (no hop in between) or the write end of a pipe the owner relays -- and the wake
pipe (a byte wakes a waiting guest).  A socket can die under the workload (postcopy
recovery: the migration channel breaks and a new one replaces it), and an OS process
cannot swap an fd in another one; so a direct fault path also has a handoff: a unix
datagram socketpair over which `handoff()` passes the new socket (SCM_RIGHTS) and then
bumps the control word REQUEST_FD_GEN.  The workload adopts the new socket before its
next request, and re-sends a request that its dead socket refused (workload.py).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import numpy as np

from .workload import Ctl


@dataclass
class FaultFds:
    relay_r: int  # read end of the request pipe; -1 when requests go to a socket
    wake_w: int
    request_w: int  # what the workload writes its requests on (socket dup or pipe)
    wake_r: int
    handoff: socket.socket | None  # owner's end of the handoff socketpair (direct only)
    handoff_peer: int  # the workload's end; -1 without

    @classmethod
    def create(cls, request_fd: int | None) -> FaultFds:
        """Requests to a dup of `request_fd` (a socket), or to a pipe when None."""
        handoff: socket.socket | None = None
        peer = -1
        if request_fd is None:
            relay_r, request_w = os.pipe()
        else:
            relay_r, request_w = -1, os.dup(request_fd)
            handoff, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            handoff.setblocking(False)  # a workload that reads nothing never blocks us
            peer = theirs.detach()
        wake_r, wake_w = os.pipe()
        return cls(relay_r, wake_w, request_w, wake_r, handoff, peer)

    @property
    def direct(self) -> bool:
        return self.handoff is not None

    def for_workload(self) -> tuple[int, ...]:
        """The fds the workload process inherits, in the order `_Faults` takes them."""
        if self.handoff_peer < 0:
            return (self.request_w, self.wake_r)
        return (self.request_w, self.wake_r, self.handoff_peer)

    def handoff_socket(self, control: np.ndarray, fd: int, workload_started: bool) -> None:
        """Page requests go to the socket `fd` from now on (a dup is kept).

        A running workload gets it over the handoff socketpair, then REQUEST_FD_GEN is
        bumped (in that order: whoever sees the new generation finds the fd there); a
        workload not started yet simply inherits it."""
        if self.handoff is None:
            raise RuntimeError("the guest's page requests go through a relay, not a socket")
        if workload_started:
            try:
                socket.send_fds(self.handoff, [b"fd"], [fd])
            except BlockingIOError:  # the workload took none of the earlier ones: it is gone
                return
            control[Ctl.REQUEST_FD_GEN] += 1
        old, self.request_w = self.request_w, os.dup(fd)
        os.close(old)

    def close(self) -> None:
        for fd in (self.relay_r, self.wake_w, self.request_w, self.wake_r, self.handoff_peer):
            if fd >= 0:
                os.close(fd)
        if self.handoff is not None:
            self.handoff.close()
