"""The runner's side of a real guest: QEMU peers on a real machine, and what is read of them.

Strategy: a scenario on a real machine (pc, q35...) with QEMU peers boots the harness's own
x86 guest (harness/realguest) in both QEMUs -- the destination with `-S` in precopy, so
that its memory can be read exactly as the load left it -- on the accelerator the host
allows (`_accel`), and starts the migration only once the source's guest runs its loop
(`wait_booted`).  The proxy between real machines, and a harness destination of a real
source, get the machine's layout (`machine_layout`: harness/qemu/layout.py).  A harness
source to a QEMU destination replays the device state of a paused QEMU of the
destination's command line instead (`device_replay`, harness/qemu/replay.py: its capture
is also the proxy's layout); that destination runs no program, stays paused as the
captured globalstate says (prelaunch) and is never continued.  When the run
has settled and the peers' outcomes are collected, `collect` reads what the oracle needs,
in an order that keeps each reading meaningful:

1. memory: every RAM block of each QEMU the expectation needs (harness/qemu/snapshot.py:
   the VM is stopped first when it runs, and continued afterwards; the ROMs of a source
   QEMU will not migrate again come from a reference, harness/qemu/reference.py);
2. a destination that was held paused after a completed load is continued (as a user's
   `cont` after `-S`);
3. the heartbeat window: each live guest's heartbeat is read twice, HEARTBEAT_WINDOW
   apart; a guest runs where its tick counter moved.

Everything read lands in the Evidence; the invariants judge it (harness/invariants).
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.control import ControlError
from harness.errors import EnvironmentFailure
from harness.qemu import QemuError, QMPError
from harness.scenario.model import Scenario

from .peers import PeerHandle, QemuPeer
from .remote_qemu import RemoteQemuPeer, learn_remote_layout, qemu_options, read_memory
from .state import RunContext

if TYPE_CHECKING:
    from harness.invariants import Evidence


HEARTBEAT_WINDOW = 0.4  # s: the guest's timer ticks at ~1 kHz, so hundreds of ticks
BOOT_TIMEOUT = 30.0  # s: SeaBIOS + init pass; TCG 0.1-0.7 s, software KVM 3-4 s (F16)


class BootError(EnvironmentFailure, RuntimeError):
    """A real machine could not be set up: its accelerator, its layout, or its guest did
    not reach its loop (verdict `error`)."""
_ERRORS = (QMPError, ControlError, OSError, ValueError, RuntimeError)


def uses_real_guest(sc: Scenario) -> bool:
    """QEMU peers on a real machine: the harness's own x86 guest runs in them."""
    return sc.guest.real_machine and "qemu" in (sc.source.kind, sc.destination.kind)


def program_of(sc: Scenario) -> Any:
    """The GuestProgram the scenario's guest runs (its memory and workload)."""
    from harness.realguest.image import GuestProgram

    w = sc.guest.workload
    pattern = "hotset" if w.pattern == "hotset" else "uniform"  # a sweep either way
    return GuestProgram(memory=sc.guest.total_memory, dirty_rate=int(w.dirty_rate),
                        pattern=pattern, hotset=w.hotset)


def is_qemu(peer: Any) -> bool:
    """A real QEMU peer, beside the runner or on an agent's host."""
    return isinstance(peer, (QemuPeer, RemoteQemuPeer))


def make_qemu_peer(c: RunContext, role: str) -> QemuPeer | RemoteQemuPeer:
    """A QEMU peer of the scenario: `-M none` as before, or a real machine; a peer with
    `host:` is started by that host's agent (runner/remote_qemu.py)."""
    sc = c.sc
    spec = sc.source if role == "source" else sc.destination
    held = role == "destination" and not sc.postcopy and sc.guest.real_machine
    if spec.host is not None:
        return RemoteQemuPeer(role, c.agents[spec.host],
                              qemu_options(c, role, held, sc.guest.real_machine),
                              program_of(sc) if sc.guest.real_machine else None)
    binary = str(spec.binary) if spec.binary else None
    if not sc.guest.real_machine:
        return QemuPeer(role, c.workdir, sc.guest.total_memory, args=list(spec.args),
                        loader=_loader_file(c) if role == "source" else None,
                        binary=binary, die_with_starter=True)
    accel, why = _accel(sc.guest.accel)  # held: precopy, read it as loaded
    program = None if replays_devices(sc) else program_of(sc)  # it loads a paused machine
    return QemuPeer(role, c.workdir, sc.guest.total_memory, args=list(spec.args),
                    binary=binary, die_with_starter=True, machine=sc.guest.machine,
                    accel=accel, accel_reason=why, program=program, paused=held)


