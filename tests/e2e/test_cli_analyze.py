"""`harness analyze` as a user runs it: a real process, real files, DESIGN.md's contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, pattern_bytes

EXAMPLES = REPO / "examples" / "streams"


def harness(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, check=False)


def test_summary_of_the_quick_start_stream():
    out = harness("analyze", str(EXAMPLES / "none-m16-pattern.bin"))
    assert out.returncode == 0, out.stderr
    assert "configuration: machine 'none'" in out.stdout
    assert "ram  0x1000000 bytes: 4092 zero, 4 normal pages" in out.stdout
    assert "timer instance 0 v2 section 0: 24 bytes, decoded" in out.stdout
    assert "VM description 486 bytes" in out.stdout


def test_json_has_the_designed_keys():
    out = harness("analyze", "--json", str(EXAMPLES / "none-m16-pattern.bin"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["version"] == 3 and doc["configuration"]["machine"] == "none"
    assert [(s["type"], s["section_id"], s["idstr"], s["instance_id"], s["version_id"])
            for s in doc["sections"]] == [
        ("start", 2, "ram", 0, 4), ("part", 2, "ram", 0, 4), ("end", 2, "ram", 0, 4),
        ("full", 0, "timer", 0, 2), ("full", 4, "globalstate", 0, 1)]
    assert doc["ram"]["blocks"] == [{"idstr": "ram", "used_length": 16 << 20,
                                     "zero_pages": 4092, "normal_pages": 4,
                                     "xbzrle_pages": 0, "compressed_pages": 0}]
    assert doc["commands"] == []
    gs = next(d for d in doc["devices"] if d["idstr"] == "globalstate")
    assert bytes.fromhex(gs["fields"]["runstate"]).rstrip(b"\0") == b"prelaunch"


def test_postcopy_stream_with_its_return_path():
    out = harness("analyze", "--json", str(EXAMPLES / "postcopy-none-m16.fwd.bin"),
                  "--return-path", str(EXAMPLES / "postcopy-none-m16.rp.bin"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    names = [(c["name"], c["packaged"]) for c in doc["commands"]]
    assert names == [("OPEN_RETURN_PATH", False), ("PING", False), ("POSTCOPY_ADVISE", False),
                     ("POSTCOPY_RAM_DISCARD", False), ("PING", False), ("PACKAGED", False),
                     ("POSTCOPY_LISTEN", True), ("PING", True), ("POSTCOPY_RUN", True),
                     ("PING", False)]
    assert [d["packaged"] for d in doc["devices"]] == [True, True]
    assert [m["name"] for m in doc["return_path"]] == ["PONG"] * 4 + ["REQ_PAGES_ID", "SHUT"]
    assert doc["return_path"][4] == {"name": "REQ_PAGES_ID", "offset": 32, "start": 0x800000,
                                     "length": 4096, "block": "ram"}
    assert doc["vmdesc"] is None and doc["eof"] is True


def test_xbzrle_and_compressed_pages_are_counted():
    doc = json.loads(harness("analyze", "--json", str(EXAMPLES / "xbzrle-compress.bin")).stdout)
    [block] = doc["ram"]["blocks"]
    assert (block["xbzrle_pages"], block["compressed_pages"]) == (3, 1)


def test_extract_ram(tmp_path):
    out = harness("analyze", str(EXAMPLES / "none-m16-pattern.bin"), "--extract-ram",
                  str(tmp_path / "ram"))
    assert out.returncode == 0, out.stderr
    ram = (tmp_path / "ram" / "ram.bin").read_bytes()
    assert len(ram) == 16 << 20 and ram[0x10000:0x14000] == pattern_bytes()


def test_extract_ram_names_blocks_safely(vectors, tmp_path):
    out = harness("analyze", str(vectors / "precopy" / "pc-m16.bin"), "--extract-ram",
                  str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "pc.ram.bin", "_rom@etc_acpi_tables.bin", "pc.bios.bin", "pc.rom.bin",
        "_rom@etc_table-loader.bin", "_rom@etc_acpi_rsdp.bin"])
    assert (tmp_path / "pc.bios.bin").stat().st_size == 0x40000


def test_malformed_stream_exits_1_with_offset_and_qemus_words(tmp_path):
    data = bytearray((EXAMPLES / "none-m16-pattern.bin").read_bytes())
    at = data.index(b"\x04\x00\x00\x00\x00\x05timer") + 11 + 8 + 24
    data[at] = 0x7F
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    out = harness("analyze", str(bad))
    assert out.returncode == 1
    assert f"offset {at} (0x{at:x}): Missing section footer for timer" in out.stderr
    assert "load of migration failed: Invalid argument" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_truncated_and_foreign_files(tmp_path):
    cut = tmp_path / "cut.bin"
    cut.write_bytes((EXAMPLES / "none-m16-pattern.bin").read_bytes()[:30000])
    out = harness("analyze", str(cut))
    assert out.returncode == 1 and "unexpected end of migration stream" in out.stderr
    assert "Input/output error" in out.stderr
    text = tmp_path / "notes.txt"  # no QEVM magic: bad input (2), not a broken stream (1)
    text.write_text("hello")
    out = harness("analyze", str(text))
    assert out.returncode == 2 and out.stderr == (
        f"harness analyze: {text}: not a migration stream: it starts with b'hell', not with "
        "QEMU's magic b'QEVM'\n")
    short = tmp_path / "short.bin"
    short.write_bytes(b"QE")
    out = harness("analyze", str(short))
    assert out.returncode == 2 and "short.bin: not a migration stream: 2 bytes, shorter than " \
                                   "QEMU's magic b'QEVM'" in out.stderr
    magic = tmp_path / "magic.bin"  # the magic and nothing more: a stream cut short
    magic.write_bytes(b"QEVM")
    out = harness("analyze", str(magic))
    assert out.returncode == 1 and "unexpected end of migration stream" in out.stderr


@pytest.mark.parametrize(("make", "what"), [
    (lambda tmp: tmp, "a directory, not a file"),
    (lambda tmp: Path("/dev/null"), "a character device, not a file"),
    (lambda tmp: (tmp / "empty.bin", (tmp / "empty.bin").touch())[0], "the file is empty"),
])
def test_what_is_no_stream_is_bad_input(tmp_path, make, what):
    path = make(tmp_path)
    out = harness("analyze", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"harness analyze: {path}: not a migration stream: {what}\n"


def test_return_path_must_be_a_file(tmp_path):
    out = harness("analyze", str(EXAMPLES / "none-m16-pattern.bin"), "--return-path", "/dev/null")
    assert out.returncode == 2
    assert out.stderr == "harness analyze: /dev/null: --return-path: a character device, not " \
                         "a file\n"


def with_trailer(text: bytes) -> bytes:
    """The quick-start stream with its VM description trailer replaced by `text`."""
    data = (EXAMPLES / "none-m16-pattern.bin").read_bytes()
    brace = data.rindex(b"\x06", 0, data.rindex(b'{"page_size"')) + 5
    return data[:brace - 5] + b"\x06" + len(text).to_bytes(4, "big") + text


@pytest.mark.parametrize("trailer", [
    b'{"devices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # json.loads: RecursionError
    b'{"devices": [{"name": "timer", "instance_id": 0, "vmsd_name": "timer", "version": 2, '
    b'"fields": [' + b'{"name": "s", "type": "struct", "size": 1, "struct": {"vmsd_name": "s",'
    b' "version": 1, "fields": [' * 400 + b"]}}" * 400 + b"]}]}",  # from_vmdesc recursed
], ids=["deep-list", "deep-struct"])
def test_a_deeply_nested_vm_description_is_ignored_with_a_warning(tmp_path, trailer):
    path = tmp_path / "deep.bin"
    path.write_bytes(with_trailer(trailer))
    out = harness("analyze", "--json", str(path))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    doc = json.loads(out.stdout)
    assert "the VM description trailer nests deeper than 64 levels; ignored" in doc["warnings"]
    assert doc["vmdesc"] == {"size": len(trailer)}
    timer = next(d for d in doc["devices"] if d["idstr"] == "timer")
    assert timer["fields"] is not None  # decoded with the built-in description


def test_extract_ram_overwrites_nothing(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep me")
    (tmp_path / "ram.bin").symlink_to(mine)
    out = harness("analyze", str(EXAMPLES / "none-m16-pattern.bin"), "--extract-ram",
                  str(tmp_path))
    assert out.returncode == 2 and out.stderr == (
        f"harness analyze: --extract-ram {tmp_path}: {tmp_path / 'ram.bin'} already exists; "
        "not overwritten (give a new or empty directory)\n")
    assert mine.read_text() == "keep me"
    out = harness("analyze", str(EXAMPLES / "none-m16-pattern.bin"), "--extract-ram", str(mine))
    assert out.returncode == 2 and out.stderr.endswith(f"--extract-ram {mine}: not a directory\n")
    assert mine.read_text() == "keep me"


def test_extract_ram_writes_holes_not_zeros(tmp_path):
    """54 bytes declaring a 2 GiB block wrote 2 GiB of zeros; now a 2 GiB hole."""
    stream = tmp_path / "big.bin"
    stream.write_bytes(b"QEVM\0\0\0\3\1\0\0\0\2\3ram\0\0\0\0\0\0\0\4"
                       + ((2 << 30) | 4).to_bytes(8, "big") + b"\3ram" + (2 << 30).to_bytes(8, "big")
                       + (0x10).to_bytes(8, "big") + b"\0")
    out = harness("analyze", str(stream), "--extract-ram", str(tmp_path / "ram"))
    assert out.returncode == 0, out.stderr
    written = (tmp_path / "ram" / "ram.bin").stat()
    assert written.st_size == 2 << 30 and written.st_blocks * 512 < 1 << 20
    out = harness("analyze", str(EXAMPLES / "none-m16-pattern.bin"), "--extract-ram",
                  str(tmp_path / "pattern"))
    assert out.returncode == 0, out.stderr
    ram = tmp_path / "pattern" / "ram.bin"
    assert ram.stat().st_size == 16 << 20 and ram.stat().st_blocks * 512 < 1 << 20
    data = ram.read_bytes()
    assert data[0x10000:0x14000] == pattern_bytes()
    assert data.count(0) == len(data) - sum(1 for b in pattern_bytes() if b)


def test_missing_file_is_bad_input():
    out = harness("analyze", "no/such/stream.bin")
    assert out.returncode == 2
    assert "no/such/stream.bin: no such file" in out.stderr and "Traceback" not in out.stderr


def test_shipped_examples_are_what_the_encoder_writes():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import make_streams
    finally:
        sys.path.pop(0)
    for name, data in make_streams.examples().items():
        assert (EXAMPLES / name).read_bytes() == data, name


@pytest.mark.parametrize("name", ["none-m16-pattern.bin", "postcopy-none-m16.fwd.bin",
                                  "xbzrle-compress.bin"])
def test_examples_decode_in_process(name):
    from harness.analyze import analyze_file

    result = analyze_file(EXAMPLES / name)
    assert result.eof and result.blocks["ram"].used_length == 16 << 20
