"""A guest shaped like a real pc/q35 machine (harness.guest.machine) and `--layout`.

The layouts come from QEMU's own captured streams (`qemu-vectors/precopy/pc-m16.bin`,
q35-m16.bin), through `harness.qemu.layout.layout_from_stream`; the streams are loaded
into a layout guest with the destination's decoder options, as `destination/incoming.py`
builds them.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.guest import Guest, GuestSpec
from harness.guest.content import page_digests
from harness.guest.machine import (
    KNOWN_MAX_LENGTHS,
    MAX_LAYOUT_BYTES,
    check_block_name,
    load_layout,
    spec_from_layout,
)
from harness.protocol import DeviceState, RemoteProtocolError, StreamDecoder
from harness.qemu.layout import layout_from_stream
from tests.conftest import SHARED_VECTORS, shared_file

PC = SHARED_VECTORS / "precopy" / "pc-m16.bin"
Q35 = SHARED_VECTORS / "precopy" / "q35-m16.bin"
TABLES = "/rom@etc/acpi/tables"


@pytest.fixture(autouse=True)
def _vectors() -> None:
    """The captured streams, or a skip naming ../shared (tests/conftest.py)."""
    for path in (PC, Q35):
        shared_file(str(path.relative_to(SHARED_VECTORS.parent)))


def layout_guest(stream: Path) -> Guest:
    spec = spec_from_layout(GuestSpec(), layout_from_stream(stream))
    return Guest.create(spec, initial_content=False)


def load(guest: Guest, data: bytes) -> list:
    """The stream through a decoder set up as the destination's (incoming._decoder)."""
    decoder = StreamDecoder(ram=guest.loadable_ram(), devices=guest.device_descriptions(),
                            machine=guest.machine, vmdesc=True)
    decoder.loader.resize = guest.resize_block
    decoder.receive_data(data)
    decoder.receive_data(b"")
    events = decoder.events()
    for ev in events:
        if isinstance(ev, DeviceState):
            guest.load_device(ev.idstr, ev.instance_id, ev.state)
    return events


def with_block_length(data: bytes, name: str, length: int) -> bytes:
    """The stream with block `name` announced at `length` in MEM_SIZE (total adjusted)."""
    out = bytearray(data)
    raw = name.encode()
    at = out.index(bytes([len(raw)]) + raw) + 1 + len(raw)
    old = struct.unpack(">Q", out[at:at + 8])[0]
    out[at:at + 8] = struct.pack(">Q", length)
    total_at = out.index(b"\x06pc.ram") - 8  # the MEM_SIZE word precedes the first block
    total = struct.unpack(">Q", out[total_at:total_at + 8])[0]
    out[total_at:total_at + 8] = struct.pack(">Q", total + length - old)
    return bytes(out)


# ------------------------------------------------------------------ block names
@pytest.mark.parametrize("name", ["pc.ram", TABLES, "/rom@etc/table-loader",
                                  "0000:00:02.0/vga.vram", "mem0", "x" * 255])
def test_qemu_block_names_pass(name: str) -> None:
    assert check_block_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "pc.ram\n", "x" * 256, "rom\0x", "é", "a\\b",
                                  "$(id)", 7])
def test_other_block_names_are_refused(name: object) -> None:
    with pytest.raises(ValueError, match="RAM block name"):
        check_block_name(name)  # type: ignore[arg-type]


def test_block_names_never_name_the_shared_memory_segment() -> None:
    with layout_guest(PC) as guest:
        assert re.fullmatch(r"mh-guest-\d+-[0-9a-f]{12}", guest.memory.name)
        shm = os.listdir("/dev/shm")
        assert guest.memory.name in shm
        assert not [f for f in shm if "rom@etc" in f or "acpi" in f]


# ------------------------------------------------------------------ the guest spec
@pytest.mark.parametrize(("stream", "machine", "devices"),
                         [(PC, "pc-i440fx-7.2", 30), (Q35, "pc-q35-7.2", 29)])
def test_layout_spec_has_the_machines_blocks_and_devices(stream: Path, machine: str,
                                                         devices: int) -> None:
    layout = layout_from_stream(stream)
    spec = spec_from_layout(GuestSpec(seed=5), layout)
    assert spec.machine == machine and spec.seed == 5
    assert [b.name for b in spec.blocks] == [name for name, _ in layout.blocks]
    sizes = {b.name: b.size for b in spec.blocks}
    assert sizes["pc.ram"] == 16 << 20 and sizes[TABLES] == KNOWN_MAX_LENGTHS[TABLES]
    assert spec.used_lengths == {TABLES: 0x20000, "/rom@etc/table-loader": 0x1000}
    assert spec.described is not None and len(spec.described) == devices


