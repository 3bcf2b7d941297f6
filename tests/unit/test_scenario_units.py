"""Sizes, rates, durations and percentages as scenario files write them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.scenario.units import (
    GiB,
    KiB,
    MiB,
    TiB,
    format_duration,
    format_rate,
    format_size,
    parse_duration,
    parse_milliseconds,
    parse_percent,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize("text,expected", [
    (0, 0), (4096, 4096), ("4096", 4096), ("512B", 512), ("512 B", 512),
    ("1KiB", KiB), ("256MiB", 256 * MiB), ("256 MiB", 256 * MiB), ("1GiB", GiB), ("2TiB", 2 * TiB),
    ("16k", 16 * KiB), ("16K", 16 * KiB), ("16M", 16 * MiB), ("1G", GiB), ("1T", TiB),
    ("1.5GiB", 3 * GiB // 2), ("0.5k", 512), (".5M", MiB // 2), (" 8MiB ", 8 * MiB),
    (4096.0, 4096),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,fragment", [
    ("16MB", "write MiB for the binary unit"),
    ("1GB", "write GiB"),
    ("1.5B", "not a whole number of bytes"),
    ("0.3k", "not a whole number of bytes"),
    ("-1MiB", "negative"),
    (-4096, "negative"),
    ("lots", "expected a number of bytes, or a number with KiB"),
    ("16 MiBs", "'16 MiBs' is not a size"),
    ("", "is not a size"),
    (True, "True is not a size"),
    (None, "None is not a size"),
    ([1], "[1] is not a size"),
    (float("inf"), "is not a size"),
])
def test_size_errors_quote_the_text_and_the_forms(text, fragment):
    with pytest.raises(ValueError, match="is not a size") as err:
        parse_size(text)
    assert fragment in str(err.value)


@pytest.mark.parametrize("text,expected", [
    (1000, 1000), ("32MiB/s", 32 * MiB), ("32M", 32 * MiB), ("1 GiB/s", GiB), ("10k/s", 10 * KiB),
    ("0", 0),
])
def test_rates(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text,fragment", [
    ("10MB/s", "write MiB"), ("fast", "expected bytes per second"), ("-1M/s", "is not a rate"),
    (False, "is not a rate"),
])
def test_rate_errors(text, fragment):
    with pytest.raises(ValueError, match="is not a rate") as err:
        parse_rate(text)
    assert fragment in str(err.value)


@pytest.mark.parametrize("text,seconds", [
    (5, 5.0), (1.5, 1.5), ("5", 5.0), ("1.5s", 1.5), ("300ms", 0.3), ("2m", 120.0),
    ("1h", 3600.0), ("250us", 0.00025), ("0s", 0.0), (" 60 s ", 60.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,fragment", [
    ("-1s", "negative"), ("1x", "expected seconds as a number, or a number with ms, s, m or h"),
    ("soon", "'soon' is not a duration"), (True, "is not a duration"), ("1.5 days", "not a"),
])
def test_duration_errors(text, fragment):
    with pytest.raises(ValueError, match="duration") as err:
        parse_duration(text)
    assert fragment in str(err.value)


@pytest.mark.parametrize("text,millis", [
    (300, 300), ("300", 300), ("300ms", 300), ("0.3s", 300), ("2s", 2000), (0, 0), (1.0, 1),
])
def test_milliseconds(text, millis):
    assert parse_milliseconds(text) == millis


@pytest.mark.parametrize("text,fragment", [
    ("0.5ms", "not a whole number of milliseconds"), (0.5, "not a whole number"),
    ("-3ms", "negative"), ("3 parsecs", "is not a duration"),
])
def test_millisecond_errors(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_milliseconds(text)


@pytest.mark.parametrize("text,percent", [
    ("50%", 50.0), ("12.5 %", 12.5), ("0%", 0.0), ("100%", 100.0), (50, 50.0), ("75", 75.0),
])
def test_percentages(text, percent):
    assert parse_percent(text) == percent


@pytest.mark.parametrize("text", ["150%", "-1%", "half", 101, True])
def test_percentage_errors(text):
    with pytest.raises(ValueError, match="percentage"):
        parse_percent(text)


@pytest.mark.parametrize("n,text", [
    (256 * MiB, "256 MiB"), (3 * GiB // 2, "1.5 GiB"), (4 * KiB, "4 KiB"), (100, "100 B"),
    (0, "0 B"), (2 * TiB, "2 TiB"), (MiB + 1, "1 MiB"),
])
def test_format_size(n, text):
    assert format_size(n) == text


def test_format_rate():
    assert format_rate(32 * MiB) == "32 MiB/s"


@pytest.mark.parametrize("seconds,text", [
    (0.3, "300ms"), (1.5, "1.5s"), (120, "2m"), (90, "90s"), (0, "0s"), (60.0, "1m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


SUFFIXES = {"": 1, "B": 1, "k": KiB, "K": KiB, "KiB": KiB, "M": MiB, "MiB": MiB, "G": GiB,
            "GiB": GiB, "T": TiB, "TiB": TiB}


@given(st.integers(0, 10**6), st.sampled_from(sorted(SUFFIXES)), st.sampled_from(["", " "]))
def test_every_suffix_is_binary(number, suffix, space):
    assert parse_size(f"{number}{space}{suffix}") == number * SUFFIXES[suffix]


@given(st.integers(0, 1023), st.sampled_from([1, KiB, MiB, GiB, TiB]))
def test_whole_units_round_trip_through_format_size(number, unit):
    assert parse_size(format_size(number * unit)) == number * unit


@given(st.integers(0, 2**40))
def test_format_size_is_within_a_hundredth_of_a_unit(n):
    value, _, unit = format_size(n).partition(" ")
    scale = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}[unit]
    assert abs(float(value) * scale - n) <= scale * 0.005 + 1e-9


@given(st.integers(0, 10**7))
def test_durations_round_trip_through_format_duration(millis):
    seconds = millis / 1000
    assert math.isclose(parse_duration(format_duration(seconds)), seconds, abs_tol=1e-9)
