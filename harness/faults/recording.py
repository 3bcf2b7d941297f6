"""What the proxy delivered, kept: `harness run --record` when no harness peer records.

Strategy: a recording is two files in a directory the caller names (the run's work
directory): `stream.fwd.bin`, every byte the proxy delivered to the destination (after its
faults: what the destination received, as a harness destination's own recording is), and
`stream.rp.bin`, the return path as the source received it.  Connections after the first
(postcopy recovery) continue the same files, as the stream itself continues.  With
postcopy-preempt on, a third file, `stream.preempt.bin`, holds what the preempt channel
delivered (every preempt connection in turn, as the destination read them); with multifd,
`stream.multifd-<id>.bin` per channel holds what that channel delivered (bytes a
connection forwarded before its init named it are not kept).  The files are
created new (mode 0600, never an existing file truncated); writes from the two pump
threads are serialised per file.  `harness analyze stream.fwd.bin --return-path
stream.rp.bin --preempt stream.preempt.bin` reads them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

from .framing import MAIN, PREEMPT, RETURN_PATH
from .multifd import multifd_flows

FILES = {MAIN: "stream.fwd.bin", RETURN_PATH: "stream.rp.bin"}
PREEMPT_FILE = "stream.preempt.bin"


def multifd_file(flow: str) -> str:
    """stream.multifd-<id>.bin, the recording of the multifd channel `flow`."""
    return f"stream.{flow}.bin"


class Recording:
    def __init__(self, directory: Path, preempt: bool = False, multifd: int = 0) -> None:
        if not directory.is_dir():
            raise ValueError(f"--record {directory}: not a directory")
        names = {**FILES, PREEMPT: PREEMPT_FILE} if preempt else dict(FILES)
        names.update({flow: multifd_file(flow) for flow in multifd_flows(multifd)})
        self._locks = {flow: threading.Lock() for flow in names}
        self._files: dict[str, BinaryIO] = {}
        self.paths = {flow: directory / name for flow, name in names.items()}
        try:
            for flow, path in self.paths.items():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                self._files[flow] = os.fdopen(fd, "wb")
        except FileExistsError as err:
            created = [self.paths[flow] for flow in self._files]
            self.close()
            for path in created:  # ours, and empty: nothing of anyone else's is touched
                path.unlink(missing_ok=True)
            raise ValueError(f"--record {directory}: {Path(str(err.filename)).name} exists "
                             "already (a recording is never written over)") from None

    def write(self, flow: str, data: bytes | bytearray | memoryview) -> None:
        lock = self._locks.get(flow)
        if lock is None:  # a multifd connection not named yet, or with a bad init
            return
        with lock:
            out = self._files.get(flow)
            if out is not None:
                out.write(data)

    def close(self) -> None:
        """Flush and close every file; idempotent."""
        for flow, lock in self._locks.items():
            with lock:
                out = self._files.pop(flow, None)
            if out is not None:
                out.close()
