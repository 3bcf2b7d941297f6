"""The compiled RAM record walk (harness._recv) against its Python twin, and how one is picked.

Random streams -- mixes of named and CONTINUE page and zero records, fill bytes, offsets
out of range, MEM_SIZE, EOS, XBZRLE with a bad header, compressed pages, bad flags, cut
short, fed in random chunks -- go through a `RamLoader` twice per sink (place, place with
a present bitmap, place once, discard): once with the compiled module, once with
`native=None` (the twin).  Everything must be the same: RAM, present bitmap, duplicates,
pages handed to `on_place`, events, where each call stopped, what it still needs, and
the error (type, message, offset).  The comparisons import the build directly, so they
also run in CI's pass with HARNESS_NO_EXTENSIONS=1; they skip only when it is not built.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import native
from harness.protocol.errors import RemoteProtocolError
from harness.protocol.events import RamMemSize, RamPages
from harness.protocol.ram import RamLoader
from harness.protocol.wire import Reader
from tests.conftest import REPO

pytestmark = pytest.mark.codec

PAGE = 4096
BLOCKS = {"pc.ram": 24, "rom": 4}  # pages


def _compiled():
    """harness._recv if it is built from the current recv.c, else None."""
    try:
        module = importlib.import_module("harness._recv")
    except ImportError:
        return None
    digest = hashlib.sha256((REPO / "harness" / "csrc" / "recv.c").read_bytes()).hexdigest()
    return module if getattr(module, "SOURCE_HASH", None) == digest else None


RECV = _compiled()
needs_build = pytest.mark.skipif(RECV is None, reason="harness._recv is not built from the "
                                 "current recv.c (python setup.py build_ext --inplace)")


# ------------------------------------------------------------------ streams
def _word(addr: int, flags: int) -> bytes:
    return (addr | flags).to_bytes(8, "big")


def _name(block: str) -> bytes:
    return bytes([len(block)]) + block.encode()


_MEM_SIZE = _word(sum(BLOCKS.values()) * PAGE, 0x04) + b"".join(
    _name(b) + (n * PAGE).to_bytes(8, "big") for b, n in BLOCKS.items())


@st.composite
def records(draw) -> bytes:
    """One record, valid or not (weighted towards CONTINUE page and zero records)."""
    what = draw(st.sampled_from(
        ["page_c"] * 6 + ["zero_c"] * 6 + ["run"] * 3 + ["page_n", "zero_n", "out", "fill",
                                                         "mem", "xbz", "comp", "bad", "eos"]))
    block = draw(st.sampled_from(sorted(BLOCKS)))
    page = draw(st.integers(0, BLOCKS["pc.ram"] - 1))
    data = draw(st.sampled_from([b"\x00" * PAGE, b"\x5a" * PAGE, bytes(range(256)) * 16]))
    if what == "page_c":
        return _word(page * PAGE, 0x28) + data
    if what == "zero_c":
        return _word(page * PAGE, 0x22) + b"\0"
    if what == "run":
        n = draw(st.integers(2, 8))
        kind = draw(st.sampled_from([0x28, 0x22]))
        first = draw(st.integers(0, BLOCKS["pc.ram"] - 1))
        return b"".join(_word((first + i) * PAGE, kind) + (data if kind == 0x28 else b"\0")
                        for i in range(n))
    if what == "page_n":
        return _word(min(page, BLOCKS[block] - 1) * PAGE, 0x08) + _name(block) + data
    if what == "zero_n":
        return _word(min(page, BLOCKS[block] - 1) * PAGE, 0x02) + _name(block) + b"\0"
    if what == "out":
        return _word(draw(st.integers(BLOCKS["pc.ram"], 1 << 20)) * PAGE,
                     draw(st.sampled_from([0x28, 0x22]))) + b"\0" * 9
    if what == "fill":
        return _word(page * PAGE, 0x22) + bytes([draw(st.integers(1, 255))])
    if what == "mem":
        return _MEM_SIZE
    if what == "xbz":
        return _word(page * PAGE, 0x60) + b"\x07\x00\x04zzzz"  # wrong encoding byte
    if what == "comp":
        z = zlib.compress(data)
        return _word(page * PAGE, 0x120) + len(z).to_bytes(4, "big") + z
    if what == "bad":
        return _word(page * PAGE, draw(st.sampled_from([0x80, 0x400, 0x2a, 0x30 | 0x08])))
    return _word(0, 0x10)


@st.composite
def streams(draw) -> tuple[bytes, list[int], bool]:
    """A stream (named first record, usually), its feed points and whether it is closed."""
    named = draw(st.integers(0, 9)) > 0  # else a CONTINUE first: "Ack, bad migration stream!"
    head = _word(0, 0x08) + _name("pc.ram") + b"\x11" * PAGE if named else b""
    body = b"".join(draw(st.lists(records(), min_size=1, max_size=40)))
    stream = head + body
    if draw(st.booleans()):
        stream = stream[:draw(st.integers(1, len(stream)))]
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream)), max_size=6))) | {len(stream)})
    return stream, cuts, draw(st.booleans())


# ------------------------------------------------------------------ one run
def _ram(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ram = {}
    for name, pages in BLOCKS.items():
        mem = np.zeros(pages * PAGE, np.uint8)
        dirty = rng.random(pages) < 0.5
        mem.reshape(pages, PAGE)[dirty] = rng.integers(1, 256, (int(dirty.sum()), 1),
                                                       dtype=np.uint8)
        ram[name] = mem
    return ram


def _events(events) -> list:
    out = []
    for ev in events:
        if isinstance(ev, RamPages):
            spans = None if ev.spans is None else ev.spans.tolist()
            out.append(("pages", ev.section_id, ev.block, ev.offsets.tolist(), ev.kinds.tolist(),
                        spans, ev.offset))
        else:
            assert isinstance(ev, RamMemSize)
            out.append(("mem", ev.total, ev.blocks, ev.offset))
    return out


def run(mode: str, stream: bytes, cuts: list[int], closed: bool, module, seed: int = 0) -> dict:
    """Feed `stream` to a loader in `mode`, growing the buffer to each cut; all it did."""
    ram = None if mode == "discard" else _ram(seed)
    loader = RamLoader(ram, discard=mode == "discard", native=module)
    placed: list[tuple[str, int]] = []
    if mode == "discard":  # its blocks come from the stream's block list
        loader.load(Reader(_MEM_SIZE, 0, len(_MEM_SIZE)), section_id=3)
    if mode in ("present", "once"):
        rng = np.random.default_rng(seed + 1)
        loader.present = {n: (rng.random(p) < 0.3).astype(np.uint8) for n, p in BLOCKS.items()}
    if mode == "once":
        loader.postcopy_mode = True
        loader.on_place = lambda block, pages: placed.extend((block, int(p)) for p in pages)
    buf = bytearray(stream)
    base = 1000  # the buffer's first byte is this far into the stream
    pos, calls, error = 0, [], None
    for i, end in enumerate(cuts):
        last = i == len(cuts) - 1
        r = Reader(buf, pos, end, base, closed=closed and last)
        try:
            events, eos = loader.load(r, section_id=3)
        except RemoteProtocolError as err:  # Truncated is one too
            error = (type(err).__name__, str(err), err.offset, r.pos)
            break
        calls.append((_events(events), eos, r.pos, loader.need))
        pos = r.pos
        if eos:
            break
    return {"ram": None if ram is None else {n: m.tobytes() for n, m in ram.items()},
            "present": None if loader.present is None
            else {n: p.tobytes() for n, p in loader.present.items()},
            "duplicates": loader.duplicates, "placed": sorted(placed), "calls": calls,
            "error": error, "last_block": getattr(loader.last_block, "idstr", None)}


# ------------------------------------------------------------------ the comparisons
@needs_build
@pytest.mark.parametrize("mode", ["place", "present", "once", "discard"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=streams(), seed=st.integers(0, 3))
def test_compiled_and_twin_agree(mode, case, seed):
    stream, cuts, closed = case
    assert run(mode, stream, cuts, closed, RECV, seed) == run(mode, stream, cuts, closed, None,
                                                              seed)


@needs_build
@pytest.mark.parametrize("mode", ["place", "once", "discard"])
def test_a_bulk_stream_goes_through_the_compiled_loop(mode):
    """Not only equal: the compiled loop really placed the pages (RAM holds them), and a
    record cut by the end of the buffer is left whole for the next call."""
    pages = 16
    body = b"".join(_word(p * PAGE, 0x28) + bytes([p + 1]) * PAGE if p % 2 else
                    _word(p * PAGE, 0x22) + b"\0" for p in range(1, pages))
    stream = _word(0, 0x08) + _name("pc.ram") + b"\x01" * PAGE + body + _word(0, 0x10)
    cut = len(stream) - 8 - 100  # inside the last page record
    got = run(mode, stream, [cut, len(stream)], True, RECV)
    assert got == run(mode, stream, [cut, len(stream)], True, None)
    first = got["calls"][0]
    assert first[1] is False and first[3] == 1000 + len(stream) - 8
    assert got["calls"][1][1] is True
    if mode == "place":
        mem = np.frombuffer(got["ram"]["pc.ram"], np.uint8).reshape(-1, PAGE)
        for p in range(pages):
            assert (mem[p] == (1 if p == 0 else p + 1 if p % 2 else 0)).all(), p
    if mode == "once":
        assert got["placed"] and got["duplicates"] + len(got["placed"]) == pages


@needs_build
def test_the_compiled_walk_refuses_bad_arguments():
    buf = bytearray(_word(0, 0x22) + b"\0")
    ram = np.zeros(PAGE, np.uint8)
    with pytest.raises(ValueError):
        RECV.walk(0, buf, 0, len(buf) + 1, ram, PAGE, None)
    with pytest.raises(ValueError):
        RECV.walk(7, buf, 0, len(buf), ram, PAGE, None)
    with pytest.raises(TypeError):
        RECV.walk(0, buf, 0, len(buf), bytes(PAGE), PAGE, None)  # read-only RAM
    # a page that would end past the RAM buffer is not written: the walk stops before it
    assert RECV.walk(0, buf, 0, len(buf), np.zeros(100, np.uint8), PAGE, None)[0] == 0


# ------------------------------------------------------------------ which path runs
def _can_build() -> bool:
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which("gcc") is not None and include.exists()


@pytest.mark.skipif(native.disabled(), reason="HARNESS_NO_EXTENSIONS is set: the twin is "
                    "asked for")
@pytest.mark.skipif(not _can_build(), reason="no gcc or no Python.h: the extension cannot "
                    "be built here")
def test_the_compiled_path_is_there_where_it_can_be_built():
    """CI never runs the Python twin only without saying so: where gcc and Python.h are,
    the build must have happened (`pip install -e .` / setup.py build_ext) and be fresh."""
    assert native.module("_recv") is not None, native.describe()
    assert native.describe()["recv"] == "c"
    assert RamLoader({"ram": np.zeros(PAGE, np.uint8)}).native is native.module("_recv")


def test_harness_no_extensions_selects_the_twin():
    code = ("from harness import native; from harness.protocol.ram import RamLoader; "
            "import numpy as np; "
            "print(native.describe()['recv'], RamLoader({'r': np.zeros(4096, np.uint8)}).native)")
    env = dict(os.environ, HARNESS_NO_EXTENSIONS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["python", "(HARNESS_NO_EXTENSIONS=1)", "None"]
