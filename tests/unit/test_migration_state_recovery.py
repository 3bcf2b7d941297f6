"""The postcopy recovery part of QEMU 7.2's status tables, and the source's bitmap reload."""

from __future__ import annotations

import numpy as np
import pytest

from harness.migration.status import (
    DESTINATION_TRANSITIONS,
    SOURCE_TRANSITIONS,
    IllegalTransition,
    MigrationStatus,
    destination_machine,
    source_machine,
)
from harness.protocol import PostcopyResume, RecvBitmapRequest, StreamDecoder, StreamEncoder
from harness.protocol.return_path import RecvBitmap, ResumeAck, pack_received_bitmap
from source.ram_save import RamSave
from source.recovery import RecoveryInbox, resume_handshake, resume_prepare
from source.return_path import ReturnPathError

S = MigrationStatus
PAGE = 4096


def test_source_table_admits_exactly_the_recovery_transitions():
    assert SOURCE_TRANSITIONS[S.POSTCOPY_ACTIVE] == {S.COMPLETED, S.FAILED, S.CANCELLING,
                                                     S.POSTCOPY_PAUSED}
    assert SOURCE_TRANSITIONS[S.POSTCOPY_PAUSED] == {S.POSTCOPY_RECOVER, S.CANCELLING}
    assert SOURCE_TRANSITIONS[S.POSTCOPY_RECOVER] == {S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED,
                                                      S.CANCELLING}


def test_destination_table_admits_exactly_the_recovery_transitions():
    assert DESTINATION_TRANSITIONS[S.POSTCOPY_ACTIVE] == {S.COMPLETED, S.FAILED,
                                                          S.POSTCOPY_PAUSED}
    assert DESTINATION_TRANSITIONS[S.POSTCOPY_PAUSED] == {S.POSTCOPY_RECOVER}
    assert DESTINATION_TRANSITIONS[S.POSTCOPY_RECOVER] == {S.POSTCOPY_ACTIVE,
                                                           S.POSTCOPY_PAUSED}
    assert S.CANCELLING not in set().union(*DESTINATION_TRANSITIONS.values())


def _walk(machine, *statuses):
    for new in statuses:
        assert machine.move(new), new


def test_source_breaks_twice_recovers_then_completes_or_is_cancelled():
    m = source_machine()
    _walk(m, S.SETUP, S.ACTIVE, S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER,
          S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER, S.POSTCOPY_ACTIVE, S.COMPLETED)
    for where in (S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER):
        m = source_machine()
        _walk(m, S.SETUP, S.ACTIVE, S.POSTCOPY_ACTIVE)
        if where is not S.POSTCOPY_ACTIVE:
            _walk(m, S.POSTCOPY_PAUSED)
        if where is S.POSTCOPY_RECOVER:
            _walk(m, S.POSTCOPY_RECOVER)
        _walk(m, S.CANCELLING, S.CANCELLED)


@pytest.mark.parametrize("machine,old,new", [
    (source_machine, S.POSTCOPY_PAUSED, S.FAILED),  # a pause never fails
    (source_machine, S.POSTCOPY_RECOVER, S.FAILED),
    (source_machine, S.POSTCOPY_PAUSED, S.POSTCOPY_ACTIVE),  # only through recover
    (destination_machine, S.POSTCOPY_PAUSED, S.FAILED),
    (destination_machine, S.POSTCOPY_PAUSED, S.POSTCOPY_ACTIVE),
    (destination_machine, S.POSTCOPY_RECOVER, S.CANCELLING),
])
def test_what_recovery_never_does(machine, old, new):
    m = machine()
    m._status = old
    with pytest.raises(IllegalTransition, match=f"illegal migration status transition "
                                                f"{old} -> {new}$"):
        m.set(old, new)


def _commands(data: bytes) -> list:
    """What a destination reads on a recovered channel (no header, no configuration)."""
    decoder = StreamDecoder(header=False, configuration=False)
    decoder.receive_data(data)
    return decoder.events()


def _ram(pages: int = 100) -> RamSave:
    mem = np.arange(pages * PAGE, dtype=np.uint64).astype(np.uint8)
    return RamSave({"ram": mem}, dict)


def test_bitmap_reload_makes_dirty_the_complement_of_received():
    ram = _ram(100)
    received = np.zeros(100, dtype=bool)
    received[[0, 5, 6, 99]] = True
    assert ram.received_bitmap_size("ram") == 16  # 100 bits in two 64-bit words
    assert ram.reload_received("ram", received) == 96
    assert not ram.block("ram").bitmap[[0, 5, 6, 99]].any()
    assert ram.block("ram").bitmap[[1, 4, 7, 98]].all()


class _Inbox(RecoveryInbox):
    def __init__(self, messages) -> None:
        super().__init__(timeout=0.1)
        for message in messages:
            self.put(message)


def _why() -> str:
    return "return path ended"


def test_resume_prepare_asks_per_block_and_reloads_from_the_answer():
    ram = _ram(100)
    received = np.ones(100, dtype=bool)
    received[7] = False
    sent: list[bytes] = []
    inbox = _Inbox([RecvBitmap("ram", pack_received_bitmap(received))])
    resume_prepare(sent.append, StreamEncoder(), ram, inbox, _why)
    [command] = _commands(b"".join(sent))
    assert command == RecvBitmapRequest("ram", offset=0)
    assert np.flatnonzero(ram.block("ram").bitmap).tolist() == [7]


@pytest.mark.parametrize("answer,error", [
    (RecvBitmap("rom", bytes(16)), "migrate_handle_rp_recv_bitmap: invalid block name 'rom'"),
    (RecvBitmap("ram", bytes(8)),
     "ram_dirty_bitmap_reload: ramblock 'ram' bitmap size mismatch (0x8 != 0x10)"),
])
def test_resume_prepare_refuses_bad_bitmaps_in_qemus_words(answer, error):
    with pytest.raises(ReturnPathError, match=f"^{error.replace('(', '.').replace(')', '.')}$"):
        resume_prepare(lambda data: None, StreamEncoder(), _ram(100), _Inbox([answer]), _why)


def test_the_handshake_needs_resume_ack_1_and_every_wait_ends():
    sent: list[bytes] = []
    resume_handshake(sent.append, StreamEncoder(), _Inbox([ResumeAck(1)]), _why)
    assert _commands(b"".join(sent)) == [PostcopyResume(offset=0)]
    with pytest.raises(ReturnPathError, match="^migrate_handle_rp_resume_ack: illegal "
                                              "resume_ack value 2$"):
        resume_handshake(sent.append, StreamEncoder(), _Inbox([ResumeAck(2)]), _why)
    closed = _Inbox([])
    closed.close()
    with pytest.raises(ConnectionAbortedError, match="^return path ended$"):
        resume_handshake(sent.append, StreamEncoder(), closed, _why)
    with pytest.raises(TimeoutError):
        resume_handshake(sent.append, StreamEncoder(), _Inbox([]), _why)
