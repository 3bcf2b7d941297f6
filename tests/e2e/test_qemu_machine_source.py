"""A real pc/q35 QEMU source migrates to a harness destination that has its layout.

Strategy: the machine's layout (RAM blocks, device descriptions) is learned once per
machine with `harness.qemu.layout.learn_layout` (cached in this session's temporary
directory) and handed to `python -m harness destination --layout FILE`.  A real
`qemu-system-x86_64 -M pc|q35 -nodefaults -m 64` (TCG, no disk: SeaBIOS runs and finds
nothing to boot; 16 MiB of random bytes put at 16 MiB by a loader device) migrates to it over tcp loopback.  Then every RAM block's page digests
on the destination (as loaded: `x-guest-digests at=incoming`) must equal the source's
(every block read through `harness.qemu.snapshot` when it is there, else pc.ram by
`pmemsave` at GPA 0, facts F31/F32), and every device section must have been loaded and
kept (`x-query-devices`).  Postcopy: the destination guest's own vCPU (the harness
workload) touches pages that have not arrived, so the source answers page requests
(postcopy-requests > 0); the digests compared are what the guest found on each page.
A layout without a device the stream carries fails the load in QEMU's words.  Every
process is reaped by the fixtures, also on failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.guest.content import page_digests
from harness.protocol import EndOfStream, RemoteProtocolError, StreamDecoder
from harness.qemu import QemuProcess, find_qemu, pmemsave
from harness.qemu.layout import MachineLayout, learn_layout
from harness.runner.peers import HarnessPeer
from tests.qemu_env import QEMU_MARKS, USERFAULTFD_MARK

pytestmark = [*QEMU_MARKS]

MiB = 1 << 20
RAM = 64 * MiB
CONTENT_GPA = 16 * MiB
CONTENT_SIZE = 16 * MiB
DEADLINE = 60.0


def machine_args(machine: str) -> list[str]:
    return ["-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
            "-M", machine, "-m", str(RAM // MiB)]


@dataclass
class Machines:
    """What this module's sources share: the content file and each machine's layout."""

    workdir: Path
    content: Path
    layouts: dict[str, MachineLayout] = field(default_factory=dict)

    def args(self, machine: str) -> list[str]:
        """The source's command line: random bytes loaded at CONTENT_GPA (so that
        precopy takes a while at a few MiB/s and postcopy has pages to ask for)."""
        return [*machine_args(machine),
                "-device", f"loader,file={self.content},addr={CONTENT_GPA:#x}"]

    def layout(self, machine: str) -> MachineLayout:
        """Learned once per machine for this module (a cache directory of its own)."""
        if machine not in self.layouts:
            self.layouts[machine] = learn_layout(find_qemu(), self.args(machine), self.workdir,
                                                 directory=self.workdir / "layouts")
        return self.layouts[machine]


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Machines:
    workdir = tmp_path_factory.mktemp("machines")
    content = workdir / "content.bin"
    content.write_bytes(np.random.default_rng(11).bytes(CONTENT_SIZE))
    return Machines(workdir, content)


def write_layout(layout: MachineLayout, path: Path) -> Path:
    path.write_text(json.dumps(layout.to_json()))
    return path


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Whatever a test starts (QemuProcess, HarnessPeer) is closed here, in reverse."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.close()


def start_source(procs: list[Any], tmp_path: Path, machines: Machines, machine: str,
                 *extra: str) -> QemuProcess:
    src = QemuProcess([*machines.args(machine), *extra], tmp_path, name="src")
    procs.append(src)
    return src.start()


def start_destination(procs: list[Any], tmp_path: Path, layout_file: Path,
                      guest: dict[str, Any] | None = None) -> HarnessPeer:
    dst = HarnessPeer("destination", tmp_path, guest or {},
                      ["--incoming", "defer", "--layout", str(layout_file)])
    procs.append(dst)
    dst.start()
    return dst


def caps(*names: str) -> dict[str, Any]:
    return {"capabilities": [{"capability": n, "state": True} for n in ("events", *names)]}


def listen(dst: HarnessPeer, record: Path | None = None) -> int:
    dst.execute("x-incoming-snapshot", {"enable": True})
    if record is not None:  # the guest's requests still go straight to the socket
        record.mkdir()
        dst.execute("x-record", {"dir": str(record), "return-path": False})
    dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    return int(dst.execute("query-migrate")["socket-address"][0]["port"])


def until(what: str, probe: Any, done: Any, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value}"
        time.sleep(0.02)


def status_of(peer: Any) -> dict[str, Any]:
    qmp = getattr(peer, "qmp", None)
    info = qmp.execute("query-migrate") if qmp is not None else peer.execute("query-migrate")
    return dict(info)


def ended(info: dict[str, Any]) -> bool:
    return info.get("status") in ("completed", "failed", "cancelled")


def source_digests(src: QemuProcess, tmp_path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Page digests of the stopped source's RAM blocks that QEMU itself can show, and how
    they were read: `harness.qemu.snapshot` when it is there (on a source in postmigrate
    it pmemsaves the blocks the flat view maps whole: pc.ram, pc.bios), else pc.ram by
    pmemsave at GPA 0 (F31/F32)."""
    try:
        from harness.qemu.snapshot import snapshot
    except ImportError:
        dump = tmp_path / "src-pc.ram.bin"
        pmemsave(src.qmp, 0, RAM, dump)
        return {"pc.ram": page_digests(np.fromfile(dump, dtype=np.uint8))}, "pmemsave"
    snap = snapshot(src.qmp, timeout=DEADLINE)
    return {name: page_digests(mem) for name, mem in snap.blocks.items()}, "snapshot"


