"""Machine layouts: a real pc/q35 stream framed exactly from QEMU's own description of it.

The precopy vectors (pc-m16, q35-m16) carry their vmdesc: the layout read from it frames
every device section, each ending on its footer.  The live and postcopy pc captures are
framed with the pc-m16 layout after it learned, from the live stream's own vmdesc, the
subsections a running guest adds (which it first reports as a named loss of framing).
The cache key and the layout document are checked without QEMU (tests/e2e has the probe).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest

from harness.analyze import analyze_file, summary_lines
from harness.faults.framing import StreamFramer, StreamMemory
from harness.faults.netfaults import Armed, FrameFault, parse_fault
from harness.faults.triggers import parse_trigger
from harness.protocol import RemoteProtocolError, decode_all
from harness.protocol.events import DeviceState
from harness.qemu.layout import (
    LayoutError,
    MachineLayout,
    key_args,
    layout_from_stream,
    layout_key,
    probe_args,
    read_cached,
    remember,
)
from tests.conftest import SHARED_VECTORS
from tests.unit.test_proxy_framing import check_frame, frame_all

VECTORS = SHARED_VECTORS
PC = VECTORS / "precopy" / "pc-m16.bin"
Q35 = VECTORS / "precopy" / "q35-m16.bin"
LIVE = VECTORS / "live" / "live-pc-m16.bin"
POSTCOPY = sorted((VECTORS / "postcopy").glob("real-pc-m64-postcopy-*.fwd.bin"))
pytestmark = pytest.mark.skipif(not PC.exists(), reason=f"QEMU vectors not found at {VECTORS} "
                                "(they live in ../shared)")

MIB = 1 << 20
#: F38 with -m 16
BLOCKS = (("pc.ram", 16 * MIB), ("/rom@etc/acpi/tables", 0x20000), ("pc.bios", 0x40000),
          ("pc.rom", 0x20000), ("/rom@etc/table-loader", 0x1000), ("/rom@etc/acpi/rsdp", 0x1000))
#: F39/F40 without serial (these vectors were made without -serial)
PC_DEVICES = ["timer", "cpu_common", "cpu", "kvm-tpr-opt", "apic", "fw_cfg", "PCIHost",
              "PCIBUS", "0000:00:00.0/I440FX", "dma", "dma", "0000:00:01.0/PIIX3", "i8259",
              "i8259", "ioapic", "hpet", "mc146818rtc", "i8254", "pcspk", "fdc", "ps2kbd",
              "ps2mouse", "pckbd", "vmmouse", "port92", "0000:00:01.1/ide", "i2c_bus",
              "0000:00:01.3/piix4_pm", "acpi_build", "globalstate"]


@pytest.fixture(scope="module")
def pc() -> MachineLayout:
    return layout_from_stream(PC)


@pytest.fixture(scope="module")
def learned(pc: MachineLayout) -> MachineLayout:
    """pc-m16's layout plus what the live capture's own vmdesc shows."""
    seen: list = []
    framing = frame_all(StreamFramer(StreamMemory(pc, seen.append)), LIVE.read_bytes())
    assert framing.lost is not None and len(seen) == 1
    return pc.merge(seen[0])


def device_frames(data: bytes, layout: MachineLayout) -> list:
    framer = StreamFramer(StreamMemory(layout))
    framing = frame_all(framer, data, range(0, len(data), 65536))
    assert framing.lost is None, framing.lost
    assert framer.guessed == 0
    for frame in framing.frames:
        check_frame(data, frame)
    frames = framing.frames
    out = []
    for i, frame in enumerate(frames):
        if frame.kind == "section" and frame.detail != "ram":
            footer = frames[i + 1]  # every device section lands exactly on its footer
            assert (footer.name, footer.start, footer.detail) == \
                ("SECTION_FOOTER", frame.end, frame.detail)
            assert data[footer.start] == 0x7E
            assert data[frame.start + 1:frame.start + 5] == data[footer.start + 1:footer.end]
            out.append(frame)
    return out


@pytest.mark.parametrize("path, machine, count", [(PC, "pc-i440fx-7.2", 30),
                                                   (Q35, "pc-q35-7.2", 29)])
def test_a_precopy_vector_gives_its_layout_and_is_framed_exactly(path, machine, count):
    layout = layout_from_stream(path)
    assert (layout.machine, layout.blocks) == (machine, BLOCKS)
    assert len(layout.device_names()) == count
    if path == PC:
        assert layout.device_names() == PC_DEVICES
    frames = device_frames(path.read_bytes(), layout)
    assert [f.detail for f in frames] == layout.device_names()


def test_an_undescribed_subsection_is_a_named_error(pc):
    framing = frame_all(StreamFramer(StreamMemory(pc)), LIVE.read_bytes())
    assert framing.lost is not None
    assert "cpu/msr_smi_count" in framing.lost and "device 'cpu'" in framing.lost
    with pytest.raises(RemoteProtocolError) as caught:
        decode_all(LIVE.read_bytes(), ram="discard", devices=pc.devices())
    assert caught.value.offset == 494848  # where the cpu section's subsection starts
    assert LIVE.read_bytes()[494848] == 0x05


def test_an_undescribed_device_is_a_named_error(pc):
    doc = {**pc.vmdesc, "devices": [e for e in pc.vmdesc["devices"] if e["name"] != "fdc"]}
    without = MachineLayout(pc.key, pc.machine, pc.blocks, doc)
    framing = frame_all(StreamFramer(StreamMemory(without)), PC.read_bytes())
    assert framing.lost is not None and "'fdc' 0" in framing.lost
    assert "Unknown savevm section" in framing.lost


def test_the_layout_learns_a_subsection_first_seen_live(pc, learned):
    cpu = next(e for e in learned.vmdesc["devices"] if e["name"] == "cpu")
    assert {s["vmsd_name"] for s in cpu["subsections"]} >= {"cpu/msr_smi_count",
                                                           "cpu/poll_control_msr"}
    assert learned.merge(learned.vmdesc) is learned  # nothing new: the same layout
    assert len(learned.device_names()) == len(pc.device_names())


@pytest.mark.parametrize("path", [LIVE, *POSTCOPY], ids=lambda p: p.name)
def test_live_and_postcopy_captures_are_framed_exactly(learned, path):
    frames = device_frames(path.read_bytes(), learned)
    assert [f.detail for f in frames] == PC_DEVICES


def test_a_frame_trigger_and_fault_aim_at_a_named_section(pc):
    data = PC.read_bytes()
    framing = frame_all(StreamFramer(StreamMemory(pc)), data)
    trigger = parse_trigger({"frame": "SECTION_FULL", "section": "0000:00:01.1/ide"})
    position, frame = trigger.scan(framing, 0, 0, len(data))
    assert frame.detail == "0000:00:01.1/ide" and position == frame.payload
    assert data[frame.start + 6:frame.start + 6 + 16] == b"0000:00:01.1/ide"
    fault = parse_fault({"kind": "net.corrupt", "frame": "SECTION_FULL", "section": "fdc",
                         "where": "payload"})
    pending = FrameFault(Armed("f", None, fault, False), fault, ("main",), random.Random(1))
    aimed = list(pending.candidates(framing, 0))
    assert [f.detail for f in aimed] == ["fdc"] and aimed[0].name == "SECTION_FULL"
    edit, detail = pending.corrupt(aimed[0], lambda at: data[at])
    assert aimed[0].payload <= edit.start < aimed[0].end and detail["where"] == "payload"
    with pytest.raises(ValueError, match="section"):
        parse_trigger({"frame": "PONG", "section": "fdc"})
    with pytest.raises(ValueError, match="section idstr"):
        parse_trigger({"frame": "SECTION_FULL", "section": "x" * 300})


def test_cache_key_args_keep_the_device_set_and_drop_paths():
    base = ["-accel", "tcg", "-M", "pc", "-m", "64", "-nodefaults", "-drive",
            "file=/a/guest.img,format=raw,if=ide", "-serial", "file:/a/src.serial",
            "-qmp", "unix:/a/q.sock,server=on,wait=off"]
    other_paths = ["-accel", "tcg", "-M", "pc", "-m", "64", "-nodefaults", "-drive",
                   "file=/b/guest.img,format=raw,if=ide", "-serial", "file:/b/x.serial",
                   "-incoming", "defer", "-S"]
    assert key_args(base) == key_args(other_paths)
    for change in (("-M", "q35"), ("-accel", "kvm"), ("-m", "256")):
        changed = list(base)
        changed[changed.index(change[0]) + 1] = change[1]
        assert key_args(changed) != key_args(base), change
    assert key_args([*base, "-device", "e1000"]) != key_args(base)
    assert key_args(base[:-2] + ["-serial", "none"]) != key_args(base)  # no serial device


def test_cache_key_hashes_the_binary(tmp_path):
    echo = shutil.which("echo")
    assert echo is not None
    args = ["-M", "pc", "-m", "64", "-serial", "file:/x"]
    key = layout_key(echo, args)
    assert key == layout_key(echo, ["-M", "pc", "-m", "64", "-serial", "file:/y"])
    assert key != layout_key(echo, ["-M", "q35", "-m", "64"])
    copy = tmp_path / "echo"
    shutil.copy2(echo, copy)
    assert layout_key(str(copy), args) != key  # another binary (path)


def test_probe_args_touch_nothing_of_the_real_run():
    args = probe_args(["-M", "pc", "-serial", "file:/run/src.serial", "-qmp", "unix:/q,server=on",
                       "-incoming", "defer", "-chardev", "file,id=c0,path=/run/log", "-S",
                       "-drive", "file=/run/g.img,format=raw,if=ide"])
    assert args == ["-M", "pc", "-serial", "null", "-chardev", "null,id=c0", "-drive",
                    "file=/run/g.img,format=raw,if=ide", "-snapshot", "-S"]


def test_to_json_round_trips_and_from_json_refuses_bad_documents(pc, tmp_path):
    doc = json.loads(json.dumps(pc.to_json()))
    assert MachineLayout.from_json(doc) == pc
    bad = [
        [], {**doc, "format": 2}, {**doc, "extra": 1}, {**doc, "key": "not hex"},
        {**doc, "blocks": "pc.ram"}, {**doc, "blocks": [["pc.ram", -1]]},
        {**doc, "blocks": [["pc.ram", 1]] * 2000}, {**doc, "machine": "x" * 1000},
        {**doc, "vmdesc": {"devices": "no"}},
        {**doc, "vmdesc": {"devices": [{"name": "d", "instance_id": 0, "vmsd_name": "d",
                                        "version": 1, "fields": [{"name": "f", "type": "buffer",
                                                                  "size": -4}]}]}},
        {**doc, "vmdesc": {"devices": [{"name": "d", "instance_id": "0"}]}},
        {**doc, "vmdesc": {"devices": [{"name": "d", "instance_id": 0}] * 5000}},
    ]
    deep: dict = {"devices": []}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    bad.append({**doc, "vmdesc": deep})
    for document in bad:
        with pytest.raises(LayoutError):
            MachineLayout.from_json(document)
    (tmp_path / f"{pc.key}.json").write_text("{not json")
    assert read_cached(pc.key, tmp_path) is None  # a broken cache file is a miss


def test_remember_stores_only_what_is_new(pc, learned, tmp_path):
    assert remember(pc, pc.vmdesc, tmp_path) is pc and not list(tmp_path.iterdir())
    merged = remember(pc, learned.vmdesc, tmp_path)
    assert merged == learned
    assert read_cached(pc.key, tmp_path) == learned


def test_analyze_lists_every_field_exactly(learned, tmp_path):
    analysis = analyze_file(PC)
    assert analysis.descriptions == "vmdesc" and analysis.guessed == 0
    for device in analysis.devices:  # the fields' sizes add up to the section's
        assert sum(row["size"] for row in device["layout"]) == device["size"], device["idstr"]
    saved = tmp_path / "pc.layout.json"
    saved.write_text(json.dumps(learned.to_json()))
    postcopy = analyze_file(POSTCOPY[0], layout=saved)
    assert postcopy.guessed == 0 and len(postcopy.devices) == 30
    assert all(d["packaged"] for d in postcopy.devices)
    guessed = analyze_file(POSTCOPY[0], use_cache=False)
    assert guessed.descriptions == "guessed" and guessed.guessed > 20
    assert any("GUESSED" in line for line in summary_lines(guessed))
    events = decode_all(POSTCOPY[0].read_bytes(), ram="discard", devices=learned.devices())
    assert sum(isinstance(e, DeviceState) for e in events) == 30


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "analyze", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_analyze_cli_prints_every_field_of_a_pc_stream():
    out = run_analyze(str(PC))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "devices (described by vmdesc):" in text and "GUESSED" not in text
    assert "  mc146818rtc instance 0 v3 section 19: 245 bytes, decoded\n" \
           "    cmos_data buffer 128 = 00000000000007010100260200800000..(+112 bytes)\n" \
           "    cmos_index uint8 1 = 0\n" in text
    assert "    subsection fw_cfg/dma v0 (24 bytes)\n" in text  # 1+1+10+4 header + 8


def test_analyze_cli_frames_a_postcopy_capture_with_a_layout(tmp_path):
    out = run_analyze(str(POSTCOPY[0]), "--layout", str(LIVE), "--no-cache")
    assert out.returncode == 0, out.stderr
    assert "GUESSED" not in out.stdout and "decoded (in PACKAGED)" in out.stdout
    assert "    subsection cpu/msr_smi_count v1 (" in out.stdout
    guessed = run_analyze(str(POSTCOPY[0]), "--no-cache")
    assert guessed.returncode == 0 and "device sections were GUESSED" in guessed.stdout
    (tmp_path / "bad.json").write_text('{"format": 1}')
    bad = run_analyze(str(POSTCOPY[0]), "--layout", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "--layout" in bad.stderr


def test_array_elements_written_differently_are_decoded_each_as_written():
    """QEMU 7.2's ide writes `identify_data` (512 bytes) only for a drive whose identify
    data is set: bus[0].ifs index 0 is 540 bytes, index 1 28 (seen with a booted disk).
    Merging the elements into one array of the first's shape misread the section."""
    from harness.protocol.vmstate import from_vmdesc, load_state
    from harness.protocol.wire import Reader

    def drive(identify: bool) -> dict:
        fields = [{"name": "status", "type": "uint8", "size": 1}]
        if identify:
            fields.append({"name": "identify_data", "type": "buffer", "size": 4})
        return {"vmsd_name": "ide_drive", "version": 3, "fields": fields}

    entry = {"name": "ide", "instance_id": 0, "vmsd_name": "ide", "version": 3, "fields": [
        {"name": "ifs", "index": 0, "type": "struct", "struct": drive(True), "size": 5},
        {"name": "ifs", "index": 1, "type": "struct", "struct": drive(False), "size": 1},
        {"name": "tail", "type": "uint8", "size": 1}]}
    data = bytes([0x50, 1, 2, 3, 4, 0x41, 0x7F])
    reader = Reader(data, 0, len(data), closed=True)
    values = load_state(reader, from_vmdesc(entry), 3)
    assert reader.pos == len(data)
    assert values["tail"] == 0x7F
    assert values["ifs[1]"][0]["status"] == 0x41 and values["ifs[0]"][0]["status"] == 0x50
