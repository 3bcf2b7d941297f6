"""The harness codec against a real QEMU 7.2, in both directions.

Strategy: one paused `-M none -m 16` QEMU per test, streams going through files with
`exec:` URIs (no ports, so `-n auto` is safe), guest memory read back with `pmemsave`.
(1) QEMU writes, the harness decodes, and the decoded RAM must equal QEMU's own dump;
(2) the harness writes, QEMU loads, and QEMU's memory must hold what the harness put
there; (3) both refuse the same corrupted stream with the same first message.  Every
QEMU is started through the `qemu` fixture, which closes (reaps) it on every path.
"""

from __future__ import annotations

import random
import secrets
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from harness.protocol import (
    DeviceState,
    RamPages,
    RemoteProtocolError,
    StreamDecoder,
    decode_all,
)
from harness.protocol.constants import RamFlag
from harness.protocol.savevm import PausedStream
from harness.qemu import QemuProcess, QMPError, pmemsave, read_phys, wait_migration
from tests.qemu_env import COMMON, QEMU_MARKS

pytestmark = [*QEMU_MARKS]

RAM_SIZE = 16 << 20
PAGE = 4096
PATTERN_PAGES = 4
LOADER_ADDR = 0x10000
TIMER_FULL = b"\x04\x00\x00\x00\x00\x05timer"  # FULL, section id 0, "timer"
CONFIG_NONE = b"\x07\x00\x00\x00\x04none"  # configuration, be32 len 4, "none"

Launch = Callable[..., QemuProcess]


def make_pattern() -> bytes:
    """16 KiB: pages 0-2 hold (i*7 + j) & 0xff; page 3 is zero but for a last 0x01."""
    j = np.arange(PAGE, dtype=np.uint32)
    pages = [((i * 7 + j) & 0xFF).astype(np.uint8) for i in range(3)]
    last = np.zeros(PAGE, dtype=np.uint8)
    last[-1] = 0x01
    return np.concatenate([*pages, last]).tobytes()


@pytest.fixture
def pattern_file(tmp_path: Path) -> Path:
    path = tmp_path / "pattern.bin"
    path.write_bytes(make_pattern())
    return path


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Launch]:
    """Start QEMUs with COMMON args in this test's directory; every one is reaped."""
    started: list[QemuProcess] = []

    def launch(*args: str, name: str = "qemu") -> QemuProcess:
        proc = QemuProcess([*COMMON, *args], tmp_path, name=name)
        started.append(proc)
        return proc.start()

    try:
        yield launch
    finally:
        for proc in started:
            proc.close()


def load_into_destination(qemu: Launch, stream: Path) -> QemuProcess:
    """A paused `-incoming defer` destination told to load `stream`."""
    dst = qemu("-S", "-incoming", "defer", name="dst")
    try:
        dst.qmp.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(stream))}"})
    except QMPError as exc:  # a destination failing fast may close QMP before replying
        if exc.error_class != "ConnectionClosed":
            raise
    return dst


def harness_stream(ram: np.ndarray) -> bytes:
    return PausedStream(ram={"ram": ram}).encode()


# ---------------------------------------------------------------------------- QEMU -> harness
def test_real_qemu_stream_decodes_and_ram_equals_pmemsave(
        qemu: Launch, tmp_path: Path, pattern_file: Path) -> None:
    src = qemu("-S", "-device", f"loader,file={pattern_file},addr={LOADER_ADDR:#x}", name="src")
    stream = tmp_path / "stream.bin"
    src.qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(stream))}"})
    info = wait_migration(src.qmp)
    assert info["status"] == "completed", info
    dump = tmp_path / "pmem.bin"
    pmemsave(src.qmp, 0, RAM_SIZE, dump)

    decoder = StreamDecoder()
    decoder.receive_data(stream.read_bytes())
    decoder.receive_data(b"")
    events = decoder.events()

    ram = decoder.ram["ram"]
    guest = np.frombuffer(dump.read_bytes(), dtype=np.uint8)
    assert ram.size == RAM_SIZE == guest.size
    assert np.array_equal(ram, guest), "decoded RAM differs from QEMU's pmemsave"
    end = LOADER_ADDR + len(make_pattern())
    assert ram[LOADER_ADDR:end].tobytes() == make_pattern()

    normal = sum(int((e.kinds == RamFlag.PAGE).sum()) for e in events if isinstance(e, RamPages))
    assert normal == PATTERN_PAGES, "QEMU sends exactly the loader's pages as normal pages"
    devices = {e.idstr: e for e in events if isinstance(e, DeviceState)}
    assert set(devices) == {"timer", "globalstate"}
    timer_state = devices["timer"].state
    assert timer_state is not None and timer_state["cpu_ticks_offset"] == 0
    state = devices["globalstate"].state
    assert state is not None and bytes(state["runstate"]).startswith(b"prelaunch\0")


