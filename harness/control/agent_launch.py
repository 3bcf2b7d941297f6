"""Start a peer for an agent so that it dies with its agent: `python -m harness.control.agent_launch
AGENT-PID -- COMMAND...`.

Strategy: an agent that is killed (SIGKILL, OOM, a host's power) cannot stop its peers,
and peers that outlive it would keep a guest running that nobody drives.  Linux's
PR_SET_PDEATHSIG sends a signal to a process when its parent dies; it survives execve,
so this trampoline sets it (SIGTERM: the peer then shuts down cleanly -- cancels its
migration, reaps its workload, unlinks its shared memory) and execs the peer.  If the
agent died before the prctl took effect, the parent pid is no longer the agent's and the
peer is not started at all.  It is a separate exec, not a `preexec_fn`, because the agent
has threads (zmq's, the CURVE authenticator) and `preexec_fn` is unsafe with threads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m harness.control.agent_launch AGENT-PID -- COMMAND...",
              file=sys.stderr)
        return 2
    agent_pid = int(argv[0])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        print(f"agent_launch: prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 1
    if os.getppid() != agent_pid:
        print("agent_launch: the agent is gone; not starting the peer", file=sys.stderr)
        return 1
    os.execv(argv[2], argv[2:])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
