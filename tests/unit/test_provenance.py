"""The reports' provenance: each fact from its source, null when it cannot be had."""

from __future__ import annotations

import platform
import socket

import pytest

from harness import __version__
from harness.qemu.launch import find_qemu
from harness.report import provenance as prov


def test_without_a_qemu_peer_no_qemu_version_is_asked() -> None:
    facts = prov.provenance(["harness", "harness"])
    assert facts["harness-version"] == __version__
    assert facts["hostname"] == socket.gethostname()
    assert facts["kernel"] == platform.release()
    assert facts["qemu-version"] is None


@pytest.mark.skipif(find_qemu() is None, reason="qemu-system-x86_64 is not installed")
def test_with_a_qemu_peer_the_qemu_version_is_the_binarys() -> None:
    assert prov.provenance(["harness", "qemu"])["qemu-version"].startswith(
        "QEMU emulator version ")


def test_a_fact_that_cannot_be_had_is_null(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harness.qemu.launch.find_qemu", lambda: "/nonexistent/qemu")
    assert prov.qemu_version() is None
    assert prov._first_line(["false"]) is None
