"""QEMU 7.2 -> QEMU 7.2 postcopy through the bench's timing relay: it sees the requests and
times the pages, with and without postcopy-preempt (a tiny pc guest, a few seconds each)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.bench.qemu_postcopy import qemu_latencies
from tests.qemu_env import QEMU_MARKS, USERFAULTFD_MARK

pytestmark = [*QEMU_MARKS, USERFAULTFD_MARK]
MiB = 1 << 20


@pytest.mark.parametrize("preempt", [False, True], ids=["no-preempt", "preempt"])
def test_relay_times_qemu_page_requests(tmp_path, preempt):
    # a slow push: the source serves most requests itself, so some are timed in every run
    got = qemu_latencies(tmp_path, memory=16 * MiB, push=2 * MiB, preempt=preempt,
                         timeout=30)
    # one connection, or the main one and then the preempt channel (fact P2)
    assert got.connections == (2 if preempt else 1)
    # every request the destination sent crossed the relay and was read as one
    assert got.requests == got.postcopy_requests > 0, got
    assert got.microseconds.size > 0 and np.all(got.microseconds > 0)
    assert got.early + got.microseconds.size <= got.requests
    assert not got.problems
