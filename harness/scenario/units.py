"""Sizes, rates, durations and percentages as scenario files write them.

Strategy: one small parser per quantity, each taking what YAML hands over (an int, a float
or a string) and returning plain numbers in base units (bytes, bytes per second, seconds,
percent). Suffixes are binary for both spellings, `KiB/MiB/GiB/TiB` and QEMU's `k/M/G/T`
(util/cutils.c: qemu_strtosz counts K as 1024), so "1G" means what it means on QEMU's
command line. Decimal-looking suffixes such as `MB` are refused rather than guessed. Every
error is a ValueError that quotes the bad text and lists the accepted forms; the scenario
loader shows it next to the file, line and field.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

#: size suffixes (lower-cased) -> bytes; QEMU's single letters are binary too
SIZE_SUFFIXES: dict[str, int] = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB,
    "m": MiB, "mib": MiB,
    "g": GiB, "gib": GiB,
    "t": TiB, "tib": TiB,
}

#: duration suffixes -> seconds
DURATION_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1), "s": Fraction(1), "ms": Fraction(1, 1000), "us": Fraction(1, 1_000_000),
    "m": Fraction(60), "min": Fraction(60), "h": Fraction(3600),
}

SIZE_FORMS = "a number of bytes, or a number with KiB, MiB, GiB, TiB (or k, M, G, T, B)"
RATE_FORMS = "bytes per second, or a size per second such as 32MiB/s (or 32M)"
DURATION_FORMS = "seconds as a number, or a number with ms, s, m or h (300ms, 1.5s, 2m)"
PERCENT_FORMS = "a percentage such as 50% (or a number from 0 to 100)"

_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_QUANTITY = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*(?P<unit>[A-Za-z]*)\s*$")
_DECIMAL_SIZE = {"kb", "mb", "gb", "tb"}


def _split(text: str) -> tuple[Fraction, str] | None:
    """'1.5 GiB' -> (Fraction(3, 2), 'gib'); None when the text is not number+unit."""
    match = _QUANTITY.match(text)
    if match is None:
        return None
    return Fraction(match["number"]), match["unit"].lower()


def _check_number(value: object, what: str, forms: str) -> int | float | str:
    """The value, if it is a number or text (a ValueError, not a TypeError: pydantic
    reports ValueErrors as validation errors)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not {what} (expected {forms})")  # noqa: TRY004
    return value


def parse_size(value: object) -> int:
    """A size in bytes: 4096, "256MiB", "1.5 GiB", "16M", "512B"."""
    value = _check_number(value, "a size", SIZE_FORMS)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return _bad(value, "a size", SIZE_FORMS)
        return _whole_bytes(Fraction(value), value, "a size")
    parts = _split(value)
    if parts is None or parts[1] not in SIZE_SUFFIXES:
        return _bad(value, "a size", SIZE_FORMS + _decimal_hint(parts))
    number, unit = parts
    return _whole_bytes(number * SIZE_SUFFIXES[unit], value, "a size")


def _decimal_hint(parts: tuple[Fraction, str] | None) -> str:
    """MB and friends are refused: say which binary unit was probably meant."""
    if parts is None or parts[1] not in _DECIMAL_SIZE:
        return ""
    return f"; write {parts[1][0].upper()}iB for the binary unit"


def _whole_bytes(amount: Fraction, text: object, what: str) -> int:
    if amount < 0:
        raise ValueError(f"{text!r} is not {what}: it is negative")
    if amount.denominator != 1:
        raise ValueError(f"{text!r} is not {what}: it is not a whole number of bytes")
    return int(amount)


def _bad(value: object, what: str, forms: str) -> int:
    raise ValueError(f"{value!r} is not {what} (expected {forms})")


def parse_rate(value: object) -> int:
    """A rate in bytes per second: 33554432, "32MiB/s", "32M", "1 GiB/s"."""
    value = _check_number(value, "a rate", RATE_FORMS)
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith("/s"):
            text = text[:-2]
        try:
            return parse_size(text)
        except ValueError:
            return _bad(value, "a rate", RATE_FORMS + _decimal_hint(_split(text)))
    try:
        return parse_size(value)
    except ValueError as err:
        raise ValueError(str(err).replace("a size", "a rate")) from None


def parse_duration(value: object) -> float:
    """A duration in seconds: 5, 1.5, "1.5s", "300ms", "2m"."""
    value = _check_number(value, "a duration", DURATION_FORMS)
    seconds: Fraction | None = None
    if isinstance(value, str):
        parts = _split(value)
        if parts is not None and parts[1] in DURATION_SUFFIXES:
            seconds = parts[0] * DURATION_SUFFIXES[parts[1]]
    elif math.isfinite(value):
        seconds = Fraction(value)
    if seconds is None:
        return float(_bad(value, "a duration", DURATION_FORMS))
    if seconds < 0:
        raise ValueError(f"{value!r} is not a duration: it is negative")
    return float(seconds)


def parse_milliseconds(value: object) -> int:
    """Whole milliseconds, QMP style: 300 (bare numbers are ms), "300ms", "0.3s"."""
    forms = "milliseconds as a number, or a duration with a unit such as 300ms or 0.3s"
    value = _check_number(value, "a duration", forms)
    if isinstance(value, str):
        parts = _split(value)
        if parts is None or parts[1] not in DURATION_SUFFIXES:
            return _bad(value, "a duration", forms)
        number, unit = parts
        millis = number if unit == "" else number * DURATION_SUFFIXES[unit] * 1000
    else:
        if not math.isfinite(value):
            return _bad(value, "a duration", forms)
        millis = Fraction(value)
    if millis < 0:
        raise ValueError(f"{value!r} is not a duration: it is negative")
    if millis.denominator != 1:
        raise ValueError(f"{value!r} is not a whole number of milliseconds")
    return int(millis)


def parse_percent(value: object) -> float:
    """A percentage 0..100: "50%", "12.5 %", or a bare number (50 means 50%)."""
    value = _check_number(value, "a percentage", PERCENT_FORMS)
    if isinstance(value, str):
        match = re.fullmatch(rf"\s*({_NUMBER})\s*%?\s*", value)
        if match is None:
            return float(_bad(value, "a percentage", PERCENT_FORMS))
        percent = float(match[1])
    else:
        percent = float(value)
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"{value!r} is not a percentage from 0% to 100%")
    return percent


_FORMAT_UNITS = (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))


def format_size(n: int) -> str:
    """256 MiB, 1.5 GiB, 4 KiB, 100 B: the largest unit, at most two decimals.

    A whole number of the unit shown reads back exactly through parse_size.
    """
    for name, unit in _FORMAT_UNITS:
        if abs(n) >= unit:
            return f"{_trim(n / unit)} {name}"
    return f"{n} B"


def format_rate(n: int) -> str:
    """32 MiB/s."""
    return f"{format_size(n)}/s"


def format_duration(seconds: float) -> str:
    """300ms, 1.5s, 2m, 90s: milliseconds below a second, minutes when whole."""
    if seconds != 0 and abs(seconds) < 1:
        return f"{_trim(seconds * 1000, 3)}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{_trim(seconds, 3)}s"


def _trim(number: float, decimals: int = 2) -> str:
    text = f"{number:.{decimals}f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"