def recorded_digests(path: Path, layout: MachineLayout) -> dict[str, np.ndarray]:
    """Page digests of every block as the stream the destination received (x-record)
    leaves it, decoded offline with the layout's devices.  The recording is closed just
    after the destination says completed: read it again until it decodes to its end."""
    deadline = time.monotonic() + 10
    while True:
        decoder = StreamDecoder(devices=layout.devices())
        decoder.receive_data(path.read_bytes())
        decoder.receive_data(b"")
        try:
            events = decoder.events()
        except RemoteProtocolError:
            events = []
        if any(isinstance(e, EndOfStream) and not e.packaged for e in events):
            return {name: page_digests(mem) for name, mem in decoder.ram.items()}
        assert time.monotonic() < deadline, f"{path} does not decode to its end"
        time.sleep(0.1)


def assert_memory_identical(src: QemuProcess, dst: HarnessPeer, layout: MachineLayout,
                            tmp_path: Path) -> None:
    """Every block equal: those QEMU shows (source_digests) against QEMU's own memory,
    the others (the fw_cfg ROMs, mapped nowhere) against the received stream."""
    ours = dst.digests(at_incoming=True)
    assert ours is not None
    assert list(ours) == [name for name, _ in layout.blocks]
    theirs, how = source_digests(src, tmp_path)
    assert "pc.ram" in theirs
    recorded = recorded_digests(tmp_path / "rec" / "stream.fwd.bin", layout)
    for name in ours:
        expected, whence = (theirs[name], how) if name in theirs else (recorded[name], "stream")
        differ = int((ours[name] != expected).sum()) if ours[name].size == expected.size else -1
        assert differ == 0, f"{name}: {differ} of {expected.size} pages differ ({whence})"


def assert_devices_kept(dst: HarnessPeer, layout: MachineLayout) -> None:
    devices = dst.execute("x-query-devices")
    assert devices["machine"] == layout.machine
    assert devices["loaded"] == devices["described"] == len(layout.device_names())
    kept = {(s["idstr"], s["instance-id"]): s["fields"] for s in devices["sections"]}
    assert kept[("cpu", 0)] > 10 and ("globalstate", 0) in kept


# ------------------------------------------------------------------------ precopy
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_precopy_from_a_running_machine(machines: Machines, procs: list[Any],
                                        tmp_path: Path, machine: str) -> None:
    layout = machines.layout(machine)
    dst = start_destination(procs, tmp_path, write_layout(layout, tmp_path / "layout.json"))
    src = start_source(procs, tmp_path, machines, machine)
    for peer in (src.qmp, dst):
        peer.execute("migrate-set-capabilities", caps())
    src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 0, "downtime-limit": 2000})
    port = listen(dst, tmp_path / "rec")
    src.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})

    dst_info = until("the destination", lambda: status_of(dst), ended)
    src_info = until("the source", lambda: status_of(src), ended)
    assert dst_info["status"] == "completed", (dst_info, dst.stderr_tail())
    assert src_info["status"] == "completed", src_info
    assert dst.runstate() == "running"  # the source ran: so does the destination
    assert_devices_kept(dst, layout)
    assert_memory_identical(src, dst, layout, tmp_path)


# ------------------------------------------------------------------------ postcopy
@USERFAULTFD_MARK
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_postcopy_with_the_destinations_vcpu_faulting(
        machines: Machines, procs: list[Any], tmp_path: Path,
        machine: str) -> None:
    layout = machines.layout(machine)
    guest = {"seed": 3, "workload": {"dirty_rate": 32 * MiB, "pattern": "uniform", "seed": 3}}
    dst = start_destination(procs, tmp_path, write_layout(layout, tmp_path / "layout.json"),
                            guest)
    src = start_source(procs, tmp_path, machines, machine)
    for peer in (src.qmp, dst):
        peer.execute("migrate-set-capabilities", caps("postcopy-ram"))
    src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 * MiB,
                                               "max-postcopy-bandwidth": 16 * MiB})
    port = listen(dst, tmp_path / "rec")
    src.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    until("precopy", lambda: status_of(src), lambda i: i.get("status") == "active")
    src.qmp.execute("migrate-start-postcopy")

    dst_info = until("the destination", lambda: status_of(dst), ended)
    src_info = until("the source", lambda: status_of(src), ended)
    assert dst_info["status"] == "completed", (dst_info, dst.stderr_tail())
    assert src_info["status"] == "completed", src_info
    assert src_info["ram"]["postcopy-requests"] > 0, src_info["ram"]
    assert dst.runstate() == "running"
    assert_devices_kept(dst, layout)
    assert_memory_identical(src, dst, layout, tmp_path)


# ------------------------------------------------------------------------ refusal
def test_a_layout_without_a_device_of_the_stream_fails_the_load(
        machines: Machines, procs: list[Any], tmp_path: Path) -> None:
    layout = machines.layout("pc")
    doc = layout.to_json()
    doc["vmdesc"] = {**doc["vmdesc"], "devices": [
        d for d in doc["vmdesc"]["devices"] if d["name"] != "port92"]}
    path = tmp_path / "no-port92.json"
    path.write_text(json.dumps(doc))
    dst = start_destination(procs, tmp_path, path)
    src = start_source(procs, tmp_path, machines, "pc", "-S")
    src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 0})
    port = listen(dst)
    src.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})

    info = until("the destination", lambda: status_of(dst), ended)
    until("the source", lambda: status_of(src), ended)
    message = ("Unknown savevm section or instance 'port92' 0. Make sure that your current "
               "VM setup matches your saved VM setup, including any hotplugged devices")
    assert info["status"] == "failed"
    assert message in info["error-desc"]
    assert f"harness destination: {message}" in dst.stderr_tail(50)
    assert dst.runstate() != "running"
