"""Malformed streams fail with QEMU 7.2's words and the offset (qemu-7.2-interop.md 3.1)."""

from __future__ import annotations

import errno
import struct

import numpy as np
import pytest

from harness.protocol import (
    NEED_DATA,
    LocalProtocolError,
    RemoteProtocolError,
    StreamDecoder,
    decode_all,
)
from harness.protocol.savevm import PausedStream
from tests.conftest import pattern_bytes

pytestmark = pytest.mark.codec  # run again on the Python page path (.ci/run)


def _stream(**kw) -> bytes:
    ram = np.zeros(16 << 20, dtype=np.uint8)
    ram[0x10000:0x14000] = np.frombuffer(pattern_bytes(), np.uint8)
    return PausedStream(ram={"ram": ram}, **kw).encode()


STREAM = _stream()
TIMER = b"\x04\x00\x00\x00\x00\x05timer"


def _local_ram() -> dict[str, np.ndarray]:
    return {"ram": np.zeros(16 << 20, dtype=np.uint8)}


def _fails(data: bytes, **options) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(data, **options)
    return info.value


def _first_page_word(data: bytes) -> int:
    """Offset of the first page record word (after 02 sid of the PART)."""
    return data.index(b"\x02\x00\x00\x00\x02") + 5


def test_unknown_flag_combination():
    at = _first_page_word(STREAM)
    data = bytearray(STREAM)
    data[at + 6] |= 0x02  # 0x200 on the first zero page: flags 0x202 (it names the block)
    err = _fails(bytes(data))
    assert err.message == "Unknown combination of migration flags: 0x202"
    assert err.context == ("error while loading state section id 2(ram)",)
    assert err.offset == at
    assert err.qemu_lines[-1] == "load of migration failed: Invalid argument"


def test_unknown_flags_on_a_continue_record_print_them_all():
    at = _first_page_word(STREAM) + 8 + 4 + 1  # second record: zero page with CONTINUE
    data = bytearray(STREAM)
    data[at + 6] |= 0x02
    assert _fails(bytes(data)).message == "Unknown combination of migration flags: 0x222"


def test_unknown_block_in_page_record():
    at = _first_page_word(STREAM)
    data = STREAM[:at + 8] + b"\x03rbm" + STREAM[at + 12:]
    err = _fails(data)
    assert err.message == "Can't find block rbm"
    assert err.context == ("Illegal RAM offset 0", "error while loading state section id 2(ram)")


def test_page_offset_beyond_block():
    at = _first_page_word(STREAM) + 13  # second record: 0x1000 | ZERO | CONTINUE
    data = bytearray(STREAM)
    data[at:at + 8] = struct.pack(">Q", 0x1002000 | 0x22)
    assert _fails(bytes(data)).message == "Illegal RAM offset 1002000"


def test_continue_without_a_previous_block():
    at = _first_page_word(STREAM)
    data = STREAM[:at] + struct.pack(">Q", 0x22) + STREAM[at + 12:]
    assert _fails(data).message == "Ack, bad migration stream!"


def test_unknown_ramblock_in_mem_size():
    data = STREAM.replace(b"\x03ram\x00\x00\x00\x00\x01\x00\x00\x00", b"\x03qam\x00\x00\x00\x00\x01\x00\x00\x00", 1)
    err = _fails(data, ram=_local_ram())
    assert err.message == 'Unknown ramblock "qam", cannot accept migration'
    assert err.context == ("error while loading state for instance 0x0 of device 'ram'",)


def test_ramblock_size_mismatch():
    data = STREAM.replace(b"\x03ram\x00\x00\x00\x00\x01\x00\x00\x00",
                          b"\x03ram\x00\x00\x00\x00\x01\x10\x00\x00", 1)
    err = _fails(data, ram=_local_ram())
    assert err.message == "Size mismatch: ram: 0x1100000 != 0x1000000: Invalid argument"


def test_globalstate_with_unknown_runstate():
    err = _fails(STREAM.replace(b"prelaunch", b"qrelaunch"))
    assert err.message == "invalid parameter value: qrelaunch"
    assert err.context == ("error while loading state for instance 0x0 of device 'globalstate'",)


def test_unknown_device_idstr():
    err = _fails(STREAM.replace(b"\x05timer", b"\x05Timer"))
    assert err.message == ("Unknown savevm section or instance 'Timer' 0. Make sure that your "
                           "current VM setup matches your saved VM setup, including any "
                           "hotplugged devices")


def test_unknown_instance():
    at = STREAM.index(TIMER) + len(TIMER)
    data = STREAM[:at] + struct.pack(">I", 1) + STREAM[at + 4:]
    assert _fails(data).message.startswith("Unknown savevm section or instance 'timer' 1.")


def test_section_version_too_new():
    at = STREAM.index(TIMER) + len(TIMER) + 4
    data = STREAM[:at] + struct.pack(">I", 3) + STREAM[at + 4:]
    assert _fails(data).message == "savevm: unsupported version 3 for 'timer' v2"


def test_section_version_too_old():
    at = STREAM.index(TIMER) + len(TIMER) + 4
    data = STREAM[:at] + struct.pack(">I", 0) + STREAM[at + 4:]
    err = _fails(data)
    assert err.message == ("timer: incoming version_id 0 is too old for local minimum "
                           "version_id  1")


def test_timer_version_1_has_no_clock_offset():
    """A field with version_id 2 is absent from a version 1 section."""
    at = STREAM.index(TIMER) + len(TIMER) + 4
    body = at + 4
    data = STREAM[:at] + struct.pack(">I", 1) + STREAM[body:body + 16] + STREAM[body + 24:]
    events = decode_all(data)
    [timer] = [e for e in events if getattr(e, "idstr", None) == "timer" and hasattr(e, "state")]
    assert "cpu_clock_offset" not in timer.state and timer.version_id == 1


