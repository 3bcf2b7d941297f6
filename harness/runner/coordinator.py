"""The coordinator: run one scenario from start to verdict.

Strategy (after locust / pytest-xdist): one loop owns all state.  It starts the destination
and then the source (harness processes or real QEMUs), sets capabilities (always with
`events`, so statuses arrive as events) and parameters on both, starts the incoming side
and the migration, and then loops: pull events from both peers, record them on the
timeline, fire the scenario's steps whose triggers hold, and stop when both peers have
settled, a peer died, or the scenario's deadline passed.  Then it collects the final
statuses, statistics, runstates and per-page digests, runs the invariants, and always
closes (reaps) both peers.  A failure of the harness itself (a peer that cannot start, a
deadline) is the verdict `error`; an unmet expectation is `fail`.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.control import CommandError, ControlError
from harness.invariants import Evidence, check_all
from harness.invariants.base import Expectations
from harness.migration.status import FINAL
from harness.qemu import QemuError
from harness.scenario.model import Scenario

from .peers import HarnessPeer, PeerError, PeerHandle, QemuPeer, short_dir
from .result import PeerOutcome, ScenarioResult, TimelineEntry
from .steps import StepRunner, UnsupportedStep

log = logging.getLogger(__name__)

SETTLE = 10.0  # after the source ended, how long the destination gets to notice
POLL = 0.02
FD_NAME = "migfd"


class RunError(RuntimeError):
    """The harness could not run the scenario (verdict `error`)."""


class Coordinator:
    def __init__(self, scenario: Scenario, workdir: Path, seed: int | None = None,
                 progress: Callable[[str, dict[str, Any]], None] | None = None,
                 record: bool = False) -> None:
        self.sc = scenario
        self.workdir = workdir
        self.seed = scenario.seed if seed is None else seed
        self.progress = progress or (lambda what, info: None)
        self.rng = random.Random(self.seed)
        self.t0 = time.monotonic()
        self.result = ScenarioResult(scenario.name, str(scenario.source_file or ""), self.seed,
                                     workdir=str(workdir))
        self.status = {"source": "none", "destination": "none"}
        self.statuses: dict[str, list[str]] = {"source": [], "destination": []}
        self.passes = 0
        self.refused: str | None = None
        self._fds: list[socket.socket] = []
        self._dirs: list[Path] = []
        self.src: PeerHandle | None = None
        self.dst: PeerHandle | None = None
        self.record = record  # save both directions of the stream in the work directory

    # ------------------------------------------------------------------ run
    def run(self) -> ScenarioResult:
        deadline = self.t0 + self.sc.timeout
        try:
            self._start_peers()
            self._configure()
            steps = StepRunner(self.sc.steps, self)
            self._begin()
            self._loop(steps, deadline)
            self._collect()
        except (RunError, UnsupportedStep, ControlError, OSError, TimeoutError) as err:
            self.result.verdict = "error"
            self.result.reason = str(err)
            self._collect_quietly()
        except Exception as err:  # noqa: BLE001 - a bug of ours: still a verdict, no traceback
            import traceback

            (self.workdir / "runner-error.txt").write_text(traceback.format_exc())
            self.result.verdict = "error"
            self.result.reason = (f"internal error: {type(err).__name__}: {err} "
                                  f"(traceback in {self.workdir / 'runner-error.txt'})")
            self._collect_quietly()
        finally:
            self._close()
        self.result.duration = time.monotonic() - self.t0
        return self.result

    def note(self, peer: str, name: str, data: dict[str, Any] | None = None) -> None:
        self.result.timeline.append(TimelineEntry(time.monotonic() - self.t0, peer, name,
                                                  data or {}))

    # ------------------------------------------------------------------ start
    def _guest_json(self) -> dict[str, Any]:
        g = self.sc.guest
        workload = g.workload
        return {
            "machine": g.machine, "seed": self.seed, "fill": g.fill,
            "blocks": [{"name": b.name, "size": b.size} for b in g.ram_blocks],
            "devices": list(g.devices),
            "workload": {"dirty_rate": workload.dirty_rate, "pattern": workload.pattern,
                         "hotset": workload.hotset or 0, "seed": self.seed}
            if workload.dirty_rate else None,
        }

    def _start_peers(self) -> None:
        fds: dict[str, dict[str, int]] = {"source": {}, "destination": {}}
        if self.sc.transport.scheme == "fd" and not self.sc.transport.uri:
            a, b = socket.socketpair()
            self._fds += [a, b]
            fds = {"source": {FD_NAME: a.fileno()}, "destination": {FD_NAME: b.fileno()}}
        self.dst = self._make_peer("destination", fds["destination"])
        self.src = self._make_peer("source", fds["source"])
        for peer in (self.dst, self.src):
            try:
                peer.start()
            except (PeerError, QemuError, ControlError, OSError) as err:
                raise RunError(f"cannot start the {peer.role} ({peer.kind}): {err}") from None
            self.note(peer.role, "started", {"kind": peer.kind})

    def _make_peer(self, role: str, fds: dict[str, int]) -> PeerHandle:
        spec = self.sc.source if role == "source" else self.sc.destination
        if spec.kind == "qemu":
            return QemuPeer(role, self.workdir, self.sc.guest.total_memory,
                            args=list(spec.args), loader=self._loader_file() if
                            role == "source" else None,
                            binary=str(spec.binary) if spec.binary else None)
        extra = ["--incoming", "defer"] if role == "destination" else []
        return HarnessPeer(role, self.workdir, self._guest_json(), extra, fds)

    def _loader_file(self) -> Path:
        """RAM content for a QEMU source: the same version-0 pages a harness guest has."""
        from harness.guest.content import initial_content_array

        path = self.workdir / "qemu-source-ram.bin"
        initial_content_array(self.sc.guest.total_memory, self.seed,
                              self.sc.guest.fill).tofile(path)
        return path

    def _configure(self) -> None:
        caps = [{"capability": "events", "state": True}]
        caps += [c for c in self.sc.qmp_capabilities() if c["capability"] != "events"]
        params = self.sc.parameters.qmp_arguments()
        if self.dst is not None and self.dst.kind == "harness":
            if self.sc.expect.memory == "identical":
                self.dst.execute("x-incoming-snapshot", {"enable": True})
            if self.record:  # the return path as the source receives it, if it can
                src = self.src if self.src is not None and self.src.kind == "harness" else None
                self.dst.execute("x-record", {"dir": str(self.workdir),
                                              "return-path": src is None})
                if src is not None:
                    src.execute("x-record", {"dir": str(self.workdir)})
        for peer in self._peers():
            try:
                peer.execute("migrate-set-capabilities", {"capabilities": caps})
                if params:
                    peer.execute("migrate-set-parameters", params)
            except CommandError as err:
                raise RunError(f"{peer.role} refused the configuration: {err}") from None

    # ------------------------------------------------------------------ migrate
    def uris(self) -> tuple[str, str]:
        """(destination URI, source URI) for the transport; tcp ports come later."""
        t = self.sc.transport
        if t.uri:
            return t.uri, t.uri
        if t.scheme == "tcp":
            return "tcp:127.0.0.1:0", ""
        if t.scheme == "unix":
            d = short_dir("mhu")
            self._dirs.append(d)
            return f"unix:{d}/migration.sock", f"unix:{d}/migration.sock"
        if t.scheme == "fd":
            return f"fd:{FD_NAME}", f"fd:{FD_NAME}"
        stream = self.workdir / "stream.bin"
        if t.scheme == "exec":
            return f"exec:cat {stream}", f"exec:cat > {stream}"
        return f"file:{stream}", f"file:{stream}"  # file

    @property
    def two_phase(self) -> bool:
        """exec and file transports: the source writes a file, then the destination reads it."""
        return self.sc.transport.scheme in ("exec", "file") and not self.sc.transport.uri

    def _begin(self) -> None:
        assert self.src is not None and self.dst is not None
        self.dst_uri, src_uri = self.uris()
        if not self.two_phase:
            self.dst.execute("migrate-incoming", {"uri": self.dst_uri})
            if not src_uri:
                src_uri = self._listening_uri()
        self.note("runner", "migrate", {"uri": src_uri})
        self.migrate_started = time.monotonic()
        try:
            self.src.execute("migrate", {"uri": src_uri})
        except CommandError as err:
            self.refused = err.desc
            self.note("source", "migrate-refused", {"desc": err.desc})

    def _listening_uri(self) -> str:
        assert self.dst is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = self.dst.execute("query-migrate")
            for addr in info.get("socket-address", []):
                if addr.get("type") in ("inet", "tcp") or "port" in addr:
                    return f"tcp:{addr['host']}:{addr['port']}"
            time.sleep(0.01)
        raise RunError("the destination did not report its listening port")

    # ------------------------------------------------------------------ loop
    def _loop(self, steps: StepRunner, deadline: float) -> None:
        settle_until: float | None = None
        incoming_started = not self.two_phase
        while True:
            self._pump()
            steps.tick()
            now = time.monotonic()
            if self.refused is not None:
                return
            src_done = self.status["source"] in FINAL
            if self.two_phase and src_done and not incoming_started:
                incoming_started = True
                if self.status["source"] == "completed":
                    assert self.dst is not None
                    self.dst.execute("migrate-incoming", {"uri": self.dst_uri})
            dst_done = self.status["destination"] in FINAL
            if src_done and (dst_done or not incoming_started):
                return
            if src_done:
                settle_until = settle_until or now + SETTLE
                if now > settle_until:
                    return
            dead = [p for p in self._peers() if not p.alive()]
            if dead:
                for p in dead:
                    self.note(p.role, "exited", {"code": p.exit_code()})
                if not (src_done and self.status["destination"] in FINAL):
                    return
            if now > deadline:
                raise RunError(f"timeout: the scenario did not finish within "
                               f"{self.sc.timeout:g} s (source {self.status['source']}, "
                               f"destination {self.status['destination']})")
            time.sleep(POLL)

    def _pump(self) -> None:
        for peer in self._peers():
            for event in peer.poll_events():
                self.note(peer.role, event.name, event.data)
                if event.name == "MIGRATION":
                    status = str(event.data.get("status"))
                    self.status[peer.role] = status
                    self.statuses[peer.role].append(status)
                    self.progress("status", {"peer": peer.role, "status": status})
                elif event.name == "MIGRATION_PASS" and peer.role == "source":
                    self.passes = int(event.data.get("pass", 0))
                    self.progress("pass", {"pass": self.passes})

    # ------------------------------------------------------------------ end
    def _collect(self) -> None:
        assert self.src is not None and self.dst is not None
        self._pump()
        source = self._outcome(self.src)
        destination = self._outcome(self.dst)
        self.result.source, self.result.destination = source, destination
        if self.refused:
            source.error = self.refused
        evidence = Evidence(_expectations(self.sc), source, destination)
        self._memory_evidence(evidence)
        self.result.invariants = check_all(evidence)
        failed = [i for i in self.result.invariants if not i.ok]
        self.result.verdict = "fail" if failed else "pass"
        self.result.reason = "; ".join(f"{i.name}: {i.detail}" for i in failed)

    def _memory_evidence(self, evidence: Evidence) -> None:
        want = self.sc.expect.memory
        if want is None:
            return
        assert self.src is not None and self.dst is not None
        src_alive = self.src.alive()
        if src_alive:
            evidence.source_digests = self.src.digests()
            evidence.source_mismatched = self.src.check_intact()
        if want == "identical" and self.dst.alive() and \
                self.status["destination"] == "completed":
            evidence.destination_digests = self.dst.digests(at_incoming=True)

    def _outcome(self, peer: PeerHandle) -> PeerOutcome:
        out = PeerOutcome(kind=peer.kind, statuses=list(self.statuses[peer.role]))
        log_path = getattr(peer, "stderr_path", None)
        out.log = str(log_path) if log_path else None
        if not peer.alive():
            out.exit_code = peer.exit_code()
            out.status = self.status[peer.role]
            out.error = f"the {peer.role} exited with status {out.exit_code}: " + \
                peer.stderr_tail(5).replace("\n", " / ")
            return out
        info = peer.execute("query-migrate") or {}
        out.stats = info
        out.status = str(info.get("status", self.status[peer.role] or "none"))
        out.error = info.get("error-desc")
        out.runstate = peer.runstate()
        return out

    def _collect_quietly(self) -> None:
        for role, peer in (("source", self.src), ("destination", self.dst)):
            if peer is None:
                continue
            try:
                outcome = self._outcome(peer)
            except Exception as err:  # noqa: BLE001 - collecting after a failure: best effort
                outcome = PeerOutcome(kind=peer.kind, status=self.status[role],
                                      error=f"not reachable: {err}")
            setattr(self.result, role, outcome)

    def _close(self) -> None:
        for peer in self._peers():
            try:
                peer.close()
            except Exception as err:  # noqa: BLE001 - keep closing (reaping) the other one
                log.warning("closing the %s: %s", peer.role, err)
        for s in self._fds:
            s.close()
        import shutil

        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _peers(self) -> list[PeerHandle]:
        return [p for p in (self.src, self.dst) if p is not None]

    # ------------------------------------------------------------------ for steps
    def peer(self, role: str) -> PeerHandle:
        peer = self.src if role == "source" else self.dst
        assert peer is not None
        return peer

    def elapsed(self) -> float:
        """Seconds since `migrate` was issued."""
        return time.monotonic() - getattr(self, "migrate_started", self.t0)


def _expectations(sc: Scenario) -> Expectations:
    e = sc.expect
    return Expectations(source=e.source, destination=e.destination, memory=e.memory,
                        guest_runs_on=e.guest_runs_on)