# ---------------------------------------------------------------------------- harness -> QEMU
def test_harness_stream_loads_into_real_qemu(qemu: Launch, tmp_path: Path) -> None:
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    why = f"(seed {seed})"
    offset = rng.randrange(RAM_SIZE // PAGE - PATTERN_PAGES + 1) * PAGE
    pattern = make_pattern()
    ram = np.zeros(RAM_SIZE, dtype=np.uint8)
    ram[offset:offset + len(pattern)] = np.frombuffer(pattern, dtype=np.uint8)
    outside = rng.choice([p for p in range(RAM_SIZE // PAGE)
                          if not offset <= p * PAGE < offset + len(pattern)]) * PAGE
    stream = tmp_path / "harness.bin"
    stream.write_bytes(harness_stream(ram))

    dst = load_into_destination(qemu, stream)
    info = wait_migration(dst.qmp)
    assert info["status"] == "completed", f"{info} {why}\n{dst.stderr_text()}"

    assert read_phys(dst.qmp, offset, len(pattern), tmp_path) == pattern, \
        f"pattern at {offset:#x} not in guest memory {why}"
    assert read_phys(dst.qmp, outside, PAGE, tmp_path) == bytes(PAGE), \
        f"page {outside:#x} outside the pattern is not zero {why}"
    whole = read_phys(dst.qmp, 0, RAM_SIZE, tmp_path)
    assert whole == ram.tobytes(), f"guest memory differs from the harness RAM {why}"
    assert dst.qmp.execute("query-status")["status"] == "prelaunch"


# ---------------------------------------------------------------------------- same refusals
def corrupt_timer_footer(data: bytearray) -> None:
    """The 0x7e footer after the timer section becomes 0x7f."""
    footer = b"\x7e" + TIMER_FULL[1:5]  # 0x7e, be32 section id 0
    at = data.index(footer, data.index(TIMER_FULL) + len(TIMER_FULL))
    data[at] = 0x7F


def corrupt_machine_name(data: bytearray) -> None:
    """The configuration's machine name "none" becomes "nonf"."""
    at = data.index(CONFIG_NONE) + len(CONFIG_NONE) - 1
    data[at] = ord("f")


def corrupt_section_type(data: bytearray) -> None:
    """The timer FULL section's type byte 0x04 becomes 0x09."""
    data[data.index(TIMER_FULL)] = 0x09


CORRUPTIONS = [
    pytest.param(corrupt_timer_footer, "Missing section footer for timer", id="footer-7f"),
    pytest.param(corrupt_machine_name, "Machine type received is 'nonf' and local is 'none'",
                 id="machine-nonf"),
    pytest.param(corrupt_section_type, "Unknown savevm section type 9", id="section-type-9"),
]


@pytest.mark.parametrize(("corrupt", "message"), CORRUPTIONS)
def test_real_qemu_and_harness_reject_the_same_corruption(
        qemu: Launch, tmp_path: Path, corrupt: Callable[[bytearray], None],
        message: str) -> None:
    ram = np.zeros(RAM_SIZE, dtype=np.uint8)
    ram[LOADER_ADDR:LOADER_ADDR + PATTERN_PAGES * PAGE] = np.frombuffer(make_pattern(), np.uint8)
    good = harness_stream(ram)
    data = bytearray(good)
    corrupt(data)
    assert data != good
    stream = tmp_path / "corrupt.bin"
    stream.write_bytes(data)

    dst = load_into_destination(qemu, stream)
    status = dst.wait_exit(timeout=30)
    stderr = dst.stderr_text()
    assert status == 1, f"exit status {status}\n{stderr}"
    assert message in stderr

    with pytest.raises(RemoteProtocolError) as refused:
        decode_all(bytes(data), machine="none")
    assert refused.value.message == message
    printed = [line.removeprefix("qemu-system-x86_64: ") for line in stderr.splitlines()]
    assert printed == refused.value.qemu_lines, "QEMU and the harness print different lines"
