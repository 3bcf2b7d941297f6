"""A real QEMU peer on an agent's host, and what the runner reads of it there.

Strategy: `RemoteQemuPeer` is an `AgentPeer` (commands relayed by the host's agent,
process faults applied by it to the peer's session, the final stop and leftovers) whose
process is the QEMU wrapper of harness/qemu/served.py, started with `peer-start` kind
"qemu" and options built here from the scenario (`qemu_options`: the machine, memory,
the accelerator asked for -- resolved on that host --, the real guest's program, Host.qemu
as the binary).  It offers what runner/real_guest.py and the coordinator use of a local
QemuPeer: facts, runstate, heartbeat, serial tail, `paused`, `program`.  Its RAM never
crosses: `read_memory` asks each host for a summary of its side (digests per page and,
for a real guest, its wave; harness/realguest/hashed.py) and gives the invariants a page
fetch for the few pages a message quotes; the bytes received for the oracle are counted
and put in each side's facts (`oracle-bytes-received`, beside `memory-bytes`).  Across
from a harness peer, the QEMU side's digests are the harness's own kind (`{"digests":
"harness"}`) and the harness side gives `digests(at_incoming=True)`, as locally
(real_guest._read_memory), so memory-identical compares them as a local run does.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.control import ControlError
from harness.control import agent_messages as am
from harness.control.agent_qemu import QemuSpec

from .agent_peer import START_TIMEOUT, AgentPeer
from .state import RunContext

if TYPE_CHECKING:
    from harness.invariants import Evidence
    from harness.realguest.hashed import MemorySummary
    from harness.realguest.heartbeat import Heartbeat


__all__ = ["RemoteQemuPeer", "learn_remote_layout", "qemu_options", "read_memory"]

MEMORY_TIMEOUT = 180.0  # s: a snapshot and the digests of a large guest, on its host
LAYOUT_TIMEOUT = 60.0


class RemoteQemuPeer(AgentPeer):
    """A QEMU an agent runs for this run (a PeerHandle, kind "qemu")."""

    kind = "qemu"

    def __init__(self, role: str, conn: Any, spec: QemuSpec, program: Any) -> None:
        super().__init__(role, conn, {}, incoming=role == "destination")
        self.spec = spec
        self.program = program
        self.paused = spec.paused
        self.machine = spec.machine
        self.binary = spec.binary
        self.oracle_bytes = 0  # bytes of replies received for the memory oracle
        self._facts: dict[str, Any] = {}

    def start_request(self) -> am.PeerStart:
        return am.PeerStart(self.role, self.role, {},  # type: ignore[arg-type]
                            incoming=self.incoming, paused=self.paused, kind="qemu",
                            options=self.spec.options())

    def _started(self, reply: dict[str, Any]) -> None:
        super()._started(reply)
        self._facts = self._ask_facts()

    def _ask_facts(self) -> dict[str, Any]:
        try:
            facts = dict(self.execute("x-qemu-facts", timeout=20))
        except ControlError:
            return dict(self._facts)
        return {**facts, "host": self.host, "agent": self.conn.url}

    def facts(self) -> dict[str, Any]:
        """As QemuPeer.facts, plus where it ran: host, hostname, binary."""
        if self.alive():
            self._facts = self._ask_facts() or self._facts
        return {**self._facts, "host": self.host}

    def heartbeat(self) -> Heartbeat | None:
        """The guest's heartbeat; ValueError while the guest does not run its loop yet."""
        from harness.realguest.heartbeat import Heartbeat

        if self.program is None:
            return None
        reply = self.execute("x-heartbeat", timeout=10)
        if reply.get("heartbeat") is None:
            raise ValueError(str(reply.get("error", "no heartbeat")))
        return Heartbeat(**reply["heartbeat"])

    def serial_text(self, limit: int = 4096) -> str:
        try:
            return str(self.execute("x-serial-tail", {"limit": min(limit, 1 << 16)},
                                    timeout=10)["text"])
        except ControlError:
            return ""

    def memory_summary(self, digests: str = "blake2b") -> MemorySummary:
        """Every RAM block, read and digested on its host (harness/realguest/hashed.py);
        `digests` "harness": pages digested as a harness peer digests its own."""
        from harness.realguest.hashed import summary_from_message

        self._check()
        arguments = {} if digests == "blake2b" else {"digests": digests}
        value, blob = self.conn.request_blob(am.PeerExecute(
            self.role, "x-memory-evidence", arguments), timeout=MEMORY_TIMEOUT)
        self.oracle_bytes += len(blob or b"") + len(json.dumps(value))
        try:
            summary = summary_from_message(value, blob)
        except ValueError as err:
            raise ControlError(f"the {self.role} on host {self.host}: {err}") from None
        if summary.kind != digests:
            raise ControlError(f"the {self.role} on host {self.host} sent {summary.kind} "
                               f"digests, not {digests}")
        return summary

    def pages(self, block: str, indexes: list[int]) -> dict[int, bytes]:
        """The bytes of a few pages of `block` as last read (for a message)."""
        self._check()
        value, blob = self.conn.request_blob(am.PeerExecute(
            self.role, "x-memory-pages", {"block": block, "pages": indexes}), timeout=30)
        self.oracle_bytes += len(blob or b"") + len(json.dumps(value))
        out, offset = {}, 0
        for entry in value["pages"]:
            length = int(entry["length"])
            out[int(entry["index"])] = (blob or b"")[offset:offset + length]
            offset += length
        return out

    def digests(self, at_incoming: bool = False) -> dict[str, np.ndarray] | None:
        """As QemuPeer.digests: the harness's page_digests of every block (taken on the
        host), comparable with a harness peer's own."""
        return dict(self.memory_summary("harness").hashes)

    def check_intact(self) -> dict[str, int] | None:
        return None


