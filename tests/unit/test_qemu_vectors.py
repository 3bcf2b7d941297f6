"""Real QEMU 7.2 streams decode into the facts of qemu-7.2-interop.md, and re-encode exactly."""

from __future__ import annotations

import numpy as np
import pytest

from harness.analyze import analyze_file, extract_ram
from harness.protocol import (
    DeviceState,
    RamPages,
    SectionHeader,
    SectionType,
    StreamDecoder,
    VmDescription,
    decode_all,
    devices_from_vmdesc,
)
from harness.protocol.devices import runstate_of, standard_devices
from harness.protocol.replay import replay
from harness.protocol.savevm import PausedStream
from tests.conftest import pattern_bytes

pytestmark = pytest.mark.codec  # run again on the Python page path (.ci/run)

PRECOPY = ["none-nom", "none-m1", "none-m16", "none-m16-loader", "none-m16-novmdesc",
           "none-nom-nocfg", "none-nom-nofooter", "none-nom-uuid", "none-nom-ignshared",
           "pc-m16", "q35-m16", "microvm-m16"]

# qemu-7.2-interop.md 2.5: (section id, idstr, instance, version) of every FULL section
NONE_DEVICES = [(0, "timer", 0, 2), (4, "globalstate", 0, 1)]
PC_DEVICES = [
    (0, "timer", 0, 2), (4, "cpu_common", 0, 1), (5, "cpu", 0, 12), (6, "kvm-tpr-opt", 0, 1),
    (7, "apic", 0, 3), (8, "fw_cfg", 0, 2), (9, "PCIHost", 0, 1), (10, "PCIBUS", 0, 1),
    (11, "0000:00:00.0/I440FX", 0, 3), (12, "dma", 0, 1), (13, "dma", 1, 1),
    (14, "0000:00:01.0/PIIX3", 0, 3), (15, "i8259", 0, 1), (16, "i8259", 1, 1),
    (17, "ioapic", 0, 3), (18, "hpet", 0, 2), (19, "mc146818rtc", 0, 3), (20, "i8254", 0, 3),
    (21, "pcspk", 0, 1), (22, "fdc", 0, 2), (23, "ps2kbd", 0, 3), (24, "ps2mouse", 0, 2),
    (25, "pckbd", 0, 3), (26, "vmmouse", 0, 0), (27, "port92", 0, 1),
    (28, "0000:00:01.1/ide", 0, 3), (29, "i2c_bus", 0, 1), (30, "0000:00:01.3/piix4_pm", 0, 3),
    (39, "acpi_build", 0, 1), (40, "globalstate", 0, 1),
]
Q35_IDS = ["timer", "cpu_common", "cpu", "kvm-tpr-opt", "apic", "fw_cfg", "0000:00:00.0/mch",
           "PCIHost", "PCIBUS", "dma", "dma", "0000:00:1f.0/ICH9LPC", "i8259", "i8259", "ioapic",
           "hpet", "mc146818rtc", "i8254", "pcspk", "ps2kbd", "ps2mouse", "pckbd", "vmmouse",
           "port92", "0000:00:1f.2/ich9_ahci", "i2c_bus", "0000:00:1f.3/ich9_smb", "acpi_build",
           "globalstate"]
MICROVM_DEVICES = [
    (0, "timer", 0, 2), (4, "fw_cfg", 0, 2), (5, "cpu_common", 0, 1), (6, "cpu", 0, 12),
    (7, "kvm-tpr-opt", 0, 1), (8, "apic", 0, 3), (9, "ioapic", 0, 3), (10, "ioapic", 1, 3),
    (11, "acpi-ged", 0, 1), (12, "i8259", 0, 1), (13, "i8259", 1, 1), (14, "i8254", 0, 3),
    (15, "mc146818rtc", 0, 3), (16, "globalstate", 0, 1),
]
PC_BLOCKS = {"pc.ram": 0x1000000, "/rom@etc/acpi/tables": 0x20000, "pc.bios": 0x40000,
             "pc.rom": 0x20000, "/rom@etc/table-loader": 0x1000, "/rom@etc/acpi/rsdp": 0x1000}
