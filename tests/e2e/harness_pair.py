"""A harness source and destination (deferred incoming) as real processes, for e2e tests
that drive both over their control planes; both are closed and checked gone at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.runner.peers import HarnessPeer


@contextmanager
def harness_pair(tmp_path: Path, guest: dict[str, Any]) -> Iterator[tuple[HarnessPeer, HarnessPeer]]:
    dst = HarnessPeer("destination", tmp_path, guest, ["--incoming", "defer"])
    src = HarnessPeer("source", tmp_path, guest)
    try:
        dst.start()
        src.start()
        yield src, dst
    finally:
        for peer in (src, dst):
            peer.close()
            assert not peer.alive()
