"""The source's block migration (source/block_save.py) without sockets: what its sections
carry, decoded back by the stream decoder, and `migrate`'s blk/inc as QEMU 7.2's
migrate_prepare treats them (B1)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.migration.config import MigrationConfig
from harness.protocol import StreamEncoder
from harness.protocol.block import CHUNK, BlockChunk, BlockProgress
from harness.protocol.decoder import StreamDecoder
from harness.protocol.events import RamBlockInfo
from source.block_save import (
    INCOMPATIBLE,
    BlockSave,
    apply_migrate_options,
    remove_migrate_options,
)


def _disk(chunks: int, zero: set[int]) -> np.ndarray:
    disk = np.random.default_rng(3).integers(1, 256, chunks * CHUNK, dtype=np.uint8)
    for index in zero:
        disk[index * CHUNK:(index + 1) * CHUNK] = 0
    return disk


@pytest.mark.parametrize("zero_blocks", [False, True])
def test_bulk_then_completion_rebuilds_the_disk(zero_blocks: bool) -> None:
    disk = _disk(4, zero={1})
    save = BlockSave({"d0": disk}, zero_blocks=zero_blocks)
    enc, out = StreamEncoder(), bytearray()
    out += enc.header() + enc.configuration("none") + save.setup_section(enc)
    out += enc.ram_start(2, [RamBlockInfo("ram", 1 << 20)])
    sent = iter([False, True])  # the first PART sends one chunk, then the rate limit
    save.iterate(enc, out.extend, lambda: next(sent))
    assert save.bulk_active and save.query()["transferred"] == CHUNK
    save.complete(enc, out.extend)  # the rest of the bulk goes in END
    out += enc.eof()
    target = np.full(disk.size, 0x55, dtype=np.uint8)
    decoder = StreamDecoder(disks={"d0": target})
    decoder.receive_data(bytes(out))
    decoder.receive_data(b"")
    events = decoder.events()
    assert np.array_equal(target, disk)
    chunks = [e for e in events if isinstance(e, BlockChunk)]
    assert [(c.sector, c.zero) for c in chunks] == [
        (0, False), (2048, zero_blocks), (4096, False), (6144, False)]
    assert [e.percent for e in events if isinstance(e, BlockProgress)] == [0, 25, 50, 75, 100]
    assert save.stats() == {"total": 4 * CHUNK, "chunks": 4 - zero_blocks,
                            "zero-chunks": int(zero_blocks), "dirty-chunks": 0}


def test_chunks_written_after_they_were_sent_go_again() -> None:
    """The dirty phase: a chunk marked after the bulk read it goes in a later PART; one
    marked while the guest stops goes in END; the destination ends with the last data."""
    import threading
    from types import SimpleNamespace

    disk = _disk(3, zero=set())
    writer = SimpleNamespace(lock=threading.Lock(), dirty={"d0": np.ones(3, dtype=bool)})
    save = BlockSave({"d0": disk}, zero_blocks=False, writer=writer)  # type: ignore[arg-type]
    enc, out = StreamEncoder(), bytearray()
    out += enc.header() + enc.configuration("none") + save.setup_section(enc)
    assert not writer.dirty["d0"].any()  # dirty tracking starts at setup
    out += enc.ram_start(2, [RamBlockInfo("ram", 1 << 20)])
    save.iterate(enc, out.extend, lambda: False)  # the whole bulk, then nothing marked
    assert not save.bulk_active and save.pending() == 0
    disk[CHUNK + 5] ^= 0xFF  # the guest writes chunk 1 ...
    writer.dirty["d0"][1] = True
    assert save.pending() == CHUNK
    save.iterate(enc, out.extend, lambda: False)  # ... which goes again
    disk[2 * CHUNK] ^= 0xFF  # a write just before the stop: END carries it
    writer.dirty["d0"][2] = True
    save.complete(enc, out.extend)
    out += enc.eof()
    target = np.zeros(disk.size, dtype=np.uint8)
    decoder = StreamDecoder(disks={"d0": target})
    decoder.receive_data(bytes(out))
    decoder.receive_data(b"")
    sectors = [e.sector for e in decoder.events() if isinstance(e, BlockChunk)]
    assert sectors == [0, 2048, 4096, 2048, 4096]
    assert np.array_equal(target, disk) and save.stats()["dirty-chunks"] == 2


def test_blk_inc_for_one_migration_and_the_mixing_error() -> None:
    config = MigrationConfig.default()
    assert apply_migrate_options(config, blk=False, inc=True)
    assert config.cap("block") and config.param("block-incremental")
    remove_migrate_options(config)
    assert not config.cap("block") and not config.param("block-incremental")
    config.set_capabilities([{"capability": "block", "state": True}], running=False)
    assert not apply_migrate_options(config, blk=False, inc=False)
    with pytest.raises(ValueError, match=INCOMPATIBLE):
        apply_migrate_options(config, blk=True, inc=False)
    config.set_capabilities([{"capability": "postcopy-ram", "state": True}], running=False)
    with pytest.raises(ValueError, match="is not implemented by the harness peer"):
        apply_migrate_options(config, blk=False, inc=False)


def test_the_monitor_prints_qemus_block_progress_while_disks_migrate() -> None:
    """hmp_migrate_status_cb: with query-migrate's `disk`, "Completed N %" is the share of
    the disks read (100 once nothing remains); without it, the RAM figure as before."""
    from harness.monitor.hmp import progress_line

    disk = {"total": 16 << 20, "transferred": 6 << 20, "remaining": 10 << 20}
    assert progress_line({"status": "active", "disk": disk, "ram": {"total": 4096}}) == (
        "Completed 37 % (active, block migration, 10240 kbytes of disk remaining)")
    done = {**disk, "transferred": 16 << 20, "remaining": 0}
    assert progress_line({"status": "active", "disk": done}).startswith("Completed 100 % ")
    assert progress_line({"status": "active", "ram": {"total": 8192, "remaining": 4096}}) \
        .startswith("Completed 50 % (active, 4 kbytes remaining")
