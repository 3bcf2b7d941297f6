"""A harness peer on an agent's host beside a real QEMU, without QEMU: the layout a
harness destination's `peer-start` brings (options read strictly, written into the run's
directory without following a link, passed as --layout), the runner's side of it, the
harness digest kind of a QEMU wrapper's memory summary (compared with a harness peer's
own digests exactly as locally), the wrapper's argument check, and the stacks of a
wrapper's children."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq

from harness.control import agent_messages as am
from harness.control.agent_harness import LAYOUT_FILE, check_options, layout_arguments
from harness.control.agent_peers import PeerProcess
from harness.control.agent_qemu import qemu_stacks
from harness.control.errors import CommandError
from harness.faults.proxy_main import MAX_INLINE_LAYOUT
from harness.guest.content import page_digests
from harness.invariants import check_all
from harness.invariants.base import Evidence, Expectations
from harness.qemu.layout import MAX_DEPTH, MachineLayout
from harness.qemu.served import _digest_kind
from harness.realguest.hashed import summarize, summary_from_message, summary_message
from harness.runner.agent_peer import layout_options
from harness.runner.result import PeerOutcome


def _layout_doc() -> dict:
    layout = MachineLayout("ab12", "pc-i440fx-7.2", (("pc.ram", 1 << 24), ("pc.bios", 1 << 18)),
                           {"page_size": 4096, "devices": []})
    return json.loads(json.dumps(layout.to_json()))


def _peer(tmp_path: Path, role: str = "destination", **options) -> PeerProcess:
    spec = am.PeerStart(role, role, {}, incoming=True, options=options)  # type: ignore[arg-type]
    context = zmq.Context()
    peer = PeerProcess(spec, tmp_path, context)
    peer.close_socket()
    context.term()
    return peer


# ---------------------------------------------------------------------- the agent's side
def test_a_harness_peer_takes_only_a_layout_and_only_as_a_destination():
    assert check_options("destination", {}) is None
    assert check_options("source", {}) is None
    layout = check_options("destination", {"layout": _layout_doc()})
    assert layout is not None and layout.blocks == (("pc.ram", 1 << 24), ("pc.bios", 1 << 18))
    deep: dict = {}
    node = deep
    for _ in range(MAX_DEPTH + 2):
        node["x"] = {}
        node = node["x"]
    cases = [
        ("destination", {"layout": _layout_doc(), "file": "/etc/x"},
         "harness option 'file' is unexpected (allowed: layout)"),
        ("source", {"layout": _layout_doc()}, "a source takes no layout"),
        ("destination", {"layout": "/etc/passwd"}, "'layout' must be an object"),
        ("destination", {"layout": {**_layout_doc(), "vmdesc": deep}},
         f"'layout': the layout nests deeper than {MAX_DEPTH} levels"),
        ("destination", {"layout": {**_layout_doc(), "probe": {"pad": "x" * MAX_INLINE_LAYOUT}}},
         f"exceeds {MAX_INLINE_LAYOUT}"),
        ("destination", {"layout": {**_layout_doc(), "format": 99}},
         "harness option 'layout': layout format"),
    ]
    for role, options, says in cases:
        with pytest.raises(ValueError) as refused:
            check_options(role, options)
        assert says in str(refused.value), (options.keys(), str(refused.value))


def test_the_agent_writes_the_layout_into_the_run_directory_and_passes_it(tmp_path):
    argv = _peer(tmp_path, layout=_layout_doc()).command_line()  # the agent's dispatch
    path = tmp_path / LAYOUT_FILE
    assert argv[argv.index("--layout") + 1] == str(path)
    assert argv[argv.index("--layout") - 2:argv.index("--layout")] == ["--incoming", "defer"]
    assert MachineLayout.from_json(json.loads(path.read_text())) == \
        MachineLayout.from_json(_layout_doc())
    assert path.stat().st_mode & 0o777 == 0o600
    assert "--layout" not in _peer(tmp_path).command_line()


def test_a_link_where_the_layout_goes_is_refused_an_earlier_file_replaced(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for target in (victim, run_dir / "other.json"):  # outside the run, and inside it
        (run_dir / LAYOUT_FILE).symlink_to(target)
        with pytest.raises(OSError, match="is a symbolic link"):
            _peer(run_dir, layout=_layout_doc()).command_line()
        (run_dir / LAYOUT_FILE).unlink()
    assert victim.read_text() == "keep me\n" and not (run_dir / "other.json").exists()
    (run_dir / LAYOUT_FILE).write_text("an earlier start's")
    assert layout_arguments(_peer(run_dir, layout=_layout_doc())) == [
        "--layout", str(run_dir / LAYOUT_FILE)]
    assert json.loads((run_dir / LAYOUT_FILE).read_text())["key"] == "ab12"
    with pytest.raises(OSError, match="a source takes no layout"):
        _peer(run_dir, "source", layout=_layout_doc()).command_line()


def test_the_runner_sends_its_layout_file_as_content_the_agent_reads_back(tmp_path):
    path = tmp_path / "layout-ab12.json"
    path.write_text(json.dumps(_layout_doc()))
    options = layout_options(path)
    assert options == {"layout": _layout_doc()}
    assert layout_options(None) == {}
    assert check_options("destination", options) == MachineLayout.from_json(_layout_doc())
    path.write_text("{not json")
    with pytest.raises(OSError, match="layout-ab12.json"):
        layout_options(path)


# ---------------------------------------------------------------------- the digests
def _blocks(byte: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"pc.ram": rng.integers(0, 256, 1 << 20, dtype=np.uint8),
            "pc.bios": np.full(64 * 1024, byte, dtype=np.uint8)}


def _identical(src_digests: dict, dst_digests: dict) -> tuple[bool, str]:
    ev = Evidence(Expectations(memory="identical"), PeerOutcome(kind="qemu"),
                  PeerOutcome(kind="harness"))
    ev.source_digests, ev.destination_digests = src_digests, dst_digests
    [result] = [r for r in check_all(ev) if r.name == "memory-identical"]
    return result.ok, result.detail


def test_a_qemu_summary_in_the_harness_kind_compares_with_a_harness_peers_digests():
    src, dst = _blocks(), _blocks()
    dst["pc.ram"][0x5000 + 9] ^= 0xFF
    dst_digests = {n: page_digests(b) for n, b in dst.items()}  # as a harness peer sends
    value, blob = summary_message(summarize(src, None, "harness"))
    assert value["digests"] == "harness" and len(blob) == (256 + 16) * 8
    remote = summary_from_message(value, blob)
    local = {n: page_digests(b) for n, b in src.items()}
    for name in src:
        assert np.array_equal(remote.hashes[name], local[name])
    ok, detail = _identical(remote.hashes, dst_digests)
    assert (ok, detail) == _identical(local, dst_digests)
    assert not ok and detail == "pc.ram: 1 pages differ (first at 0x5000)"
    assert _identical(remote.hashes, {n: page_digests(b) for n, b in src.items()})[0]
    blake = summary_from_message(*summary_message(summarize(src, None)))
    assert blake.kind == "blake2b" and blake.hashes["pc.ram"].dtype.itemsize == 16


def test_a_summary_of_a_digest_kind_not_known_or_not_matching_its_blob_is_refused():
    value, blob = summary_message(summarize(_blocks(), None, "harness"))
    with pytest.raises(ValueError, match="expected 2176"):
        summary_from_message(value, blob + b"\0" * 8)
    with pytest.raises(ValueError, match="digests 'md5' is not one of"):
        summary_from_message({**value, "digests": "md5"}, blob)
    with pytest.raises(ValueError, match="digests \\['harness'\\] is not one of"):
        summary_from_message({**value, "digests": ["harness"]}, blob)
    with pytest.raises(ValueError, match="expected 4352"):  # the same blob read as BLAKE2b
        summary_from_message({**value, "digests": "blake2b"}, blob)
    with pytest.raises(ValueError, match="not a whole number of pages"):
        summarize({"rsdp": np.zeros(36, np.uint8)}, None, "harness")


def test_the_wrapper_takes_a_digest_kind_and_nothing_else():
    assert _digest_kind({}) == "blake2b"
    assert _digest_kind({"digests": "harness"}) == "harness"
    for bad in ({"digests": "sha1"}, {"digests": 1}, {"digests": "harness", "ram": True}):
        with pytest.raises(CommandError, match="x-memory-evidence takes"):
            _digest_kind(bad)


# ---------------------------------------------------------------------- peer-stacks
def test_the_stacks_of_a_wrappers_children_come_from_proc():
    script = "import subprocess, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        stacks = None
        while stacks is None and time.monotonic() < deadline:
            stacks = qemu_stacks(parent.pid)
            time.sleep(0.05)
        assert stacks is not None and "(sleep):" in stacks
        assert "thread " in stacks and "waiting in" in stacks
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait(timeout=10)
    assert qemu_stacks(parent.pid) is None  # gone: no children to show
