"""A QMP monitor's input stream, split and parsed as QEMU 7.2 does it (sans-IO).

Strategy: a QMP client may send any bytes.  QEMU answers each bad message with one
GenericError whose text says what was wrong ("JSON parse error, ..."), and the session
goes on; to answer byte for byte as it does, we split and parse the stream by its rules.
The rules are facts read from QEMU (`qobject/json-lexer.c`, `qobject/json-streamer.c`,
`qobject/json-parser.c`); the code here is our own:

- tokens are RFC 8259's, plus single-quoted strings and the `\\'` escape; a bare word
  `[a-z]+` is a keyword the parser accepts or not; any other byte is an error quoting the
  token so far, bad byte included ("stray '...'"), after which input is skipped up to the
  next structural or control character;
- a message ends at the first token after which braces and brackets balance (or either
  count goes negative), so a bare scalar is a message and a newline means nothing;
- the parser reports its first error ("expecting value", "invalid keyword 'x'",
  "expected separator in dict", ...); it is iterative, so deep nesting (QEMU allows 1024
  levels) costs no Python recursion.

`QmpJsonStream.feed(data)` returns the messages finished by `data`: parsed values, or
`JsonParseError` with QEMU's text.  Nothing here touches a socket.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["JsonParseError", "QmpJsonStream"]

# qobject/json-streamer.c: the limits of one message
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10

_WHITESPACE = frozenset(b" \t\r\n")
_STRUCTURAL = frozenset(b"{}[],:")
#: where error recovery resumes lexing: structural bytes, control bytes but tab, 0xFE, 0xFF
_RESYNC = (frozenset(b"{}[],:") | frozenset(range(0x20)) | {0xFE, 0xFF}) - {ord("\t")}
_STRING_RUN = {q: re.compile(rb"[^\x00-\x1f\xfe\xff\\" + bytes([q]) + rb"]*") for q in b"\"'"}
_SKIP_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_SIMPLE_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
                   ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_DIGITS = frozenset(b"0123456789")


@dataclass(frozen=True)
class JsonParseError:
    """A message QEMU could not parse; `desc` is its GenericError text."""

    desc: str


class _Reject(Exception):
    """The parser's first error (internal)."""


# Lexer states; a number's states follow RFC 8259's grammar: -? int frac? exp?
_START, _STRING, _KEYWORD, _RECOVERY = "start", "string", "keyword", "recovery"
_SIGN, _ZERO, _INT, _DOT, _FRAC, _EXP, _EXP_SIGN, _EXP_DIGITS = (
    "sign", "zero", "int", "dot", "frac", "exp", "exp-sign", "exp-digits")
_ENDS = {_ZERO: "int", _INT: "int", _FRAC: "float", _EXP_DIGITS: "float"}  # may end here


def _number_step(state: str, byte: int) -> str | None:
    """The next number state after `byte`; None: the number ended before it, "" : error."""
    digit = byte in _DIGITS
    if state == _SIGN:
        return _ZERO if byte == ord("0") else _INT if digit else ""
    if state == _ZERO:  # QEMU: no exponent directly after a lone 0 ("0e1" is 0, e, 1)
        return "" if digit else _DOT if byte == ord(".") else None
    if state in (_INT, _FRAC):
        if digit:
            return state
        if byte in b"eE":
            return _EXP
        return _DOT if byte == ord(".") and state == _INT else None
    if state == _DOT:
        return _FRAC if digit else ""
    if state == _EXP:
        return _EXP_SIGN if byte in b"+-" else _EXP_DIGITS if digit else ""
    if state == _EXP_SIGN:
        return _EXP_DIGITS if digit else ""
    return _EXP_DIGITS if digit else None  # _EXP_DIGITS


