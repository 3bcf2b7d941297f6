"""The proxy's recording (harness/faults/recording.py): new 0600 files, never written over."""

from __future__ import annotations

import pytest

from harness.faults.framing import MAIN, RETURN_PATH
from harness.faults.recording import Recording


def test_both_flows_are_kept_in_new_private_files(tmp_path):
    recording = Recording(tmp_path)
    recording.write(MAIN, b"QEVM")
    recording.write(MAIN, memoryview(b"\x00\x00\x00\x03"))
    recording.write(RETURN_PATH, b"\x00\x02")
    recording.close()
    recording.close()  # idempotent
    assert (tmp_path / "stream.fwd.bin").read_bytes() == b"QEVM\x00\x00\x00\x03"
    assert (tmp_path / "stream.rp.bin").read_bytes() == b"\x00\x02"
    assert (tmp_path / "stream.fwd.bin").stat().st_mode & 0o777 == 0o600


def test_an_existing_recording_is_never_written_over(tmp_path):
    (tmp_path / "stream.rp.bin").write_bytes(b"keep me")
    with pytest.raises(ValueError, match="stream.rp.bin exists already"):
        Recording(tmp_path)
    assert (tmp_path / "stream.rp.bin").read_bytes() == b"keep me"
    assert not (tmp_path / "stream.fwd.bin").exists()  # the half it had made is gone
    with pytest.raises(ValueError, match="not a directory"):
        Recording(tmp_path / "absent")
