"""The QMP input stream and session, without sockets: QEMU 7.2's splitting, parse errors
and replies (the texts are QEMU's), and that chunking never changes what is parsed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.control.messages import Error, Event, Return
from harness.control.qmp_json import JsonParseError, QmpJsonStream
from harness.control.qmp_socket import Dispatch, QmpSession, SessionState


def _feed(data: bytes) -> list[object]:
    return QmpJsonStream().feed(data)


@pytest.mark.parametrize("data, desc", [
    (b'{"execute": foo}', "invalid keyword 'foo'"),
    (b"True", "stray 'T'"),
    (b'{"a": -}', "stray '-}'"),
    (b"01 ", "stray '01'"),
    (b"]", "expecting value"),
    (b'{"a": 1,}', "expecting value"),
    (b"[1 2]", "expected separator in list"),
    (b'{"a": 1 "b": 2}', "expected separator in dict"),
    (b'{"a" 1}', "missing : in object pair"),
    (b"{1: 2}", "key is not a string in object"),
    (b'{"a": 1, "a": 2}', "duplicate key"),
    (b'"\\q"', "invalid escape sequence in string"),
    (b'"\\uD800"', "\\uD800 is not a valid Unicode character"),
    (b'"\xc3\x28"', "invalid UTF-8 sequence in string"),
])
def test_parse_errors_carry_qemus_text(data, desc):
    assert _feed(data) == [JsonParseError(f"JSON parse error, {desc}")]


def test_messages_end_where_qemu_ends_them():
    assert _feed(b'{"a": [1, 2.5, true, null]} 42 ') == [{"a": [1, 2.5, True, None]}, 42]
    assert _feed(b"{'s': 'it\\'s \"q\"'}") == [{"s": "it's \"q\""}]
    assert _feed(b'"\\u00e9\\ud83d\\ude00"') == ["\u00e9\U0001F600"]
    assert _feed(b"0e1 ") == [0, JsonParseError("JSON parse error, invalid keyword 'e'"), 1]
    # a lexical error skips to the next structural or control byte, then parsing resumes
    assert _feed(b'{"a": @}\n{"b": 1}') == [JsonParseError("JSON parse error, stray '@'"),
                                           JsonParseError("JSON parse error, expecting value"),
                                           {"b": 1}]
    assert _feed(b"[" * 1025) == [JsonParseError("JSON nesting depth limit exceeded")]


def test_deep_nesting_costs_no_recursion():
    depth = 1024  # QEMU's limit; deeper than Python's default recursion limit
    (value,) = _feed(b"[" * depth + b"]" * depth)
    for _ in range(depth - 1):  # walked, not compared: == would recurse
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == []


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_chunking_never_changes_the_messages(cuts):
    data = (b'{"execute": "migrate", "arguments": {"uri": "unix:/tmp/x"}, "id": "a\\"b"}'
            b'{"execute": foo}[1, {"k": -1.5e-3}] "\\u00e9" @ {"x": 1}')
    whole = _feed(data)
    stream, pieces, start = QmpJsonStream(), [], 0
    for cut in cuts:
        pieces += stream.feed(data[start:start + cut])
        start += cut
    pieces += stream.feed(data[start:])
    assert pieces == whole and len(whole) == 6


def test_session_negotiates_dispatches_and_frames_as_qemu():
    session = QmpSession()
    assert session.greeting().endswith(b'"capabilities": []}}\r\n')
    assert session.event(Event("STOP", {}, 1.5)) is None  # not negotiated: no events
    session.receive_data(b'{"execute": "qmp_capabilities", "id": 1}{"execute": "stop", "id": 2}')
    assert session.next_request() == b'{"return": {}, "id": 1}\r\n'
    assert session.state is SessionState.COMMAND
    request = session.next_request()
    assert request == Dispatch("stop", {}, 2) and session.next_request() is None
    assert isinstance(request, Dispatch)
    assert session.reply(request, Return({}, 0)) == b'{"return": {}, "id": 2}\r\n'
    assert session.reply(request, Error("GenericError", "no", None)) == (
        b'{"id": 2, "error": {"class": "GenericError", "desc": "no"}}\r\n')
    assert session.event(Event("MIGRATION", {"status": "active"}, 1.25)) == (
        b'{"timestamp": {"seconds": 1, "microseconds": 250000}, "event": "MIGRATION", '
        b'"data": {"status": "active"}}\r\n')


def test_session_without_ids_and_with_an_id_too_deep_to_echo():
    session = QmpSession()
    session.receive_data(b'{"execute": "qmp_capabilities"}{"execute": "cont", "id": '
                         + b"[" * 1000 + b"]" * 1000 + b"}")
    assert session.next_request() == b'{"return": {}}\r\n'
    assert session.next_request() == (b'{"error": {"class": "GenericError", "desc": "QMP input '
                                      b"member 'id' is nested too deeply\"}}\r\n")


@pytest.mark.parametrize("request_, desc", [
    (b'{"execute": 1}', "QMP input member 'execute' must be a string"),
    (b'{"exec-oob": "stop"}', "QMP input member 'exec-oob' is unexpected"),
    (b'{"arguments": {}}', "QMP input lacks member 'execute'"),
    (b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
     "Capability oob not available"),
])
def test_session_rejects_bad_requests_with_qemus_text(request_, desc):
    session = QmpSession()
    session.receive_data(request_)
    reply = session.next_request()
    assert isinstance(reply, bytes)
    assert json.loads(reply) == {"error": {"class": "GenericError", "desc": desc}}
