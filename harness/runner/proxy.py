"""The runner's handle on the protocol-aware proxy process (`harness proxy`).

Strategy: the proxy is one more controlled process (harness.runner.peers), started only
when a scenario has network faults or wire triggers, between the destination's listening
address and the source: the source migrates to the proxy, the proxy connects on to the
destination.  After `migrate-recover` the destination listens elsewhere and the proxy is
told so (`x-proxy-target`); the source resumes to the same proxy address.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .peers import ControlledProcess, PeerError


@dataclass
class ProxyHandle(ControlledProcess):
    role: str
    workdir: Path
    listen: str  # where the source connects (tcp port 0: the proxy picks)
    target: str  # where the destination listens
    seed: int = 0
    kind: str = "proxy"
    record: Path | None = None  # keep what it delivers there (harness run --record)
    preempt: bool = False  # postcopy-preempt: a second connection follows each main one
    multifd: int = 0  # multifd: this many connections follow each main one
    tls: Path | None = None  # tls: terminated in the proxy, with the run's certificates here

    def __post_init__(self) -> None:
        self._init_process()

    def command_line(self) -> list[str]:
        record = ["--record", str(self.record)] if self.record is not None else []
        return [sys.executable, "-m", "harness", "proxy", "--control", self.address,
                "--listen", self.listen, "--target", self.target, "--seed", str(self.seed),
                *record, *(["--preempt"] if self.preempt else []),
                *(["--multifd", str(self.multifd)] if self.multifd else []),
                *(["--tls", str(self.tls)] if self.tls is not None else [])]

    def address_for_source(self, timeout: float = 10.0) -> str:
        """The URI the source should migrate to (the proxy's actual listening address)."""
        deadline = time.monotonic() + timeout
        while True:
            info: dict[str, Any] = self.execute("query-proxy") or {}
            uri = info.get("listen")
            if isinstance(uri, str) and not uri.endswith(":0"):
                return uri
            if time.monotonic() > deadline:
                raise PeerError(f"the proxy did not report its listening address: {info}")
            time.sleep(0.01)
