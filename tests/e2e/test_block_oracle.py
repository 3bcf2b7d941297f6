"""The disks oracle is itself tested: a chunk's data has no checksum, so a byte the proxy
corrupts inside a BLOCK_CHUNK loads without complaint -- only disks-identical can see it,
and it must name the very byte (and sector) the proxy changed."""

from __future__ import annotations

from tests.e2e.test_scenarios import run

CORRUPT = """\
name: block-oracle
seed: 12
timeout: 60s
guest: {memory: 16MiB, fill: 0.5, disks: [{name: d0, size: 8MiB, fill: 1.0}]}
capabilities: {block: true}
parameters: {max-bandwidth: 64MiB}
steps:
  - on: {frame: BLOCK_CHUNK, count: 2}
    fault: {kind: net.corrupt, frame: BLOCK_CHUNK, where: payload}
expect: {source: completed, destination: completed, memory: identical, disks: identical}
"""
CHUNK_HEADER = 8 + 1 + len("d0")  # be64 sector|flags, u8 length, the device name


def test_a_corrupted_chunk_fails_disks_identical_naming_that_byte(tmp_path):
    path = tmp_path / "oracle.yaml"
    path.write_text(CORRUPT)
    code, report, output = run(path, tmp=tmp_path)
    assert code == 1, output
    [sc] = report["scenarios"]
    checks = {i["name"]: i for i in sc["invariants"]}
    assert [name for name, i in checks.items() if not i["ok"]] == ["disks-identical"]
    [fault] = sc["faults"]
    detail = fault["detail"]["detail"]  # the proxy's own record of what it changed
    assert fault["kind"] == "net.corrupt" and detail["old"] != detail["new"]
    # the proxy framed it: a chunk record is its header then 1 MiB of data
    assert detail["frame-end"] - detail["frame-start"] == CHUNK_HEADER + (1 << 20)
    byte = detail["offset"] - detail["frame-start"] - CHUNK_HEADER
    chunk = 2  # the fault was armed at the 2nd chunk: it hit the next one, chunk 2
    at = (chunk << 20) + byte
    assert checks["disks-identical"]["detail"] == (
        f"d0: 1 of 8 1 MiB chunks differ; the first differing sector is {at // 512} "
        f"(chunk {chunk}, byte 0x{at:x})")