# (zero, normal) pages per block, qemu-7.2-interop.md 2.4 and 1
PAGES = {
    "none-m1": {"ram": (256, 0)},
    "none-m16": {"ram": (4096, 0)},
    "none-m16-loader": {"ram": (4092, 4)},
    "pc-m16": {"pc.ram": (4096, 0), "/rom@etc/acpi/tables": (31, 1), "pc.bios": (18, 46),
               "pc.rom": (32, 0), "/rom@etc/table-loader": (0, 1), "/rom@etc/acpi/rsdp": (0, 1)},
    "q35-m16": {"pc.ram": (4096, 0), "/rom@etc/acpi/tables": (29, 3), "pc.bios": (18, 46),
                "pc.rom": (32, 0), "/rom@etc/table-loader": (0, 1),
                "/rom@etc/acpi/rsdp": (0, 1)},
    "microvm-m16": {"microvm.ram": (4096, 0), "/rom@etc/acpi/tables": (0, 1),
                    "pc.bios": (11, 5), "/rom@etc/table-loader": (0, 1),
                    "/rom@etc/acpi/rsdp": (0, 1)},
}


def _devices_for(data: bytes):
    events = decode_all(data, skip_unknown_devices=True)
    trailer = [e for e in events if isinstance(e, VmDescription)]
    return devices_from_vmdesc(trailer[0].json) if trailer else standard_devices()


def _decode(data: bytes):
    devices = _devices_for(data)
    decoder = StreamDecoder(devices=devices)
    decoder.receive_data(data)
    decoder.receive_data(b"")
    return decoder, decoder.events(), devices


def _full_sections(events):
    return [(e.section_id, e.idstr, e.instance_id, e.version_id) for e in events
            if isinstance(e, SectionHeader) and e.type == SectionType.SECTION_FULL]


def _page_counts(events):
    counts: dict[str, list[int]] = {}
    for e in events:
        if isinstance(e, RamPages):
            c = counts.setdefault(e.block, [0, 0])
            c[0] += int((e.kinds == 2).sum())
            c[1] += int((e.kinds == 8).sum())
    return {k: tuple(v) for k, v in counts.items()}


@pytest.mark.parametrize("name", PRECOPY + ["live-pc-m16"])
def test_vector_decodes_completely_with_every_device_described(vectors, name):
    folder = "live" if name.startswith("live") else "precopy"
    data = (vectors / folder / f"{name}.bin").read_bytes()
    decoder, events, _ = _decode(data)
    undecoded = [e.idstr for e in events if isinstance(e, DeviceState) and e.state is None]
    assert undecoded == []
    assert decoder.offset == len(data)


@pytest.mark.parametrize("name,expected", [
    ("none-m16", NONE_DEVICES), ("pc-m16", PC_DEVICES), ("microvm-m16", MICROVM_DEVICES)])
def test_device_sections_match_interop_table(vectors, name, expected):
    _, events, _ = _decode((vectors / "precopy" / f"{name}.bin").read_bytes())
    assert _full_sections(events) == expected


def test_q35_device_sections_in_stream_order(vectors):
    _, events, _ = _decode((vectors / "precopy" / "q35-m16.bin").read_bytes())
    assert [s[1] for s in _full_sections(events)] == Q35_IDS


@pytest.mark.parametrize("name", sorted(PAGES))
def test_ram_blocks_and_page_counts(vectors, name):
    data = (vectors / "precopy" / f"{name}.bin").read_bytes()
    decoder, events, _ = _decode(data)
    assert _page_counts(events) == PAGES[name]
    if name.startswith(("pc", "q35")):
        assert {k: v.size for k, v in decoder.ram.items()} == PC_BLOCKS