def test_a_layout_guest_loads_and_keeps_every_device_section() -> None:
    data = PC.read_bytes()
    with layout_guest(PC) as guest:
        events = load(guest, data)
        sections = [e for e in events if isinstance(e, DeviceState)]
        assert len(sections) == 30 and len(guest.device_state) == 30
        cpu = guest.device_state[("cpu", 0)]
        assert len(cpu) > 10  # field by field, not one opaque blob
        assert guest.incoming_runstate == "prelaunch"  # globalstate still acts
        reference = StreamDecoder(skip_unknown_devices=True)
        reference.receive_data(data)
        reference.receive_data(b"")
        reference.events()
        digests = guest.digests()
        for name, mem in reference.ram.items():
            assert np.array_equal(digests[name], page_digests(mem)), name


def test_a_device_the_layout_lacks_is_refused_in_qemus_words() -> None:
    layout = layout_from_stream(PC)
    doc = layout.to_json()
    doc["vmdesc"] = {**doc["vmdesc"], "devices": [d for d in doc["vmdesc"]["devices"]
                                                  if d["name"] != "port92"]}
    spec = spec_from_layout(GuestSpec(), type(layout).from_json(doc))
    with Guest.create(spec, initial_content=False) as guest, \
            pytest.raises(RemoteProtocolError) as refused:
        load(guest, PC.read_bytes())
    assert refused.value.message == (
        "Unknown savevm section or instance 'port92' 0. Make sure that your current VM "
        "setup matches your saved VM setup, including any hotplugged devices")


def test_the_configuration_must_name_the_layouts_machine() -> None:
    # the words of a real pc destination given a q35 stream (qemu-7.2-interop.md 3.2)
    with layout_guest(PC) as guest, pytest.raises(RemoteProtocolError) as refused:
        load(guest, Q35.read_bytes())
    assert refused.value.message == ("Machine type received is 'pc-q35-7.2' and local is "
                                     "'pc-i440fx-7.2'")


# ------------------------------------------------------------------ resizable blocks
def test_a_resizable_block_takes_the_announced_length() -> None:
    data = with_block_length(PC.read_bytes(), TABLES, 0x21000)
    with layout_guest(PC) as guest:
        load(guest, data)
        assert guest.block_length(TABLES) == 0x21000
        assert guest.digests()[TABLES].size == 0x21


def test_a_resizable_block_beyond_its_maximum_is_refused_as_qemu_does() -> None:
    # QEMU 7.2.22 (pc -m 16 destination, this stream so changed) printed exactly this
    data = with_block_length(PC.read_bytes(), TABLES, 0x201000)
    with layout_guest(PC) as guest, pytest.raises(RemoteProtocolError) as refused:
        load(guest, data)
    assert refused.value.qemu_lines == [
        "Size too large: /rom@etc/acpi/tables: 0x201000 > 0x200000: Invalid argument",
        "error while loading state for instance 0x0 of device 'ram'",
        "load of migration failed: Invalid argument"]


def test_a_fixed_block_of_another_length_is_a_size_mismatch() -> None:
    data = with_block_length(PC.read_bytes(), "pc.bios", 0x41000)
    with layout_guest(PC) as guest, pytest.raises(RemoteProtocolError) as refused:
        load(guest, data)
    assert refused.value.message == "Size mismatch: pc.bios: 0x41000 != 0x40000: Invalid argument"


def test_postcopy_marks_pages_beyond_the_used_length_present() -> None:
    with layout_guest(PC) as guest:
        guest.enable_postcopy()
        part = guest.memory.present[guest.memory.page_slice(TABLES)]
        assert part[:0x20].sum() == 0 and part[0x20:].all()
        guest.resize_block(TABLES, 0x22000)
        assert part[:0x22].sum() == 0 and part[0x22:].all()


# ------------------------------------------------------------------ --layout FILE
def test_load_layout_reads_a_layout_file(tmp_path: Path) -> None:
    layout = layout_from_stream(PC)
    path = tmp_path / "pc.json"
    path.write_text(json.dumps(layout.to_json()))
    assert load_layout(path) == layout


@pytest.mark.parametrize(("content", "message"), [
    (b"{", "not a machine layout"),
    (b"[]", "not a machine layout"),
    (b'{"format": 1}', "not a machine layout"),
    (b" " * (MAX_LAYOUT_BYTES + 1), "larger than"),
])
def test_load_layout_refuses_what_is_not_a_layout(tmp_path: Path, content: bytes,
                                                  message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"--layout {re.escape(str(path))}: {message}"):
        load_layout(path)


def test_a_layout_with_a_bad_block_name_is_refused(tmp_path: Path) -> None:
    doc = layout_from_stream(PC).to_json()
    doc["blocks"][1][0] = "/rom@etc/acpi tables"
    path = tmp_path / "pc.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="RAM block name '/rom@etc/acpi tables'"):
        spec_from_layout(GuestSpec(), load_layout(path))


def test_cli_destination_with_a_bad_layout_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    result = CliRunner().invoke(app, ["destination", "--qmp", f"unix:{tmp_path}/q.sock",
                                      "--layout", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"harness destination: --layout {missing}: No such file or directory" in \
        result.output
