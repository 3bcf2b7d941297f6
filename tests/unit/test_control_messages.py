"""harness.control.messages and .address: QMP-shaped JSON both ways, and the refusals."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.control import (
    COMMAND_NOT_FOUND,
    QMP_ERROR_CLASSES,
    Error,
    Event,
    Execute,
    Hello,
    Kind,
    ProtocolMessageError,
    Return,
    check_address,
    decode,
    encode,
    from_frames,
    ipc_path,
    new_ipc_address,
    to_frames,
)
from harness.control.address import MAX_IPC_PATH

# ---------------------------------------------------------------------- exact shapes
SHAPES = [
    (Execute("migrate", {"uri": "tcp:127.0.0.1:4444"}, 7),
     {"execute": "migrate", "arguments": {"uri": "tcp:127.0.0.1:4444"}, "id": 7}),
    (Return({"status": "active"}, 7), {"return": {"status": "active"}, "id": 7}),
    (Return({}, 1), {"return": {}, "id": 1}),
    (Error(COMMAND_NOT_FOUND, "The command x has not been found", 3),
     {"error": {"class": "CommandNotFound", "desc": "The command x has not been found"},
      "id": 3}),
    (Error("GenericError", "JSON parse error", None),
     {"error": {"class": "GenericError", "desc": "JSON parse error"}}),
    (Event("MIGRATION", {"status": "setup"}, 1_700_000_000.25),
     {"event": "MIGRATION", "data": {"status": "setup"},
      "timestamp": {"seconds": 1_700_000_000, "microseconds": 250_000}}),
    (Hello("source", 4242, "0.1.0"),
     {"QMP": {"version": "0.1.0", "capabilities": []}, "role": "source", "pid": 4242}),
]


@pytest.mark.parametrize(("msg", "wire"), SHAPES, ids=lambda v: type(v).__name__)
def test_encode_is_exactly_the_qmp_shape(msg, wire):
    assert json.loads(encode(msg)) == wire
    assert decode(json.dumps(wire).encode()) == msg


def test_kind_of_each_message_is_its_json_member():
    assert [m.kind for m, _ in SHAPES] == [Kind.EXECUTE, Kind.RETURN, Kind.RETURN, Kind.ERROR,
                                          Kind.ERROR, Kind.EVENT, Kind.HELLO]
    for msg, wire in SHAPES:
        assert msg.kind.value in wire


def test_encoding_is_compact_ascii():
    data = encode(Return({"name": "pc.ram é"}, 1))
    assert data == b'{"return":{"name":"pc.ram \\u00e9"},"id":1}'
    assert decode(data) == Return({"name": "pc.ram é"}, 1)


def test_what_qemu_omits_decodes_with_defaults():
    assert decode(b'{"execute":"query-migrate","id":1}') == Execute("query-migrate", {}, 1)
    stop = decode(b'{"event":"STOP","timestamp":{"seconds":5,"microseconds":1}}')
    assert stop == Event("STOP", {}, 5.000001)


def test_error_classes_are_qemus():
    assert QMP_ERROR_CLASSES == {"GenericError", "CommandNotFound", "DeviceNotActive",
                                 "DeviceNotFound", "KVMMissingCap"}


# ---------------------------------------------------------------------- frames and blobs
def test_blob_travels_as_a_second_frame():
    blob = bytes(range(256)) * 16384  # 4 MiB
    frames = to_frames(Return({"pages": 512}, 9, blob))
    assert len(frames) == 2 and frames[1] is blob
    assert json.loads(frames[0]) == {"return": {"pages": 512}, "id": 9}
    assert from_frames(frames) == Return({"pages": 512}, 9, blob)


def test_a_return_without_blob_is_one_frame():
    assert len(to_frames(Return(1, 1))) == 1
    assert from_frames([b'{"return":1,"id":1}']).blob is None


def test_blob_after_anything_but_a_return_is_refused():
    with pytest.raises(ProtocolMessageError, match="binary frame may only follow a return"):
        from_frames([encode(Event("X", {}, 0.0)), b"\x00"])


def test_three_frames_are_refused():
    with pytest.raises(ProtocolMessageError, match="1 or 2 frames"):
        from_frames([b'{"return":1,"id":1}', b"a", b"b"])


# ---------------------------------------------------------------------- round trips
_json_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.text(max_size=20) | \
    st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4) |
                     st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_objects = st.dictionaries(st.text(max_size=8), _json, max_size=4)
_ids = st.integers(0, 2**53)
_timestamps = st.builds(lambda s, us: s + us / 1e6, st.integers(0, 4_000_000_000),
                        st.integers(0, 999_999))

_messages = st.one_of(
    st.builds(Execute, st.text(min_size=1, max_size=30), _objects, _ids),
    st.builds(Return, _json, _ids, st.none() | st.binary(max_size=64)),
    st.builds(Error, st.sampled_from(sorted(QMP_ERROR_CLASSES)), st.text(max_size=40),
              st.none() | _ids),
    st.builds(Event, st.text(min_size=1, max_size=30), _objects, _timestamps),
    st.builds(Hello, st.text(max_size=12), st.integers(1, 2**22), st.text(max_size=12)),
)


@given(_messages)
def test_every_message_round_trips(msg):
    assert from_frames(to_frames(msg)) == msg


@given(st.floats(0, 4e9))
def test_event_timestamps_keep_microseconds(timestamp):
    wire = json.loads(encode(Event("E", {}, timestamp)))["timestamp"]
    assert 0 <= wire["microseconds"] < 1_000_000
    assert math.isclose(wire["seconds"] + wire["microseconds"] / 1e6, timestamp, abs_tol=1e-6)


# ---------------------------------------------------------------------- refusals
MALFORMED = [
    (b"", "not JSON"),
    (b'{"execute": "x", "id": 1', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'{"return": NaN, "id": 1}', "not JSON"),
    (b"[1, 2]", "expected a JSON object, got an array"),
    (b'"execute"', "expected a JSON object, got a string"),
    (b"{}", "found none"),
    (b'{"hello": 1}', "found none"),
    (b'{"return": 1, "error": {}, "id": 1}', "found 'return' and 'error'"),
    (b'{"execute": 5, "id": 1}', "member 'execute' must be a string, got an integer"),
    (b'{"execute": "x", "arguments": [], "id": 1}', "'arguments' must be an object, got an array"),
    (b'{"execute": "x", "id": "1"}', "member 'id' must be an integer, got a string"),
    (b'{"execute": "x", "id": true}', "member 'id' must be an integer, got a boolean"),
    (b'{"execute": "x"}', "member 'id' is missing"),
    (b'{"execute": "x", "id": 1, "control": {}}', "member 'control' is unexpected"),
    (b'{"return": 1}', "member 'id' is missing"),
    (b'{"error": "bad", "id": 1}', "member 'error' must be an object, got a string"),
    (b'{"error": {"class": "GenericError"}, "id": 1}', "member 'desc' is missing"),
    (b'{"error": {"class": "X", "desc": "", "info": 1}}', "member error.'info' is unexpected"),
    (b'{"event": "X", "timestamp": 5}', "member 'timestamp' must be an object"),
    (b'{"event": "X", "timestamp": {"seconds": 1.5, "microseconds": 0}}',
     "member 'seconds' must be an integer, got a number"),
    (b'{"QMP": {"version": "1", "capabilities": []}, "role": "source"}',
     "member 'pid' is missing"),
    (b'{"QMP": {"version": {"qemu": {}}, "capabilities": []}, "role": "s", "pid": 1}',
     "member 'version' must be a string, got an object"),
]


@pytest.mark.parametrize(("data", "text"), MALFORMED, ids=[repr(d[:24]) for d, _ in MALFORMED])
def test_malformed_input_is_a_clear_protocol_message_error(data, text):
    with pytest.raises(ProtocolMessageError) as info:
        decode(data)
    assert text in str(info.value)


def test_error_quotes_a_bounded_excerpt_of_long_garbage():
    with pytest.raises(ProtocolMessageError) as info:
        decode(b"[" + b"1," * 10_000 + b"1]")
    assert "(20003 bytes)" in str(info.value) and len(str(info.value)) < 400


def test_deep_nesting_is_refused_not_a_crash():
    with pytest.raises(ProtocolMessageError, match="not JSON"):
        decode(b"[" * 100_000 + b"]" * 100_000)


def test_unencodable_values_are_protocol_message_errors():
    with pytest.raises(ProtocolMessageError, match="cannot encode return message"):
        encode(Return(object(), 1))
    with pytest.raises(ProtocolMessageError, match="cannot encode event message"):
        encode(Event("E", {"x": float("nan")}, 0.0))


# ---------------------------------------------------------------------- addresses
def test_new_ipc_addresses_are_unique_and_short():
    first, second = new_ipc_address("source"), new_ipc_address("source")
    assert first != second
    assert first.startswith("ipc:///") and first.endswith("-source.sock")
    check_address(first)
    path = ipc_path(first)
    assert path is not None and len(path) <= MAX_IPC_PATH


@pytest.mark.parametrize("address", ["ipc:///tmp/x.sock", "tcp://127.0.0.1:*",
                                     "tcp://127.0.0.1:0", "inproc://peer", "ipc://@abstract"])
def test_good_addresses_pass(address):
    check_address(address)


def test_too_long_ipc_path_says_what_to_do():
    with pytest.raises(ValueError, match="unix sockets allow 107.*new_ipc_address"):
        check_address("ipc:///tmp/" + "d" * 120 + "/s.sock")


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="expected ipc://PATH, tcp://HOST:PORT"):
        check_address("unix:/tmp/x")


def test_ipc_path_of_each_scheme():
    assert ipc_path("ipc:///tmp/a.sock") == "/tmp/a.sock"
    assert ipc_path("ipc://@abstract") is None
    assert ipc_path("tcp://127.0.0.1:5") is None
