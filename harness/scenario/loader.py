"""Scenario files -> `Scenario`, with errors that name the file, the line and the field.

Strategy: PyYAML first composes the file into a node tree (every node knows its line and
column), the tree is checked for duplicate keys, then constructed into plain data that
pydantic validates. Each pydantic error location is translated back into a path of file
keys (dropping the union tags pydantic inserts, following the model types) and that path
is walked down the node tree to find the line. Validators that know better than pydantic
raise `FieldError`s whose issues carry their own relative paths, appended here.

The YAML dialect is YAML 1.1 as PyYAML reads it, except that only true/false are booleans:
`on:` (a step's trigger key) and `yes/no/on/off` stay strings (pydantic still reads
`postcopy-ram: on` as true where a boolean is expected).

A scenario file is input from anyone, so it is bounded before anything expands it: at most
`MAX_FILE_BYTES` are read, the composer refuses nesting deeper than `MAX_DEPTH` (PyYAML
composes recursively), and the node tree, with every alias counted at the size of what it
stands for, may hold at most `MAX_NODES` nodes (aliases and `<<:` merges share nodes in the
tree but are copied out by construction and by pydantic: "billion laughs").
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, Tag, ValidationError

from harness.errors import ScenarioFailure

from ..file_kinds import not_a_file
from .base import FieldError, PathItem, ScenarioModel, describe, dotted
from .model import Scenario

BOOL_TAG = "tag:yaml.org,2002:bool"
MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_FILE_BYTES = 1 << 20  # the largest shipped scenario is ~3 KiB
MAX_DEPTH = 32  # nesting levels, aliases expanded (a shipped scenario nests ~6 deep)
MAX_NODES = 10_000  # nodes with aliases expanded (a shipped scenario has at most ~110)


class _Bound(yaml.MarkedYAMLError):
    """A bound of a scenario file exceeded: reported without the "invalid YAML" prefix."""


class _Loader(yaml.SafeLoader):
    """SafeLoader whose booleans are only true/false (so `on:` stays a key named "on"),
    refusing nesting deeper than MAX_DEPTH while it composes."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Bound(problem=_too_deep(), problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario file; `str()` is `file:line:column: field: reason`."""

    file: str
    line: int | None  # 1-based
    column: int | None  # 1-based
    field: str | None  # dotted path of file keys: steps[2].on.status.is
    reason: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class ScenarioError(ScenarioFailure):
    """An invalid scenario file. The attributes describe the first problem (in file order);
    `problems` holds them all and `str()` prints one per line."""

    def __init__(self, problems: Sequence[Problem]):
        if not problems:
            raise ValueError("ScenarioError needs at least one problem")
        self.problems = tuple(problems)
        first = self.problems[0]
        self.file, self.line, self.column = first.file, first.line, first.column
        self.field, self.reason = first.field, first.reason
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[ScenarioError], tuple[tuple[Problem, ...]]]:
        return ScenarioError, (self.problems,)  # survives pickling (multiprocessing, xdist)