class QmpJsonStream:
    """Bytes in, QMP messages out, split and judged as QEMU's monitor does."""

    def __init__(self) -> None:
        self._state = _START
        self._token = bytearray()
        self._quote = 0
        self._escape = False
        self._tokens: list[tuple[str, bytes]] = []
        self._braces = self._brackets = self._size = 0
        self._out: list[Any] = []

    def feed(self, data: bytes) -> list[Any]:
        """The messages that `data` completes, in order: values or JsonParseError."""
        pos, end = 0, len(data)
        while pos < end:
            pos = self._step(data, pos)
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ lexing
    def _step(self, data: bytes, pos: int) -> int:
        """Lex from `pos`; the position of the first byte not consumed."""
        state = self._state
        if state == _START:
            return self._start(data, pos)
        if state == _STRING:
            return self._string(data, pos)
        byte = data[pos]
        if state == _KEYWORD:
            if ord("a") <= byte <= ord("z"):
                self._token.append(byte)
                return pos + 1
            self._finish("keyword")
            return pos
        if state == _RECOVERY:
            if byte in _RESYNC:
                self._state = _START
                return pos
            return pos + 1
        following = _number_step(state, byte)
        if following is None:
            self._finish(_ENDS[state])
            return pos
        self._token.append(byte)
        if not following:
            self._error()
        else:
            self._state = following
        return pos + 1

    def _start(self, data: bytes, pos: int) -> int:
        byte = data[pos]
        if byte in _WHITESPACE:
            match = _SKIP_WHITESPACE.match(data, pos)
            return match.end() if match else pos + 1
        self._token = bytearray([byte])
        if byte in _STRUCTURAL:
            self._finish(chr(byte))
        elif byte in b"\"'":
            self._state, self._quote, self._escape = _STRING, byte, False
        elif byte == ord("-"):
            self._state = _SIGN
        elif byte in _DIGITS:
            self._state = _ZERO if byte == ord("0") else _INT
        elif ord("a") <= byte <= ord("z"):
            self._state = _KEYWORD
        else:
            self._error()
        return pos + 1

    def _string(self, data: bytes, pos: int) -> int:
        if self._escape:
            byte = data[pos]
            self._token.append(byte)
            self._escape = False
            if not 0x20 <= byte <= 0xFD:
                self._error()
            return pos + 1
        match = _STRING_RUN[self._quote].match(data, pos)
        stop = match.end() if match else pos
        self._token += data[pos:stop]
        if len(self._token) > MAX_TOKEN_SIZE:
            self._emit(JsonParseError("JSON token size limit exceeded"))
            self._state = _RECOVERY
            return stop
        if stop == len(data):
            return stop
        byte = data[stop]
        self._token.append(byte)
        if byte == self._quote:
            self._finish("string")
        elif byte == ord("\\"):
            self._escape = True
        else:
            self._error()
        return stop + 1

    def _error(self) -> None:
        text = bytes(self._token).decode("utf-8", errors="replace")
        self._emit(JsonParseError(f"JSON parse error, stray '{text}'"))
        self._state = _RECOVERY

    # ------------------------------------------------------------------ splitting
    def _finish(self, kind: str) -> None:
        text = bytes(self._token)
        self._state = _START
        if kind == "{":
            self._braces += 1
        elif kind == "}":
            self._braces -= 1
        elif kind == "[":
            self._brackets += 1
        elif kind == "]":
            self._brackets -= 1
        limit = self._limit_exceeded(len(text))
        if limit:
            self._emit(JsonParseError(limit))
            return
        self._tokens.append((kind, text))
        self._size += len(text)
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 \
                and self._brackets >= 0:
            return  # the message goes on
        try:
            message: Any = parse_tokens(self._tokens)
        except _Reject as err:
            message = JsonParseError(f"JSON parse error, {err}")
        self._emit(message)

    def _limit_exceeded(self, token_size: int) -> str:
        if self._size + token_size + 1 > MAX_TOKEN_SIZE:
            return "JSON token size limit exceeded"
        if len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            return "JSON token count limit exceeded"
        if self._braces + self._brackets > MAX_NESTING:
            return "JSON nesting depth limit exceeded"
        return ""

    def _emit(self, message: Any) -> None:
        self._out.append(message)
        self._tokens = []
        self._braces = self._brackets = self._size = 0


# ---------------------------------------------------------------------- parsing
@dataclass
class _Open:
    """A container being filled; `key` is None while an object waits for its next key."""

    container: dict[str, Any] | list[Any]
    key: str | None = None
    wants_key: bool = False


def parse_tokens(tokens: list[tuple[str, bytes]]) -> Any:
    """One value from one message's tokens; raises _Reject with the parser's first error."""
    queue = deque(tokens)
    stack: list[_Open] = []
    while True:
        value, opened = _value(queue)
        if opened is not None:
            stack.append(opened)
            continue
        while True:  # hand the finished value to the containers that are waiting for it
            if not stack:
                return value
            done, value = _place(stack[-1], value, queue)
            if not done:
                break
            stack.pop()


