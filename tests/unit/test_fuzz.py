"""Every truncation and every single-byte mutation ends in a protocol error or a valid
decode: never another exception, never a hang (pytest-timeout guards each test)."""

from __future__ import annotations

import pytest

from harness.protocol import RemoteProtocolError, StreamDecoder, decode_all
from harness.protocol.savevm import PausedStream
from tests.unit.test_roundtrip import COMPOSITE

SMALL = PausedStream().encode()  # = qemu-vectors/precopy/none-nom.bin, 747 bytes
SLICES = 12


def _decode(data: bytes, **options) -> bool:
    """True when the bytes decode, False on a protocol error; anything else propagates."""
    try:
        decode_all(data, **options)
        return True
    except RemoteProtocolError as err:
        assert err.message and err.offset is not None and 0 <= err.offset <= len(data)
        return False


TRAILER = 1 + 4 + 486  # 0x06, be32 length, the JSON


@pytest.mark.parametrize("stream,passing", [(SMALL, [len(SMALL) - TRAILER]), (COMPOSITE, [])],
                         ids=["none-nom", "composite"])
def test_every_truncation_point(stream, passing):
    outcomes = [_decode(stream[:n]) for n in range(len(stream))]
    # only a cut right after EOF (before the optional trailer) is a whole stream
    assert [n for n, ok in enumerate(outcomes) if ok] == passing
    assert _decode(stream)


@pytest.mark.parametrize("part", range(SLICES))
def test_every_single_byte_mutation_of_the_smallest_vector(part):
    step = -(-len(SMALL) // SLICES)
    trailer_json = len(SMALL) - 486
    for pos in range(part * step, min(len(SMALL), (part + 1) * step)):
        outcomes = set()
        for value in range(256):
            if value == SMALL[pos]:
                continue
            mutated = bytearray(SMALL)
            mutated[pos] = value
            outcomes.add(_decode(bytes(mutated)))
            _decode(bytes(mutated), skip_unknown_devices=True, machine="none", capabilities=())
        if pos < 4:
            assert outcomes == {False}, pos  # the magic
        if pos >= trailer_json:
            assert outcomes == {True}, pos  # the trailer is opaque to a loader


@pytest.mark.parametrize("part", range(4))
def test_mutations_of_the_composite_stream(part):
    step = -(-len(COMPOSITE) // 4)
    for pos in range(part * step, min(len(COMPOSITE), (part + 1) * step)):
        for value in {0x00, 0xFF, COMPOSITE[pos] ^ 0x01, COMPOSITE[pos] ^ 0x80,
                      (COMPOSITE[pos] + 1) & 0xFF} - {COMPOSITE[pos]}:
            mutated = bytearray(COMPOSITE)
            mutated[pos] = value
            _decode(bytes(mutated))


def test_mutations_fed_in_chunks_fail_at_the_same_place():
    """The error (message and offset) does not depend on how bytes arrive."""
    for pos in range(0, len(SMALL), 7):
        mutated = bytearray(SMALL)
        mutated[pos] ^= 0x41
        whole = _error(bytes(mutated), len(mutated))
        assert _error(bytes(mutated), 3) == whole


def _error(data: bytes, chunk: int):
    decoder = StreamDecoder()
    try:
        for at in range(0, len(data), chunk):
            decoder.receive_data(data[at:at + chunk])
            decoder.events()
        decoder.receive_data(b"")
        decoder.events()
    except RemoteProtocolError as err:
        return err.message, err.offset
    return None