# --- entry points -----------------------------------------------------------------------


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file."""
    return parse_scenario(_read(path), file=str(path), source_file=Path(path))


def load_scenarios(paths: Iterable[str | Path]) -> list[Scenario]:
    """Load every file (a directory stands for its *.yaml files); all problems in one error."""
    scenarios: list[Scenario] = []
    problems: list[Problem] = []
    for path in _expand(paths):
        try:
            if isinstance(path, Problem):
                raise ScenarioError([path])
            scenarios.append(load_scenario(path))
        except ScenarioError as err:
            problems.extend(err.problems)
    if problems:
        raise ScenarioError(problems)
    return scenarios


def parse_scenario(text: str, file: str = "<string>", source_file: Path | None = None
                   ) -> Scenario:
    """Validate a scenario given as YAML text; `file` is the name errors use."""
    root = _compose(text, file)
    data = _construct(root, file)
    context: dict[str, Any] = {"source_file": source_file}
    if source_file is not None:
        context["default_name"] = source_file.stem
    try:
        return Scenario.model_validate(data, by_name=False, context=context)
    except ValidationError as err:
        raise ScenarioError(_sorted(_problems(err, root, file))) from None


def _expand(paths: Iterable[str | Path]) -> Iterator[Path | Problem]:
    """Files as given, directories as their *.yaml/*.yml files (an empty one is a problem)."""
    for path in map(Path, paths):
        if not path.is_dir():
            yield path
            continue
        found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not found:
            yield Problem(str(path), None, None, None, "no scenario files (*.yaml) in this directory")
        yield from found


def _read(path: str | Path) -> str:
    try:
        kind = not_a_file(path)  # opening a FIFO without a writer would never return
        if kind is not None:
            raise ScenarioError([Problem(str(path), None, None, None,
                                         f"is {kind}, not a scenario file")])
        with Path(path).open("rb") as fh:  # read to the bound: the file may be growing
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            reason = (f"larger than {MAX_FILE_BYTES // 1024} KiB, the bound for a scenario file "
                      "(is it a scenario file?)")
        else:
            return data.decode("utf-8")
    except FileNotFoundError:
        reason = "no such file"
    except UnicodeDecodeError as err:
        reason = f"not UTF-8 text (byte {err.start})"
    except OSError as err:
        reason = f"cannot be read: {err.strerror or err}"
    raise ScenarioError([Problem(str(path), None, None, None, reason)])


# --- YAML -------------------------------------------------------------------------------


def _compose(text: str, file: str) -> yaml.Node:
    if len(text) > MAX_FILE_BYTES:
        raise ScenarioError([Problem(file, None, None, None, f"larger than "
                                     f"{MAX_FILE_BYTES // 1024} KiB, the bound for a scenario "
                                     "file")])
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _expanded_size(root)
    except yaml.MarkedYAMLError as err:
        raise ScenarioError([_yaml_problem(err, file)]) from None
    finally:
        loader.dispose()
    if root is None:
        raise ScenarioError([Problem(file, 1, 1, None, "the file is empty: a scenario is a "
                                     "mapping with keys such as name:, guest: and steps:")])
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else f"{root.value!r}"
        raise ScenarioError([_at(file, root, None, "a scenario file is a mapping of keys "
                                 f"(name:, guest:, steps:, ...), not {kind}")])
    duplicates = list(_duplicate_keys(root, ()))
    if duplicates:
        raise ScenarioError([_at(file, node, dotted(path), reason)
                             for node, path, reason in duplicates])
    return root


def _construct(root: yaml.Node, file: str) -> Any:
    loader = _Loader("")
    try:
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as err:
        raise ScenarioError([_yaml_problem(err, file)]) from None
    finally:
        loader.dispose()


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels, the bound for a scenario file"


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the tree with every alias expanded (each shared node is measured once);
    raises `_Bound` past MAX_NODES or MAX_DEPTH (at the first node found too big or too
    deep), or when an alias refers to a node that contains it."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    open_: set[int] = set()

    def visit(node: yaml.Node, level: int) -> tuple[int, int]:
        known = measured.get(id(node))
        if known is None:
            if id(node) in open_:
                raise _Bound(problem="an alias refers to a node that contains it (a loop)",
                             problem_mark=node.start_mark)
            if level > MAX_DEPTH:
                raise _Bound(problem=_too_deep(), problem_mark=node.start_mark)
            open_.add(id(node))
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [item for pair in node.value for item in pair]
            size, height = 1, 1
            for child in children:
                child_size, child_height = visit(child, level + 1)
                if level + child_height > MAX_DEPTH:  # an alias to a deep node: point here
                    raise _Bound(problem=_too_deep(), problem_mark=node.start_mark)
                size, height = size + child_size, max(height, child_height + 1)
            open_.discard(id(node))
            known = measured[id(node)] = (size, height)
            if size > MAX_NODES:
                raise _Bound(problem=f"more than {MAX_NODES} values once its aliases are "
                             "expanded, the bound for a scenario file",
                             problem_mark=node.start_mark)
        return known

    return visit(root, 1)[0]


def _yaml_problem(err: yaml.MarkedYAMLError, file: str) -> Problem:
    mark = err.problem_mark or err.context_mark
    if isinstance(err, _Bound):
        return Problem(file, mark.line + 1 if mark else None,
                       mark.column + 1 if mark else None, None, str(err.problem))
    reason = err.problem or "invalid YAML"
    if err.context:
        started = f" at line {err.context_mark.line + 1}" if err.context_mark else ""
        reason = f"{reason} ({err.context}{started})"
    return Problem(file, mark.line + 1 if mark else None, mark.column + 1 if mark else None,
                   None, f"invalid YAML: {reason}")


def _duplicate_keys(node: yaml.Node, path: tuple[PathItem, ...],
                    seen: set[int] | None = None) -> Iterator[tuple[yaml.Node, tuple, str]]:
    """Every key written twice in one mapping, as (key node, its path, reason)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # anchors and aliases share nodes; recursive ones loop
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, index), seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if key.tag == MERGE_TAG or not isinstance(key, yaml.ScalarNode):
                continue
            name = (key.tag, key.value)
            if name in first:
                yield key, (*path, key.value), (f"duplicate key {key.value!r} (first given "
                                                f"at line {first[name]})")
            else:
                first[name] = key.start_mark.line + 1
            yield from _duplicate_keys(value, (*path, key.value), seen)


def _at(file: str, node: yaml.Node, field: str | None, reason: str) -> Problem:
    mark = node.start_mark
    return Problem(file, mark.line + 1, mark.column + 1, field, reason)


# --- pydantic errors -> problems --------------------------------------------------------


def _problems(err: ValidationError, root: yaml.Node, file: str) -> Iterator[Problem]:
    for error in err.errors():
        path, owner, at_key = _file_path(error["loc"])
        if error["type"] == "invalid_key":  # pydantic's loc holds the key as an int here
            path, at_key = path[:-1], False
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            for issue in cause.issues:
                yield _locate(file, root, (*path, *issue.path), issue.message, issue.at_key)
        else:
            reason, key_error = _reason(error, owner)
            yield _locate(file, root, path, reason, at_key or key_error)


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line or 0, p.column or 0))


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "dict_type": "a mapping", "tuple_type": "a list",
    "list_type": "a list", "path_type": "a path",
}


def _reason(error: Mapping[str, Any], owner: type[BaseModel] | None) -> tuple[str, bool]:
    """A message for one pydantic error, and whether it is about the key itself."""
    kind, value, loc = error["type"], error.get("input"), error["loc"]
    if kind == "extra_forbidden":
        model = owner if owner is not None and issubclass(owner, ScenarioModel) else None
        key = loc[-1]
        return (model.unknown_key_message(key) if model else f"unknown key {key!r}"), True
    if kind == "missing":
        return f"missing required key {loc[-1]!r}", False
    if kind == "invalid_key":
        return f"keys are names (strings), got {describe(value)}", False
    if kind == "value_error":
        return str(error["ctx"]["error"]), False
    if kind == "too_short" and isinstance(value, (list, tuple)):
        return "expected a non-empty list", False
    expected = _EXPECTED.get(kind)
    if expected:
        return f"expected {expected}, got {describe(value)}", False
    message = error["msg"]
    return f"{message[:1].lower()}{message[1:]} (got {describe(value)})", False


def _file_path(loc: Sequence[PathItem]) -> tuple[tuple[PathItem, ...], Any, bool]:
    """pydantic loc -> (file path, model owning the last key, whether it names a dict key).

    Walks the model types along `loc`, dropping the tags of discriminated unions and the
    "[key]" marker of a dict key error.
    """
    path: list[PathItem] = []
    current: Any = Scenario
    owner: Any = None
    at_key = False
    for item in loc:
        current = _plain(current)
        tags = _union_tags(current)
        if tags is not None and item in tags:
            current = tags[item]
            continue
        if item == "[key]":
            at_key = True
            continue
        path.append(item)
        owner = current if _is_model(current) else None
        current = _child(current, item)
    return tuple(path), owner, at_key


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _plain(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type underneath."""
    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin in (Union, types.UnionType) and type(None) in args and len(args) == 2:
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation


def _union_tags(annotation: Any) -> dict[str, Any] | None:
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return None
    tags = {}
    for member in typing.get_args(annotation):
        for meta in getattr(member, "__metadata__", ()):
            if isinstance(meta, Tag):
                tags[meta.tag] = typing.get_args(member)[0]
    return tags or None


def _child(annotation: Any, item: PathItem) -> Any:
    if _is_model(annotation):
        for name, field in annotation.model_fields.items():
            if (field.alias or name) == item:
                return field.annotation
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (tuple, list) and args:
        return args[0]
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


# --- file path -> line ------------------------------------------------------------------


def _locate(file: str, root: yaml.Node, path: Sequence[PathItem], reason: str,
            at_key: bool) -> Problem:
    """Walk `path` down the node tree; the deepest node reached gives the line."""
    node, key_node, kept = root, None, []
    for item in path:
        found = _step(node, item)
        if found is None:
            if isinstance(node, yaml.MappingNode):
                kept.append(item)  # a missing key: name it, point at its mapping
            break
        key_node, node = found
        kept.append(item)
    target = key_node if at_key and key_node is not None and len(kept) == len(path) else node
    return _at(file, target, dotted(kept) or None, reason)


def _step(node: yaml.Node, item: PathItem) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        text = str(item).lower() if isinstance(item, bool) else str(item)
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == text:
                return key, value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(item, int) \
            and not isinstance(item, bool) and 0 <= item < len(node.value):
        return None, node.value[item]
    return None
