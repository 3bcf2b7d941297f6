"""Which page path runs: the optional C extensions or their pure-Python twins.

Strategy: `harness._recv` (placing received page records into RAM) and `harness._send`
(framing page records out of RAM) are built from `harness/csrc/*.c` by `pip install`
(setup.py), each optional.  This module imports each once and hands it out, or None --
and then the caller's pure-Python twin runs -- when `HARNESS_NO_EXTENSIONS=1` is set,
when the build failed or was skipped, or when the build is older than its C source (its
SOURCE_HASH is not the source's SHA-256: an editable install keeps a stale .so next to a
changed .c).  Both paths give identical bytes and events (tests/unit/test_native_*.py
run every codec case through both); `describe()` says which ran, for the report and
`harness bench`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType

DISABLE_ENV = "HARNESS_NO_EXTENSIONS"
_CSRC = Path(__file__).with_name("csrc")
#: module -> its C source file
SOURCES = {"_recv": "recv.c", "_send": "send.c"}

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _load(name: str) -> ModuleType | None:
    if disabled():
        _why[name] = f"python ({DISABLE_ENV}=1)"
        return None
    try:
        module = importlib.import_module(f"harness.{name}")
    except ImportError:
        _why[name] = "python (not built)"
        return None
    source = _CSRC / SOURCES[name]
    if source.exists():
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if getattr(module, "SOURCE_HASH", None) != digest:
            _why[name] = f"python (the build is older than {source.name}: pip install again)"
            return None
    _why[name] = "c"
    return module


def module(name: str) -> ModuleType | None:
    """The compiled module `name` ("_recv" or "_send"), or None for the Python twin."""
    if name not in _loaded:
        _loaded[name] = _load(name)
    return _loaded[name]


def describe() -> dict[str, str]:
    """Which path each part runs: "c", or "python (why)"."""
    for name in SOURCES:
        module(name)
    return {name.lstrip("_"): _why[name] for name in SOURCES}


def path() -> str:
    """One word for a report: "c", "python", or "mixed"."""
    kinds = {why.split()[0] for why in describe().values()}
    return kinds.pop() if len(kinds) == 1 else "mixed"
