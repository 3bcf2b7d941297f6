"""harness/qemu/replay.py on QEMU 7.2's own streams (qemu-vectors): what a harness source
replays of a machine, and captures it refuses in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.guest import GuestSpec
from harness.qemu.replay import ReplayError, load_replay, replay_guest_spec


def test_a_pc_stream_gives_the_machine_its_roms_and_its_device_sections(vectors: Path) -> None:
    replay = load_replay(vectors / "precopy" / "pc-m16.bin")
    assert replay.machine.startswith("pc-i440fx-")
    assert dict(replay.blocks)["pc.ram"] == 16 << 20 and "pc.ram" not in replay.roms
    assert len(replay.roms["pc.bios"]) == 256 << 10 and any(replay.roms["pc.bios"])
    assert replay.device_sections[0] == 0x04 and replay.trailer[0] == 0x06  # FULL, VMDESC
    assert "globalstate/0" in replay.devices and replay.devices[0] == "timer/0"
    spec = replay_guest_spec(GuestSpec(fill=0.5, seed=3), replay)
    assert (spec.machine, spec.fill, spec.described) == (replay.machine, 0.5, ())
    assert [b.name for b in spec.blocks] == [name for name, _ in replay.blocks]


def _corrupt(data: bytes) -> bytes:
    """The pc stream with its first device section's type byte (FULL, 0x04) made 0x7f."""
    at = data.index(b"\x05timer") - 5
    return data[:at] + b"\x7f" + data[at + 1:]


@pytest.mark.parametrize(("name", "change", "words"), [
    ("none-m16.bin", None, "no RAM block 'pc.ram' for the guest's pages"),
    ("pc-m16.bin", lambda d: d[:len(d) // 2], "not a precopy stream with a VM description"),
    ("pc-m16.bin", _corrupt, "Unknown savevm section type 127"),  # QEMU's words
    ("absent.bin", None, "No such file or directory"),
])
def test_a_capture_that_cannot_be_replayed_is_refused_in_one_line(vectors, tmp_path, name,
                                                                  change, words) -> None:
    path = vectors / "precopy" / name
    if change is not None:
        path = tmp_path / name
        path.write_bytes(change((vectors / "precopy" / name).read_bytes()))
    with pytest.raises(ReplayError) as caught:
        load_replay(path)
    text = str(caught.value)
    assert words in text and "\n" not in text and text.startswith(f"--replay-devices {path}")
