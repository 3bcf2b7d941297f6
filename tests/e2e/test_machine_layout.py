"""Machine layouts with a real QEMU 7.2: learned by a probe, cached, framing live migrations.

`learn_layout` probes pc and q35 (-m 64, TCG, with a serial port as in F0) and must find
F38's RAM blocks and F39/F40's 31/30 device sections; a second call is a cache hit.  Then
the proxy, given the pc layout, sits between two real pc QEMUs for a precopy and a
postcopy migration of a running guest: it must frame every byte (no "framing lost", no
guessed section) and a `frame:` trigger aimed at a named device section must fire there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness.faults.proxy import Proxy
from harness.qemu import QemuProcess, wait_migration
from harness.qemu.layout import MachineLayout, learn_layout
from tests.qemu_env import QEMU_MARKS, USERFAULTFD_MARK

pytestmark = QEMU_MARKS
MIB = 1 << 20
BLOCKS = (("pc.ram", 64 * MIB), ("/rom@etc/acpi/tables", 0x20000), ("pc.bios", 0x40000),
          ("pc.rom", 0x20000), ("/rom@etc/table-loader", 0x1000), ("/rom@etc/acpi/rsdp", 0x1000))


def machine_args(machine: str, where: Path, name: str) -> list[str]:
    return ["-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
            "-M", machine, "-m", "64", "-serial", f"file:{where / (name + '.serial')}"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("layouts")


@pytest.fixture(scope="module")
def pc_layout(cache, tmp_path_factory) -> MachineLayout:
    work = tmp_path_factory.mktemp("probe")
    return learn_layout(None, machine_args("pc", work, "src"), work, directory=cache)


def test_learn_layout_finds_the_blocks_and_sections_of_pc_and_q35(pc_layout, cache, tmp_path):
    assert pc_layout.machine == "pc-i440fx-7.2" and pc_layout.blocks == BLOCKS
    names = pc_layout.device_names()
    assert len(names) == 31 and names[19:21] == ["serial", "fdc"]  # F39
    assert pc_layout.probe["cached"] is False
    cpu = next(e for e in pc_layout.vmdesc["devices"] if e["name"] == "cpu")
    assert {s["vmsd_name"] for s in cpu["subsections"]} == {"cpu/poll_control_msr",
                                                           "cpu/msr_smi_count"}  # F41
    q35 = learn_layout(None, machine_args("q35", tmp_path, "src"), tmp_path, directory=cache)
    assert q35.machine == "pc-q35-7.2" and q35.blocks == BLOCKS
    names = q35.device_names()
    assert len(names) == 30 and "fdc" not in names  # F40
    assert {"0000:00:00.0/mch", "0000:00:1f.0/ICH9LPC", "0000:00:1f.2/ich9_ahci",
            "0000:00:1f.3/ich9_smb"} <= set(names)
    again = learn_layout(None, machine_args("pc", tmp_path, "other"), tmp_path, directory=cache)
    assert again.probe["cached"] is True and again == pc_layout  # serial path: same key
    assert again.probe["seconds"] < pc_layout.probe["seconds"]
    assert len(list(cache.glob("*.json"))) == 2
    assert not list(tmp_path.glob("layout-probe-*"))  # the probe cleaned up


@contextmanager
def proxied_pair(tmp_path: Path, layout: MachineLayout, cache: Path, caps: list[str]
                 ) -> Iterator[tuple[QemuProcess, QemuProcess, Proxy, list[Any]]]:
    """A running pc source and a pc destination listening behind the proxy."""
    with ExitStack() as stack:
        src = QemuProcess(machine_args("pc", tmp_path, "src"), tmp_path, name="src")
        dst = QemuProcess([*machine_args("pc", tmp_path, "dst"), "-incoming", "defer"],
                          tmp_path, name="dst")
        stack.callback(src.close)
        stack.callback(dst.close)
        src.start()
        dst.start()
        capabilities = [{"capability": c, "state": True} for c in ["events", *caps]]
        for qemu in (src, dst):
            qemu.qmp.execute("migrate-set-capabilities", {"capabilities": capabilities})
        dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = dst.qmp.execute("query-migrate")["socket-address"][0]["port"]
        events: list[Any] = []
        proxy = Proxy("tcp:127.0.0.1:0", f"tcp:127.0.0.1:{port}", layout=layout,
                      layout_cache=cache, emit=lambda n, d: events.append((n, d)))
        stack.callback(proxy.close)
        proxy.start()
        yield src, dst, proxy, events


def check_framed(proxy: Proxy, events: list[Any], section: str) -> None:
    query = proxy.query()
    assert query["framing-errors"] == [] and query["errors"] == []
    assert query["guessed-sections"] == 0
    assert query["layout"]["devices"] == 31
    fired = [a for a in query["fired"] if a["id"] == "aim"]
    assert fired and fired[0]["fired"]["frame"] == "SECTION_FULL", query["fired"]
    wire = [d for n, d in events if n == "WIRE"]
    assert wire and wire[0]["trigger"] == {"frame": "SECTION_FULL", "section": section}


def test_proxy_frames_a_live_precopy_between_real_pcs(pc_layout, cache, tmp_path):
    with proxied_pair(tmp_path, pc_layout, cache, []) as (src, dst, proxy, events):
        proxy.arm("aim", {"frame": "SECTION_FULL", "section": "0000:00:01.1/ide"}, None)
        time.sleep(0.3)  # SeaBIOS runs
        src.qmp.execute("migrate", {"uri": proxy.address})
        assert wait_migration(src.qmp, timeout=30)["status"] == "completed"
        assert wait_migration(dst.qmp, timeout=30)["status"] == "completed"
        deadline = time.monotonic() + 5
        while proxy.query()["sessions"]["closed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        check_framed(proxy, events, "0000:00:01.1/ide")
        assert proxy.query()["frames"]["main"]["VMDESCRIPTION"] == 1


@USERFAULTFD_MARK
def test_proxy_frames_a_postcopy_between_real_pcs(pc_layout, cache, tmp_path):
    with proxied_pair(tmp_path, pc_layout, cache, ["postcopy-ram"]) as (src, dst, proxy,
                                                                        events):
        proxy.arm("aim", {"frame": "SECTION_FULL", "section": "serial"}, None)
        src.qmp.execute("migrate-set-parameters",  # precopy must not end first (F30)
                        {"max-bandwidth": 100_000, "max-postcopy-bandwidth": 0})
        time.sleep(0.3)
        src.qmp.execute("migrate", {"uri": proxy.address})
        deadline = time.monotonic() + 10
        while src.qmp.execute("query-migrate")["status"] != "active":
            assert time.monotonic() < deadline, "the source never became active"
            time.sleep(0.01)
        src.qmp.execute("migrate-start-postcopy")
        assert wait_migration(src.qmp, timeout=30)["status"] == "completed"
        assert wait_migration(dst.qmp, timeout=30)["status"] == "completed"
        check_framed(proxy, events, "serial")
        frames = proxy.query()["frames"]["main"]
        assert frames.get("PACKAGED") == 1 and frames.get("POSTCOPY_RUN") == 1, frames
