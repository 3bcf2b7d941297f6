"""postcopy-preempt's capability checks, asked over QMP of a real peer process: a harness
destination (`python -m harness destination --qmp`) and, where installed, a real QEMU 7.2
with the same QMP client, so the two replies are compared word for word.

7.2's messages (migration/migration.c: migrate_caps_check): "Postcopy preempt requires
postcopy-ram" and "Postcopy preempt not compatible with compress".  The multi-channel
check (postcopy-ram.c: postcopy_preempt_setup) is a source's; a 7.2 destination given
exec: with preempt accepts `migrate-incoming` and then waits for a second channel that
cannot come (query-migrate stays {}): the harness destination refuses a single-channel
URI with 7.2's words instead (shown with fd: -- exec: needs --allow-exec on a harness
peer -- beside QEMU's silence on exec:).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.migration.config import PREEMPT_NEEDS_MULTI_CHANNELS
from harness.qemu import QemuProcess, QMPError, find_qemu
from harness.qemu.qmp import QMPClient
from tests.e2e.test_qmp_socket import _short_dir, _start, _stop
from tests.qemu_env import COMMON, NO_QEMU

pytestmark = pytest.mark.timeout(120)

REFUSALS = [
    (["postcopy-preempt"], "Postcopy preempt requires postcopy-ram"),
    (["postcopy-ram", "postcopy-preempt", "compress"],
     "Postcopy preempt not compatible with compress"),
]
KINDS = ["harness", pytest.param("qemu", marks=[
    pytest.mark.qemu, pytest.mark.skipif(find_qemu() is None, reason=NO_QEMU)])]


def _caps(names: list[str]) -> dict[str, Any]:
    return {"capabilities": [{"capability": n, "state": True} for n in names]}


@pytest.fixture(params=KINDS)
def destination(request, tmp_path: Path) -> Iterator[tuple[str, QMPClient]]:
    """A deferred destination's QMP (negotiated): a harness peer or a real QEMU."""
    if request.param == "qemu":
        qemu = QemuProcess([*COMMON, "-incoming", "defer"], tmp_path, name="dst")
        try:
            qemu.start()
            yield "qemu", qemu.qmp
        finally:
            qemu.close()
        return
    sockdir = _short_dir()
    peer = _start("destination", sockdir)
    try:
        client = QMPClient.connect(peer.qmp_path)
        client.negotiate()
        try:
            yield "harness", client
        finally:
            client.close()
    finally:
        _stop(peer)
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize(("names", "words"), REFUSALS)
def test_capability_refusals_in_72s_words(destination, names, words):
    _, qmp = destination
    with pytest.raises(QMPError) as err:
        qmp.execute("migrate-set-capabilities", _caps(names))
    assert (err.value.error_class, err.value.desc) == ("GenericError", words)
    states = {c["capability"]: c["state"] for c in qmp.execute("query-migrate-capabilities")}
    assert states["postcopy-preempt"] is False  # nothing of a refused set was applied


def test_preempt_with_postcopy_ram_is_accepted_and_a_single_channel_uri_refused(
        destination):
    kind, qmp = destination
    qmp.execute("migrate-set-capabilities", _caps(["postcopy-ram", "postcopy-preempt"]))
    states = {c["capability"]: c["state"] for c in qmp.execute("query-migrate-capabilities")}
    assert states["postcopy-preempt"] is True
    if kind == "qemu":  # 7.2 accepts it and waits for a channel that cannot come
        assert qmp.execute("migrate-incoming", {"uri": "exec:cat /dev/null"}) == {}
        time.sleep(0.3)
        assert qmp.execute("query-migrate") == {}
        return
    with pytest.raises(QMPError) as err:  # (exec: needs --allow-exec on a harness peer)
        qmp.execute("migrate-incoming", {"uri": "fd:mig"})
    assert err.value.desc == PREEMPT_NEEDS_MULTI_CHANNELS
    assert qmp.execute("query-migrate") == {}
