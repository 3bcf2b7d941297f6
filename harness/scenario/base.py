"""The pieces every scenario model is built from: the base class, value types, errors.

Strategy: pydantic does the structural work (types, unknown keys, missing keys); what
pydantic cannot phrase well is checked by small validators that raise `FieldError`. A
`FieldError` carries one or more `Issue`s, each with a path *relative to the value being
validated* and written in file keys (`("workload", "hotset")`), so a check made on a whole
`Guest` can still point at `guest.workload.hotset`; the loader appends that path to
pydantic's location and finds the line. Value types (`Size`, `Duration`, ...) are
`Annotated` ints and floats whose before-validator is a parser from `units`, so a model
holds plain numbers in base units.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictInt,
    WithJsonSchema,
)

from harness.errors import ScenarioFailure

from . import units

PathItem = str | int


@dataclass(frozen=True)
class Issue:
    """One problem at `path` (file keys and list indexes) below the value being checked."""

    path: tuple[PathItem, ...]
    message: str
    at_key: bool = False  # point at the key itself (an unknown or duplicate name)


class FieldError(ScenarioFailure, ValueError):
    """Raised by validators; the loader turns each issue into a file:line:field message."""

    def __init__(self, issues: Issue | Iterable[Issue]):
        self.issues: tuple[Issue, ...] = (issues,) if isinstance(issues, Issue) else tuple(issues)
        super().__init__("; ".join(_issue_text(i) for i in self.issues))


def _issue_text(issue: Issue) -> str:
    where = dotted(issue.path)
    return f"{where}: {issue.message}" if where else issue.message


def dotted(path: Sequence[PathItem]) -> str:
    """("steps", 2, "on", "status") -> "steps[2].on.status"."""
    text = ""
    for item in path:
        if isinstance(item, int) and not isinstance(item, bool):
            text += f"[{item}]"
        else:
            text += f".{item}" if text else str(item)
    return text


def fail(path: tuple[PathItem, ...], message: str, at_key: bool = False) -> NoReturn:
    raise FieldError(Issue(path, message, at_key))


def raise_issues(issues: Sequence[Issue]) -> None:
    if issues:
        raise FieldError(issues)


def kebab(name: str) -> str:
    """Python attribute -> file key: dirty_rate -> dirty-rate, pass_ -> pass."""
    return name.rstrip("_").replace("_", "-")


class ScenarioModel(BaseModel):
    """Frozen, unknown keys forbidden, kebab-case keys in files, snake_case in Python."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=kebab,
                              validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True, use_attribute_docstrings=True)

    @classmethod
    def file_keys(cls) -> list[str]:
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def unknown_key_message(cls, key: object) -> str:
        """What the loader says about a key this model does not have."""
        return unknown_name(key, None, cls.file_keys())


def unknown_name(value: object, noun: str | None, expected: Sequence[str],
                 later: dict[str, str] | None = None) -> str:
    """"'actve' is not a migration status (expected one of: ...); did you mean 'active'?".

    Without a noun: "unknown key 'x' (expected one of: ...)".
    """
    if isinstance(value, str) and later and value in later:
        return f"{value!r} is not {noun} of QEMU 7.2 (it appeared in QEMU {later[value]})"
    lead = f"{value!r} is not {noun}" if noun else f"unknown key {value!r}"
    message = f"{lead} (expected one of: {', '.join(expected)})"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, list(expected), n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def choice(noun: str, names: Sequence[str], later: dict[str, str] | None = None
           ) -> BeforeValidator:
    """A before-validator accepting exactly `names`, with a message naming them all."""

    def check(value: object) -> object:
        if not isinstance(value, str) or value not in names:
            raise ValueError(unknown_name(value, noun, names, later))
        return value

    return BeforeValidator(check)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")  # noqa: TRY004 (pydantic)
    if not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def non_empty(values: tuple[Any, ...]) -> tuple[Any, ...]:
    if not values:
        raise ValueError("expected a non-empty list")
    return values


def describe(value: object) -> str:
    """How an input value is named in an error message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return repr(value)


def in_range(low: float, high: float, words: str | None = None, name: str | None = None
             ) -> Callable[[Any], Any]:
    """An after-validator checking low <= value <= high, worded like QEMU where QEMU checks."""
    expects = words or f"a value between {low:g} and {high:g}"
    lead = f"{name} expects" if name else "expected"

    def check(value: Any) -> Any:
        if value is not None and not low <= value <= high:
            raise ValueError(f"{lead} {expects}, got {value!r}")
        return value

    return check


_NUMBER = r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"


def _written_as(forms: str, text_pattern: str) -> WithJsonSchema:
    """The JSON Schema of a quantity as files write it: a number, or text with a unit (the
    parser in `units` has the last word; this is what an editor can check)."""
    return WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                                     {"type": "string", "pattern": text_pattern,
                                      "description": forms}]})


Size = Annotated[int, BeforeValidator(units.parse_size), _written_as(
    units.SIZE_FORMS, rf"^\s*{_NUMBER}\s*[A-Za-z]*\s*$")]
Rate = Annotated[int, BeforeValidator(units.parse_rate), _written_as(
    units.RATE_FORMS, rf"^\s*{_NUMBER}\s*[A-Za-z]*(/s)?\s*$")]
Duration = Annotated[float, BeforeValidator(units.parse_duration), _written_as(
    units.DURATION_FORMS, rf"^\s*{_NUMBER}\s*[A-Za-z]*\s*$")]
Milliseconds = Annotated[int, BeforeValidator(units.parse_milliseconds), _written_as(
    "milliseconds as a number, or a duration with a unit such as 300ms or 0.3s",
    rf"^\s*{_NUMBER}\s*[A-Za-z]*\s*$")]
Percent = Annotated[float, BeforeValidator(units.parse_percent), _written_as(
    units.PERCENT_FORMS, rf"^\s*{_NUMBER}\s*%?\s*$")]
Text = Annotated[str, BeforeValidator(_text)]
Fraction = Annotated[float, AfterValidator(in_range(0, 1, "a fraction between 0 and 1"))]
PositiveCount = Annotated[StrictInt, AfterValidator(in_range(1, float("inf"),
                                                             "a whole number of at least 1"))]