def test_live_stream_counts_111_normal_4115_zero_pages(vectors):
    _, events, _ = _decode((vectors / "live" / "live-pc-m16.bin").read_bytes())
    counts = _page_counts(events)
    assert sum(n for _, n in counts.values()) == 111
    assert sum(z for z, _ in counts.values()) == 4115


def test_none_sections_ram_start_part_end(vectors):
    _, events, _ = _decode((vectors / "precopy" / "none-m16.bin").read_bytes())
    ram = [(e.type, e.section_id) for e in events if isinstance(e, SectionHeader)
           and e.idstr == "ram"]
    assert ram == [(SectionType.SECTION_START, 2), (SectionType.SECTION_PART, 2),
                   (SectionType.SECTION_END, 2)]


def test_loader_pattern_extracted_at_0x10000(vectors, tmp_path):
    analysis = analyze_file(vectors / "precopy" / "none-m16-loader.bin")
    [path] = extract_ram(analysis, tmp_path)
    ram = path.read_bytes()
    assert path.name == "ram.bin" and len(ram) == 16 << 20
    pattern = pattern_bytes()
    assert pattern == (vectors / "precopy" / "pattern.bin").read_bytes()
    assert ram[0x10000:0x10000 + len(pattern)] == pattern
    assert ram[:0x10000] == bytes(0x10000)
    assert ram[0x14000:] == bytes(len(ram) - 0x14000)


def test_globalstate_runstate_is_prelaunch(vectors):
    _, events, _ = _decode((vectors / "precopy" / "none-nom.bin").read_bytes())
    [gs] = [e for e in events if isinstance(e, DeviceState) and e.idstr == "globalstate"]
    assert runstate_of(gs.state) == "prelaunch"
    assert gs.state["size"] == len("prelaunch") + 1


@pytest.mark.parametrize("name", PRECOPY + ["live-pc-m16"])
def test_replay_of_decoded_events_is_byte_identical(vectors, name):
    folder = "live" if name.startswith("live") else "precopy"
    data = (vectors / folder / f"{name}.bin").read_bytes()
    decoder, events, devices = _decode(data)
    assert replay(events, decoder.ram, devices) == data


def _loader_ram() -> np.ndarray:
    ram = np.zeros(16 << 20, dtype=np.uint8)
    pattern = np.frombuffer(pattern_bytes(), dtype=np.uint8)
    ram[0x10000:0x10000 + pattern.size] = pattern
    return ram


FROM_SCRATCH = {
    "none-nom": lambda: PausedStream(),
    "none-m1": lambda: PausedStream(ram={"ram": np.zeros(1 << 20, np.uint8)}),
    "none-m16": lambda: PausedStream(ram={"ram": np.zeros(16 << 20, np.uint8)}),
    "none-m16-loader": lambda: PausedStream(ram={"ram": _loader_ram()}),
    "none-m16-novmdesc": lambda: PausedStream(ram={"ram": np.zeros(16 << 20, np.uint8)},
                                              vmdesc=False),
    "none-nom-nocfg": lambda: PausedStream(configuration=False),
    "none-nom-nofooter": lambda: PausedStream(footers=False),
    "none-nom-uuid": lambda: PausedStream(
        uuid=bytes.fromhex("123456789abcdef01122334455667788")),
    "none-nom-ignshared": lambda: PausedStream(capabilities=("x-ignore-shared",)),
}


@pytest.mark.parametrize("name", sorted(FROM_SCRATCH))
def test_encoder_writes_qemus_none_streams_byte_for_byte(vectors, name):
    assert FROM_SCRATCH[name]().encode() == (vectors / "precopy" / f"{name}.bin").read_bytes()


def test_vmdesc_of_none_machine_is_qemus_486_bytes(vectors):
    data = (vectors / "precopy" / "none-nom.bin").read_bytes()
    [trailer] = [e for e in decode_all(data) if isinstance(e, VmDescription)]
    assert len(trailer.json_text) == 486
    assert PausedStream().encode().endswith(trailer.json_text)
