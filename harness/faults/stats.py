"""The proxy's counters: bytes and frames per flow, and the protocol events it saw.

Strategy: one lock, taken once per forwarded chunk (never per page: a batch of page
records counts with one addition), so `query-proxy` reads a consistent snapshot while
both flows of every session keep adding.  Bytes are counted where they are decided:
`received` when read from a peer, `forwarded` when handed to the receiver's socket,
`discarded` when a fault removed them (a drop, or input after a half-close or a cut);
with no fault, forwarded equals received on every flow once the sessions ended.  The
postcopy-preempt channel is a third flow, listed only by a proxy told it is on; so are
the multifd channels (`multifd-<id>`), one flow each, and a flow first counted on the fly
(a multifd connection whose init gave no usable id) is listed from then on.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from .framing import MAIN, PREEMPT, RETURN_PATH, Framing

__all__ = ["FLOWS", "Stats"]

FLOWS = (MAIN, RETURN_PATH, PREEMPT)
_PAGE_REQUESTS = ("REQ_PAGES", "REQ_PAGES_ID")


class Stats:
    """Counters of one proxy, across its sessions."""

    def __init__(self, preempt: bool = False, multifd: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        #: what query-proxy lists
        self._shown = [*(FLOWS if preempt else (MAIN, RETURN_PATH)), *multifd]
        self._bytes = {flow: _zero() for flow in (*FLOWS, *multifd)}
        self._frames: dict[str, Counter[str]] = {flow: Counter() for flow in self._bytes}
        self._seen = {"page-requests": 0, "pongs": 0, "sections": 0, "commands": 0}

    def received(self, flow: str, n: int) -> int:
        """Count `n` bytes read on `flow`; the flow's total before them."""
        with self._lock:
            counts = self._flow(flow)
            before = counts["received"]
            counts["received"] = before + n
            return before

    def total_received(self, flow: str) -> int:
        with self._lock:
            return self._flow(flow)["received"]

    def add(self, flow: str, what: str, n: int) -> None:
        """Count `n` bytes `forwarded` or `discarded` on `flow`."""
        with self._lock:
            self._flow(flow)[what] += n

    def _flow(self, flow: str) -> dict[str, int]:
        """The counters of `flow` (under the lock), listed from now on if new."""
        counts = self._bytes.get(flow)
        if counts is None:
            counts = self._bytes[flow] = _zero()
            self._frames[flow] = Counter()
            self._shown.append(flow)
        return counts

    def frames_seen(self, flow: str, framing: Framing) -> None:
        if not framing.frames and not framing.pages:
            return
        with self._lock:
            self._flow(flow)
            names = self._frames[flow]
            seen = self._seen
            for frame in framing.frames:
                names[frame.name] += 1
                if frame.kind == "section":
                    seen["sections"] += 1
                elif frame.kind == "command":
                    seen["commands"] += 1
                elif frame.name == "PONG":
                    seen["pongs"] += 1
                elif frame.name in _PAGE_REQUESTS:
                    seen["page-requests"] += 1
            if framing.pages:
                names["RAM_PAGE"] += sum(len(batch) for batch in framing.pages)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"bytes": {flow: dict(self._bytes[flow]) for flow in self._shown},
                    "frames": {flow: dict(sorted(self._frames[flow].items()))
                               for flow in self._shown},
                    **self._seen}


def _zero() -> dict[str, int]:
    return {"received": 0, "forwarded": 0, "discarded": 0}