def replays_devices(sc: Scenario) -> bool:
    """A harness source to a QEMU destination on a real machine (harness/qemu/replay.py)."""
    return sc.guest.real_machine and sc.source.kind == "harness" and \
        sc.destination.kind == "qemu"


def needs_layout(sc: Scenario, proxy: bool) -> bool:
    """A real machine's stream is framed exactly only with its layout: the proxy between
    real machines needs it, and so does a harness destination of a real QEMU source.  A
    replaying harness source needs its capture (which frames the proxy's stream too)."""
    return sc.guest.real_machine and sc.source.kind == "qemu" and (
        proxy or sc.destination.kind == "harness") or replays_devices(sc)


def machine_layout(c: RunContext) -> Path:
    """The source machine's layout (harness/qemu/layout.py: from the cache, or learnt by a
    probe of the same command line), as the file the proxy and a harness destination read."""
    from harness.qemu.layout import LayoutError, cache_path, learn_layout

    from .peers import shared_image

    if replays_devices(c.sc):
        return device_replay(c)
    if c.sc.source.host is not None:
        return _remote_layout(c)
    source = make_qemu_peer(c, "source")
    assert isinstance(source, QemuPeer)
    source.image = shared_image(source.program, c.workdir / "guest.img")
    try:
        layout = learn_layout(source.binary, source.command_args(), c.workdir)
    except (LayoutError, QemuError) as err:
        raise BootError(f"cannot learn the layout of machine {c.sc.guest.machine}: "
                        f"{err}") from None
    c.note("runner", "machine-layout", {"key": layout.key[:16], "machine": layout.machine,
                                        "devices": len(layout.device_names()),
                                        "blocks": [name for name, _ in layout.blocks],
                                        **layout.probe})
    return cache_path(layout.key)


def device_replay(c: RunContext) -> Path:
    """The paused stream of the destination's command line (its drives included) that a
    harness source replays (harness/qemu/replay.py), checked by loading it here."""
    from harness.qemu.replay import ReplayError, capture_paused, load_replay

    from .disks import qemu_args

    dst = make_qemu_peer(c, "destination")
    assert isinstance(dst, QemuPeer)
    args = dst.command_args() + qemu_args(c.disk_paths.get("destination", {}), dst.machine)
    started = time.monotonic()
    try:
        path = capture_paused(dst.binary, args, c.workdir / "replay-devices.bin", c.workdir)
        replay = load_replay(path)
    except (ReplayError, QemuError) as err:
        raise BootError(f"cannot capture the device state of machine {c.sc.guest.machine}: "
                        f"{err}") from None
    c.note("runner", "device-replay", {**replay.summary(),
                                       "seconds": round(time.monotonic() - started, 3)})
    return path


def _remote_layout(c: RunContext) -> Path:
    """The layout learnt on the source's host, as a file here (its content crossed)."""
    import json

    from harness.control import ControlError
    from harness.qemu.layout import MachineLayout

    try:
        doc = learn_remote_layout(c, held=False)
        layout = MachineLayout.from_json(doc["layout"])
    except (ControlError, KeyError, TypeError, ValueError) as err:
        raise BootError(f"cannot learn the layout of machine {c.sc.guest.machine} on host "
                        f"{c.sc.source.host}: {err}") from None
    path = c.workdir / f"layout-{layout.key[:16]}.json"
    path.write_text(json.dumps(layout.to_json(), separators=(",", ":")))
    c.note("runner", "machine-layout", {"key": layout.key[:16], "machine": layout.machine,
                                        "host": c.sc.source.host,
                                        "devices": len(layout.device_names()),
                                        "blocks": [name for name, _ in layout.blocks],
                                        **dict(doc.get("probe") or {})})
    return path