def qemu_options(c: RunContext, role: str, held: bool, real: bool) -> QemuSpec:
    """The spec of the scenario's QEMU `role` for its host's agent."""
    from harness.scenario.model import Scenario

    sc: Scenario = c.sc
    spec = sc.source if role == "source" else sc.destination
    host = sc.hosts[spec.host] if spec.host else None
    binary = str(host.qemu) if host is not None and host.qemu else None
    options: dict[str, Any] = {"machine": sc.guest.machine, "memory": sc.guest.total_memory,
                               "accel": sc.guest.accel if real else "tcg",
                               "args": list(spec.args), "binary": binary, "paused": held}
    if real:
        w = sc.guest.workload
        options["program"] = {"memory": sc.guest.total_memory, "dirty_rate": int(w.dirty_rate),
                              "pattern": "hotset" if w.pattern == "hotset" else "uniform",
                              "hotset": w.hotset if w.pattern == "hotset" else None}
    elif role == "source":
        options["loader"] = {"seed": c.seed, "fill": float(sc.guest.fill),
                             "compressible": sc.guest.content == "compressible"}
    options = {k: v for k, v in options.items() if v is not None}
    return QemuSpec.from_options(role, options)


def learn_remote_layout(c: RunContext, held: bool) -> dict[str, Any]:
    """The source machine's layout ({layout, key, probe}), learnt on the source's host
    with its binary by a short-lived wrapper in probe mode (the agent's loop never waits
    on it; the probe runs in that wrapper, and the layout is cached on that host)."""
    spec = qemu_options(c, "source", held, real=True)
    conn = c.agents[c.sc.source.host]  # type: ignore[index]
    conn.request(am.PeerStart("layout-probe", "source", {}, kind="qemu",
                              options={**spec.options(), "mode": "probe"}),
                 timeout=START_TIMEOUT)
    try:
        return dict(conn.request(am.PeerExecute("layout-probe", "x-layout", {}),
                                 timeout=LAYOUT_TIMEOUT))
    finally:
        conn.request(am.PeerStop("layout-probe"), timeout=40)


# ---------------------------------------------------------------------- the oracle
def read_memory(c: RunContext, evidence: Evidence, want: str, src: Any, dst: Any,
                readable: Any) -> None:
    """real_guest._read_memory for QEMUs on hosts: summaries, never RAM.  A harness peer
    on the other side gives its own digests, and the QEMU's are asked in its kind."""
    completed = c.status["destination"] == "completed"
    kind = "blake2b" if all(isinstance(p, RemoteQemuPeer) for p in (src, dst)) else "harness"
    if readable(c, src):
        evidence.source_summary = _summary(c, src, evidence, kind)
    if want in ("identical", "consistent") and completed and readable(c, dst):
        if isinstance(dst, RemoteQemuPeer):
            evidence.destination_summary = _summary(c, dst, evidence, kind)
        else:  # a harness destination: what its load left, block by block (as locally)
            evidence.destination_digests = _harness_digests(c, dst)
    for side in ("source", "destination"):
        summary = getattr(evidence, f"{side}_summary")
        if summary is not None:
            setattr(evidence, f"{side}_digests", dict(summary.hashes))
    if evidence.source_summary is not None:
        evidence.reference_blocks = list(evidence.source_summary.notes.get("reference-blocks")
                                         or [])

    def fetch(side: str, block: str, pages: list[int]) -> dict[int, bytes]:
        peer = src if side == "source" else dst
        out = peer.pages(block, pages)
        _count(evidence, peer)
        return out
    evidence.page_fetch = fetch


def _harness_digests(c: RunContext, peer: Any) -> dict[str, np.ndarray] | None:
    try:
        return peer.digests(at_incoming=True)
    except ControlError as err:
        c.note(peer.role, "memory-unreadable", {"error": str(err),
                                                "host": getattr(peer, "host", None)})
        return None


def _summary(c: RunContext, peer: Any, evidence: Evidence, kind: str) -> Any:
    if not isinstance(peer, RemoteQemuPeer):  # a harness source: none of this reads it
        return None
    started = time.monotonic()
    try:
        summary = peer.memory_summary(kind)
    except ControlError as err:
        c.note(peer.role, "memory-unreadable", {"error": str(err), "host": peer.host})
        return None
    c.note(peer.role, "memory-read", {
        "host": peer.host, "blocks": summary.notes.get("blocks"),
        "seconds": round(time.monotonic() - started, 3),
        "resumed": summary.notes.get("resumed"), "oracle-bytes": peer.oracle_bytes,
        "reference-blocks": summary.notes.get("reference-blocks"), "digests": kind})
    _count(evidence, peer, sum(summary.sizes.values()))
    return summary


def _count(evidence: Evidence, peer: RemoteQemuPeer, memory: int | None = None) -> None:
    """The report's facts say how many bytes crossed for the oracle (not the RAM)."""
    outcome = evidence.source if peer.role == "source" else evidence.destination
    facts = dict(outcome.facts or {})
    facts["oracle-bytes-received"] = peer.oracle_bytes
    if memory is not None:
        facts["memory-bytes"] = memory
    outcome.facts = facts


def placement_problems(sc: Any, remote: list[str]) -> list[str]:
    """What of QEMU peers on hosts this runner cannot do (empty: fine).  Nothing left: a
    harness destination on a host gets a real machine's layout inline (peer-start
    options), and a QEMU beside a harness peer sends the harness's digest kind."""
    return []