def _pop(queue: deque[tuple[str, bytes]]) -> tuple[str, bytes]:
    if not queue:
        raise _Reject("premature EOI")
    return queue.popleft()


def _value(queue: deque[tuple[str, bytes]]) -> tuple[Any, _Open | None]:
    """A scalar or empty container (and None), or a new open container (and it)."""
    kind, text = _pop(queue)
    if kind in ("{", "["):
        closer = "}" if kind == "{" else "]"
        if not queue:
            raise _Reject("premature EOI")
        if queue[0][0] == closer:
            queue.popleft()
            return ({} if kind == "{" else []), None
        if kind == "{":
            return None, _Open({}, wants_key=True)
        return None, _Open([])
    if kind == "string":
        return _decode_string(text), None
    if kind == "int":  # json-parser.c: parse_literal -- beyond (u)int64, a double (strtod)
        if len(text) > 21:  # beyond any int64/uint64, and int() refuses > 4300 digits
            return float(text), None
        number = int(text)
        return (number if -(1 << 63) <= number < (1 << 64) else float(text)), None
    if kind == "float":
        return float(text), None
    if kind == "keyword":
        word = text.decode("ascii")
        if word not in ("true", "false", "null"):
            raise _Reject(f"invalid keyword '{word}'")
        return {"true": True, "false": False, "null": None}[word], None
    raise _Reject("expecting value")


def _place(frame: _Open, value: Any, queue: deque[tuple[str, bytes]]) -> tuple[bool, Any]:
    """Put `value` into `frame`; (True, container) when that closed it, else (False, None)."""
    container = frame.container
    if isinstance(container, list):
        container.append(value)
        kind, _ = _pop(queue)
        if kind == "]":
            return True, container
        if kind != ",":
            raise _Reject("expected separator in list")
        return False, None
    if frame.wants_key:
        if not isinstance(value, str):
            raise _Reject("key is not a string in object")
        if _pop(queue)[0] != ":":
            raise _Reject("missing : in object pair")
        frame.key, frame.wants_key = value, False
        return False, None
    assert frame.key is not None
    if frame.key in container:
        raise _Reject("duplicate key")
    container[frame.key] = value
    kind, _ = _pop(queue)
    if kind == "}":
        return True, container
    if kind != ",":
        raise _Reject("expected separator in dict")
    frame.wants_key = True
    return False, None


def _decode_string(token: bytes) -> str:
    """The text of a string token (quotes included in `token`)."""
    body = token[1:-1]
    parts: list[str] = []
    pos = 0
    while pos < len(body):
        backslash = body.find(b"\\", pos)
        stop = len(body) if backslash < 0 else backslash
        try:
            parts.append(body[pos:stop].decode("utf-8"))
        except UnicodeDecodeError:
            raise _Reject("invalid UTF-8 sequence in string") from None
        if backslash < 0:
            break
        char, pos = _escape(body, backslash)
        parts.append(char)
    return "".join(parts)


def _escape(body: bytes, at: int) -> tuple[str, int]:
    """The character escaped at body[at] (a backslash), and the position after it."""
    code = body[at + 1]
    if code in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[code], at + 2
    if code != ord("u"):
        raise _Reject("invalid escape sequence in string")
    point, end = _hex4(body, at + 2), at + 6
    if 0xD800 <= point <= 0xDBFF and body[end:end + 2] == b"\\u":
        trailing = _hex4(body, end + 2)
        point = ((0x10000 + ((point & 0x3FF) << 10)) | (trailing & 0x3FF)
                 if 0xDC00 <= trailing <= 0xDFFF else -1)
        end += 6 if point >= 0 else 0
    if not _valid_code_point(point):
        shown = body[at:end].decode("utf-8", errors="replace")
        raise _Reject(f"{shown} is not a valid Unicode character")
    return chr(point), end


def _hex4(body: bytes, at: int) -> int:
    digits = body[at:at + 4]
    if len(digits) != 4 or not all(b in b"0123456789abcdefABCDEF" for b in digits):
        return -1
    return int(digits, 16)


def _valid_code_point(point: int) -> bool:
    """util/unicode.c's idea of a character: no surrogates, noncharacters or beyond U+10FFFF."""
    return (0 <= point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF
            and (point & 0xFFFE) != 0xFFFE and not 0xFDD0 <= point <= 0xFDEF)