def wait_booted(c: RunContext, peer: PeerHandle) -> None:
    """A source's real guest must run its loop before the migration starts: a migration of
    SeaBIOS, or of the guest's init pass, is not the test the scenario describes."""
    if not (is_qemu(peer) and peer.program is not None and not peer.paused  # type: ignore[attr-defined]
            and peer.role == "source"):
        return
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT
    while True:
        try:
            beat = peer.heartbeat()
            break
        except ValueError as err:
            if time.monotonic() >= deadline or not peer.alive():
                raise BootError(f"the {peer.role}'s guest did not reach its loop within "
                                f"{BOOT_TIMEOUT:g} s ({err}); serial: "
                                f"{peer.serial_text(200)!r}") from None
        time.sleep(0.01)
    c.note(peer.role, "guest-running", {"seconds": round(time.monotonic() - started, 3),
                                        "ticks": beat.ticks if beat else None})


@functools.cache
def _accel(requested: str) -> tuple[str, str]:
    """The accelerator a real machine runs with, and why (this host's answer)."""
    from harness.qemu.machine import resolve_accel

    try:
        return resolve_accel(requested)
    except ValueError as err:
        raise BootError(f"guest.accel {requested}: {err}") from None


def _loader_file(c: RunContext) -> Path:
    """RAM content for a `-M none` QEMU source: the version-0 pages a harness guest has."""
    from harness.guest.content import initial_content_array

    g = c.sc.guest
    path = c.workdir / "qemu-source-ram.bin"
    initial_content_array(g.total_memory, c.seed, g.fill,
                          compressible=g.content == "compressible").tofile(path)
    return path


def collect(c: RunContext, evidence: Evidence) -> None:
    """Read memory and heartbeats of the real guests into `evidence` (see the strategy)."""
    src, dst = c.peer("source"), c.peer("destination")
    want = c.sc.expect.memory
    if replays_devices(c.sc):  # the harness's simulated guest; the destination held
        _replayed_memory(c, evidence, want, src, dst)
        return
    evidence.program = program_of(c.sc)
    if want is not None:
        _read_memory(c, evidence, want, src, dst)
    _continue_held(c, dst)
    _heartbeats(c, evidence)  # where the guest runs at the end: for every run


def _replayed_memory(c: RunContext, evidence: Evidence, want: str | None, src: PeerHandle,
                     dst: PeerHandle) -> None:
    """A replaying harness source's digests (its pc.ram checked against its oracle; the
    other blocks are the capture's), and every block the QEMU destination loaded."""
    from harness.qemu.replay import GUEST_RAM

    if want is None:
        return
    if _readable(c, src):
        evidence.source_digests = src.digests()
        intact = src.check_intact() or {}
        evidence.source_mismatched = {k: v for k, v in intact.items() if k == GUEST_RAM}
    if want == "identical" and c.status["destination"] == "completed" and _readable(c, dst):
        evidence.destination_memory = _snapshot(c, dst)
        if evidence.destination_memory is not None:
            evidence.destination_digests = _digests(evidence.destination_memory)


def _readable(c: RunContext, peer: PeerHandle) -> bool:
    return peer.alive() and peer.role not in c.frozen


def _read_memory(c: RunContext, evidence: Evidence, want: str, src: PeerHandle,
                 dst: PeerHandle) -> None:
    if isinstance(src, RemoteQemuPeer) or isinstance(dst, RemoteQemuPeer):
        read_memory(c, evidence, want, src, dst, _readable)  # digests, never the RAM
        return
    completed = c.status["destination"] == "completed"
    if _readable(c, src):
        evidence.source_memory = _snapshot(c, src)
    if want in ("identical", "consistent") and completed and _readable(c, dst):
        if isinstance(dst, QemuPeer):
            evidence.destination_memory = _snapshot(c, dst)
            if evidence.destination_memory is not None:
                evidence.destination_digests = _digests(evidence.destination_memory)
        else:  # a harness destination: what its load left, block by block
            evidence.destination_digests = dst.digests(at_incoming=True)
    if evidence.source_memory is not None and isinstance(src, QemuPeer):
        _reference_roms(c, evidence, src, evidence.source_memory)
        evidence.source_digests = _digests(evidence.source_memory)


