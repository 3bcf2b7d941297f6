"""The postcopy-preempt channel around the peers: schema, framing, triggers, counters, files.

Scenario files that use `channel: preempt` load only with the capability, and only for
what can travel there (RAM_PAGE records, source -> destination), each refusal one line
naming the file, line and field.  The proxy's side, with streams made by the codec: the
preempt framer finds every bare page record and the EOS wherever the input is cut, a
RAM_PAGE frame trigger matches at the end of the count-th record, faults name the preempt
flow, the counters list it only when it is on, a recording keeps it in its own file, and
`harness analyze` places its pages in the main stream's RAM.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.analyze import analyze_file, preempt_pair
from harness.faults.netfaults import FaultError, fault_flows, parse_fault
from harness.faults.preempt import PreemptFramer
from harness.faults.recording import Recording
from harness.faults.stats import Stats
from harness.faults.triggers import parse_trigger
from harness.protocol import RamBlockInfo, SectionType, StreamDecoder, StreamEncoder
from harness.scenario import ScenarioError, load_scenario
from tests.unit.test_proxy_framing import frame_all

PAGE = 4096
RECORD = 8 + 1 + len("ram") + PAGE
EOS = (0x10).to_bytes(8, "big")
BASE = ("name: a\ncapabilities: {postcopy-ram: true, postcopy-preempt: true}\nsteps:\n"
        "  - on: {status: {peer: source, is: active}}\n    do: migrate-start-postcopy\n")


# ------------------------------------------------------------------ schema
def _load(tmp_path: Path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path, load_scenario(path)


def test_a_scenario_aims_at_the_preempt_channel_with_the_capability(tmp_path):
    _, sc = _load(tmp_path, BASE + (
        "  - on: {frame: RAM_PAGE, channel: preempt, count: 3}\n"
        "    fault: {kind: net.corrupt, channel: preempt}\n"
        "  - on: {bytes: {channel: preempt, after: 10KiB}}\n"
        "    fault: {kind: net.delay, channel: preempt, delay: 5ms, direction: forward}\n"))
    assert sc.steps[1].on.channel == "preempt" and sc.steps[1].fault.channel == "preempt"
    assert sc.steps[2].on.bytes.channel == "preempt"


#: step lines -> (line, field, fragment of the one-line reason)
BAD = {
    "no capability": (
        "  - on: {frame: RAM_PAGE, channel: preempt}\n    fault: {kind: net.reset}\n",
        6, "steps[1].on.channel", "channel: preempt needs capabilities: {postcopy-ram: true,"),
    "no capability, fault": (
        "  - on: {pass: 1}\n    fault: {kind: net.reset, channel: preempt}\n",
        7, "steps[1].fault.channel", "channel: preempt needs capabilities"),
    "a message on preempt": (
        "  - on: {pass: 1}\n    fault: {kind: net.drop, channel: preempt, message: REQ_PAGES}\n",
        7, "steps[1].fault.message", "REQ_PAGES does not travel on the preempt channel"),
    "a section frame on preempt": (
        ("  - on: {pass: 1}\n    fault: {kind: net.truncate, channel: preempt, "
        "frame: SECTION_PART}\n"),
        7, "steps[1].fault.frame", "SECTION_PART does not travel on the preempt channel"),
    "backward on preempt": (
        ("  - on: {pass: 1}\n    fault: {kind: net.blackhole, channel: preempt, "
        "direction: backward}\n"),
        7, "steps[1].fault.direction", "source -> destination bytes only"),
    "RAM_PAGE trigger on main": (
        "  - on: {frame: RAM_PAGE, count: 2}\n    do: stop\n",
        6, "steps[1].on.frame", "counts RAM_PAGE records on channel: preempt only"),
    "a section trigger on preempt": (
        "  - on: {frame: SECTION_END, channel: preempt}\n    do: stop\n",
        6, "steps[1].on.frame", "SECTION_END does not travel on the preempt channel"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_what_cannot_be_on_the_preempt_channel_is_refused_in_one_line(case, tmp_path):
    step, line, field, fragment = BAD[case]
    text = BASE + step
    if case.startswith("no capability"):
        text = text.replace(", postcopy-preempt: true", "")
    with pytest.raises(ScenarioError) as caught:
        _load(tmp_path, text)
    err = caught.value
    assert (err.file, err.line, err.field) == (str(tmp_path / "s.yaml"), line, field), str(err)
    assert fragment in str(err).splitlines()[0]


# ------------------------------------------------------------------ proxy side
def test_triggers_and_faults_name_the_preempt_flow():
    assert parse_trigger({"frame": "RAM_PAGE", "channel": "preempt", "count": 2}).flow == \
        "preempt"
    assert parse_trigger({"bytes": {"channel": "preempt", "after": 9}}).flow == "preempt"
    assert parse_trigger({"frame": "PONG"}).flow == "return-path"  # unchanged
    for kind in ("net.reset", "net.corrupt", "net.truncate", "net.blackhole"):
        assert fault_flows(parse_fault({"kind": kind, "channel": "preempt"})) == ("preempt",)
    assert fault_flows(parse_fault({"kind": "net.corrupt"})) == ("main",)  # unchanged
    with pytest.raises(FaultError, match="travels on"):
        fault_flows(parse_fault({"kind": "net.corrupt", "frame": "PACKAGED"}).model_copy(
            update={"channel": "preempt"}))


def _streams(pages: list[int]) -> tuple[bytes, bytes, np.ndarray]:
    """A main stream that names block "ram" (MEM_SIZE), and a preempt channel carrying
    `pages` as bare records naming their block, then EOS."""
    mem = np.frombuffer(np.random.default_rng(7).bytes(32 * PAGE), np.uint8)
    enc = StreamEncoder()
    records = bytearray()
    enc.ram.save_pages(records, "ram", mem, [p for p in range(32) if p not in pages])
    main = (enc.header() + enc.configuration("none")
            + enc.ram_start(2, [RamBlockInfo("ram", mem.size)])
            + enc.ram_section(SectionType.SECTION_PART, 2, records)
            + enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof())
    preempt = bytearray()
    for page in pages:  # the sender forgets its last block when it switches channel
        enc.ram.reset()
        enc.ram.save_pages(preempt, "ram", mem, [page])
    return bytes(main), bytes(preempt) + EOS, mem


def _main_decoder(main: bytes) -> StreamDecoder:
    decoder = StreamDecoder(ram="discard")
    decoder.receive_data(main)
    list(decoder.events())
    return decoder


PAGES = [20, 3, 31, 7, 8]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, len(PAGES) * RECORD + 7), max_size=12))
def test_the_preempt_framer_finds_every_record_and_eos_whatever_the_cuts(cuts):
    main, preempt, _ = _streams(PAGES)
    decoder = _main_decoder(main)
    framing = frame_all(PreemptFramer(lambda: decoder), preempt, cuts, end=False, release=True)
    assert framing.lost is None and framing.boundary == len(preempt)
    offsets = [int(o) for batch in framing.pages for o in batch.offsets]
    assert offsets == [p * PAGE for p in PAGES]
    spans = np.concatenate([batch.spans for batch in framing.pages])
    assert spans[:, 0].tolist() == [i * RECORD for i in range(len(PAGES))]
    assert spans[:, 1].tolist() == [i * RECORD + 12 for i in range(len(PAGES))]
    assert [(f.name, f.start, f.end) for f in framing.frames] == [
        ("RAM_EOS", len(preempt) - 8, len(preempt))]


def test_a_ram_page_trigger_matches_at_the_end_of_the_count_th_record():
    main, preempt, _ = _streams(PAGES)
    decoder = _main_decoder(main)
    trigger = parse_trigger({"frame": "RAM_PAGE", "channel": "preempt", "count": 4})
    framer = PreemptFramer(lambda: decoder)
    first = frame_all(framer, preempt[:2 * RECORD + 5], [], end=False, release=True)
    assert trigger.scan(first, 0, 0, 2 * RECORD + 5) is None and trigger.seen == 2
    rest = frame_all(framer, preempt[2 * RECORD + 5:], [], end=False, release=True)
    position, frame = trigger.scan(rest, 0, 0, len(preempt))
    assert position == 4 * RECORD and frame is not None
    assert (frame.name, frame.start, frame.detail) == ("RAM_PAGE", 3 * RECORD,
                                                       f"ram@0x{PAGES[3] * PAGE:x}")


def test_without_the_main_streams_blocks_the_channel_loses_framing_and_passes():
    _, preempt, _ = _streams(PAGES)
    framing = frame_all(PreemptFramer(lambda: None), preempt, [], end=False, release=True)
    assert framing.lost is not None and "no RAM block list" in framing.lost
    assert framing.boundary == len(preempt) and not framing.pages


def test_garbage_on_the_channel_loses_framing_at_its_offset():
    main, preempt, _ = _streams(PAGES)
    decoder = _main_decoder(main)
    bad = preempt[:RECORD] + b"\x00" * 7 + b"\x03" + preempt[RECORD + 8:]  # flags 0x03
    framing = frame_all(PreemptFramer(lambda: decoder), bad, [], end=False, release=True)
    assert framing.lost is not None and f"offset {RECORD}" in framing.lost


def test_the_counters_and_the_recording_know_preempt_only_when_it_is_on(tmp_path):
    assert "preempt" not in Stats().snapshot()["bytes"]
    assert Stats(preempt=True).snapshot()["bytes"]["preempt"] == {
        "received": 0, "forwarded": 0, "discarded": 0}
    plain, with_preempt = tmp_path / "a", tmp_path / "b"
    plain.mkdir()
    with_preempt.mkdir()
    Recording(plain).close()
    assert sorted(p.name for p in plain.iterdir()) == ["stream.fwd.bin", "stream.rp.bin"]
    recording = Recording(with_preempt, preempt=True)
    recording.write("preempt", b"xyz")
    recording.close()
    path = with_preempt / "stream.preempt.bin"
    assert path.read_bytes() == b"xyz" and stat.S_IMODE(path.stat().st_mode) == 0o600


# ------------------------------------------------------------------ analyze
def test_analyze_places_the_preempt_pages_and_reports_a_cut_record(tmp_path):
    main, preempt, mem = _streams(PAGES)
    (tmp_path / "stream.fwd.bin").write_bytes(main)
    (tmp_path / "stream.preempt.bin").write_bytes(preempt)
    assert preempt_pair(tmp_path / "stream.fwd.bin", None) == (
        tmp_path / "stream.fwd.bin", tmp_path / "stream.preempt.bin")
    assert preempt_pair(tmp_path / "stream.preempt.bin", None) == (
        tmp_path / "stream.fwd.bin", tmp_path / "stream.preempt.bin")
    whole = analyze_file(tmp_path / "stream.fwd.bin", preempt=tmp_path / "stream.preempt.bin")
    assert whole.preempt is not None and whole.preempt["records"] == len(PAGES)
    assert whole.preempt["blocks"]["ram"]["offsets"] == [p * PAGE for p in PAGES]
    assert whole.preempt["eos"] == [len(preempt) - 8]
    assert np.array_equal(whole.ram["ram"], mem)
    assert whole.to_json()["preempt"]["trailing"] == 0
    without = analyze_file(tmp_path / "stream.fwd.bin")
    assert without.preempt is None and not np.array_equal(without.ram["ram"], mem)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(preempt[:2 * RECORD + 100])
    partial = analyze_file(tmp_path / "stream.fwd.bin", preempt=cut).preempt
    assert partial is not None
    assert (partial["records"], partial["eos"], partial["trailing"]) == (2, [], 100)