def test_missing_footer():
    at = STREAM.index(TIMER) + len(TIMER) + 8 + 24
    data = bytearray(STREAM)
    assert data[at] == 0x7E
    data[at] = 0x7F
    err = _fails(bytes(data))
    assert err.message == "Missing section footer for timer" and err.offset == at


def test_mismatched_footer_id():
    at = STREAM.index(TIMER) + len(TIMER) + 8 + 24
    data = STREAM[:at + 1] + struct.pack(">I", 1) + STREAM[at + 5:]
    assert _fails(data).message == ("Mismatched section id in footer for timer - read 0x1 "
                                    "expected 0x0")


def test_machine_type_mismatch_and_prefix_quirk():
    err = _fails(STREAM.replace(b"\x04none", b"\x04nonf", 1), machine="none")
    assert err.message == "Machine type received is 'nonf' and local is 'none'"
    other = PausedStream(machine="pc-i440fx-7.3").encode()
    err = _fails(other, machine="pc-i440fx-7.2")
    assert err.message == "Machine type received is 'pc-i440fx-7.3' and local is 'pc-i440fx-7.2'"
    # QEMU compares over the received length only: a prefix of the local name passes
    decode_all(PausedStream(machine="pc-i440fx").encode(), machine="pc-i440fx-7.2")


def test_not_a_migration_stream():
    err = _fails(b"QEVX" + STREAM[4:])
    assert err.message == "Not a migration stream" and err.offset == 0
    assert _fails(b"hello").message == "Not a migration stream"
    assert _fails(b"").message == "Not a migration stream"


def test_version_2_is_obsolete_and_others_unsupported():
    err = _fails(STREAM[:4] + b"\x00\x00\x00\x02" + STREAM[8:])
    assert err.message == "SaveVM v2 format is obsolete and don't work anymore"
    assert err.qemu_lines[-1] == "load of migration failed: Operation not supported"
    assert _fails(STREAM[:4] + b"\x00\x00\x00\x04").message == "Unsupported migration stream version"


def test_truncated_before_eof_is_an_io_error():
    eof = STREAM.rindex(b"\x00\x06\x00\x00\x01\xe6")
    err = _fails(STREAM[:eof])
    assert err.errno == errno.EIO
    assert err.qemu_lines[-1] == "load of migration failed: Input/output error"


def test_truncated_inside_globalstate():
    at = STREAM.index(b"prelaunch")
    err = _fails(STREAM[:at + 20])
    assert err.message == "Failed to load globalstate:runstate"
    assert err.context == ("error while loading state for instance 0x0 of device 'globalstate'",)
    assert err.errno == errno.EIO


def test_unknown_section_type():
    at = STREAM.index(TIMER)
    data = bytearray(STREAM)
    data[at] = 0x09
    err = _fails(bytes(data))
    assert err.message == "Unknown savevm section type 9" and err.offset == at


def test_configuration_missing_when_expected():
    data = PausedStream(configuration=False).encode()
    assert _fails(data, configuration=True).message == "Configuration section missing"
    decode_all(data)  # detected: fine


def test_footers_missing_when_expected():
    data = PausedStream(footers=False).encode()
    assert _fails(data, footers=True).message == "Missing section footer for ram"


def test_ignore_shared_capability_mismatch():
    data = PausedStream(capabilities=("x-ignore-shared",)).encode()
    err = _fails(data, capabilities=())
    assert err.message == "Capability x-ignore-shared is off, but received capability is on"
    decode_all(data, capabilities=("x-ignore-shared",))


def test_uuid_mismatch():
    source = bytes.fromhex("123456789abcdef01122334455667788")
    local = bytes.fromhex("000000009abcdef01122334455667788")
    err = _fails(PausedStream(uuid=source).encode(), uuid=local)
    assert err.message == ("UUID received is 12345678-9abc-def0-1122-334455667788 and local is "
                           "00000000-9abc-def0-1122-334455667788")


def test_missing_vmdesc_is_only_a_warning():
    from harness.protocol import StreamWarning

    eof = STREAM.rindex(b"\x00\x06\x00\x00\x01\xe6")
    events = decode_all(STREAM[:eof + 1] + b"\x00")
    assert [e.message for e in events if isinstance(e, StreamWarning)] == [
        "Expected vmdescription section, but got 0"]


def test_decoder_refuses_use_after_an_error():
    decoder = StreamDecoder()
    decoder.receive_data(b"XXXXXXXX")
    with pytest.raises(RemoteProtocolError):
        decoder.next_event()
    with pytest.raises(RemoteProtocolError, match="decoder already failed: Not a migration"):
        decoder.next_event()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(b"more")


def test_partial_record_needs_data_and_offset_is_exact():
    decoder = StreamDecoder()
    decoder.receive_data(STREAM[:5])
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(STREAM[5:20])
    assert decoder.next_event().version == 3
    assert decoder.offset == 8


def test_feeding_after_close_is_a_local_error():
    decoder = StreamDecoder()
    decoder.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"x")


def test_huge_block_in_analysis_is_refused_not_allocated():
    data = bytearray(STREAM)
    at = data.index(b"\x03ram\x00\x00\x00\x00\x01\x00\x00\x00")
    total = data.index(b"\x00\x00\x00\x00\x01\x00\x00\x04")
    data[total:total + 8] = struct.pack(">Q", (1 << 50) | 4)
    data[at + 4:at + 12] = struct.pack(">Q", 1 << 50)
    err = _fails(bytes(data))
    assert "larger than this decoder's limit" in err.message