def _reference_roms(c: RunContext, evidence: Evidence, src: QemuPeer,
                    blocks: dict[str, Any]) -> None:
    """A source that completed a migration is in `postmigrate`, which QEMU 7.2 will not
    migrate again ("Can't migrate the vm that was paused due to previous migration"), so
    only what guest-physical space maps (pc.ram, pc.bios) could be read.  Its other
    blocks -- ROMs and fw_cfg blobs (ACPI tables, table-loader, RSDP) that the guest
    cannot write -- are read from a reference: a fresh QEMU of the same command line that
    booted the same guest (the ACPI tables are rebuilt when SeaBIOS reads them)."""
    listed = [b.name for b in getattr(src.last_snapshot, "listed", [])]
    missing = [name for name in listed if name not in blocks]
    if not missing:
        return
    from harness.qemu.reference import reference_blocks

    started = time.monotonic()
    try:
        found = reference_blocks(src.binary, src.command_args(), c.workdir, missing)
    except _ERRORS as err:
        c.note("source", "reference-unreadable", {"blocks": missing, "error": str(err)})
        return
    blocks.update(found)
    evidence.reference_blocks = sorted(found)
    c.note("source", "reference-read", {"blocks": sorted(found),
                                        "seconds": round(time.monotonic() - started, 3)})


def _snapshot(c: RunContext, peer: PeerHandle) -> dict[str, Any] | None:
    """Every RAM block of a QEMU, the VM stopped for the reading and resumed if it ran."""
    assert isinstance(peer, QemuPeer)
    started = time.monotonic()
    try:
        ran = peer.runstate() == "running"
        if ran:
            peer.execute("stop")
        blocks = peer.snapshot()
        if ran:
            peer.execute("cont")
    except _ERRORS as err:
        c.note(peer.role, "memory-unreadable", {"error": str(err)})
        return None
    c.note(peer.role, "memory-read", {"blocks": {k: len(v) for k, v in blocks.items()},
                                      "seconds": round(time.monotonic() - started, 3),
                                      "resumed": ran})
    return blocks


def _digests(blocks: dict[str, Any]) -> dict[str, Any]:
    from harness.guest.content import page_digests

    return {name: page_digests(data) for name, data in blocks.items()}


def _continue_held(c: RunContext, dst: PeerHandle) -> None:
    """A destination held with -S after a completed load is let run, as a user would."""
    if not (is_qemu(dst) and dst.paused and _readable(c, dst)  # type: ignore[attr-defined]
            and c.status["destination"] == "completed"):
        return
    try:
        if dst.runstate() != "running":
            dst.execute("cont")
            c.note("runner", "cont", {"peer": "destination",
                                      "why": "held paused (-S) for the memory check"})
    except _ERRORS as err:
        c.note("destination", "cont-refused", {"error": str(err)})


def _heartbeats(c: RunContext, evidence: Evidence) -> None:
    peers = [p for p in (c.peer("source"), c.peer("destination"))
             if is_qemu(p) and p.program is not None]  # type: ignore[attr-defined]
    first = {p.role: _beat(c, p) for p in peers}
    time.sleep(HEARTBEAT_WINDOW)
    for p in peers:
        before, after = first[p.role], _beat(c, p)
        outcome = evidence.source if p.role == "source" else evidence.destination
        if before is None or after is None:
            outcome.heartbeat = {"readable": False}
            continue
        outcome.heartbeat = {"before": asdict(before), "after": asdict(after),
                             "window": HEARTBEAT_WINDOW,
                             "advanced": after.ticks > before.ticks}
        with contextlib.suppress(*_ERRORS):
            outcome.runstate = p.runstate()


def _beat(c: RunContext, peer: Any) -> Any:
    if not _readable(c, peer):
        return None
    try:
        return peer.heartbeat()
    except _ERRORS as err:
        c.note(peer.role, "heartbeat-unreadable", {"error": str(err)})
        return None
