"""The compiled page framing (harness._send) against its Python twin, byte for byte.

Random batches -- pages that are zero, random, zero but for one byte (anywhere, or in
the last word), zero in the first word only; in any order, repeated, in runs; of two blocks so
that the block switches and CONTINUE is set or not; with the zero pages found by the saver
or told by the caller (holes: trusted, even when wrong) -- are framed by a `RamSaver` with
the compiled module and by one with `native=None` (the twin).  The bytes, the counters
(zero, normal pages) and the last block must be the same, framed into a bytearray, into a
`FrameBuffer`, and gathered (`FrameBuffer(gather=True)`) then sent with iovecs straight
from RAM over a real socket pair (partial sends under a deadline included) and a pipe, or
copied in by `view()`.  The comparisons import the build directly, so they also run in
CI's pass with HARNESS_NO_EXTENSIONS=1; they skip only when it is not built.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.protocol.ram_saver import FrameBuffer, RamSaver
from harness.transport.channel import FdChannel, SocketChannel
from tests.conftest import REPO

pytestmark = pytest.mark.codec

PAGE = 4096
PAGES = 48  # per block
BLOCKS = ("pc.ram", "vga.vram")


def _compiled():
    """harness._send if it is built from the current send.c, else None."""
    try:
        module = importlib.import_module("harness._send")
    except ImportError:
        return None
    digest = hashlib.sha256((REPO / "harness" / "csrc" / "send.c").read_bytes()).hexdigest()
    return module if getattr(module, "SOURCE_HASH", None) == digest else None


SEND = _compiled()
needs_build = pytest.mark.skipif(SEND is None, reason="harness._send is not built from the "
                                 "current send.c (python setup.py build_ext --inplace)")

KINDS = st.sampled_from(["zero", "random", "one-byte", "last-byte", "first-word-zero"])


def _ram(kinds: list[str], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mem = np.zeros(len(kinds) * PAGE, dtype=np.uint8)
    for i, kind in enumerate(kinds):
        page = mem[i * PAGE:(i + 1) * PAGE]
        if kind == "random":
            page[:] = rng.integers(1, 256, PAGE, dtype=np.uint8)
        elif kind == "one-byte":
            page[int(rng.integers(0, PAGE))] = int(rng.integers(1, 256))
        elif kind == "last-byte":
            page[PAGE - 1 - int(rng.integers(0, 9))] = int(rng.integers(1, 256))
        elif kind == "first-word-zero":
            page[8:] = rng.integers(0, 256, PAGE - 8, dtype=np.uint8)
            page[-1] = 1
    return mem


def _batch():
    pages = st.one_of(
        st.lists(st.integers(0, PAGES - 1), min_size=0, max_size=40),
        st.tuples(st.integers(0, PAGES - 1), st.integers(1, PAGES)).map(
            lambda t: list(range(t[0], min(PAGES, t[0] + t[1])))))
    told = st.one_of(st.none(), st.integers(0, 2**32 - 1))  # seed of caller-told zero flags
    return st.tuples(st.sampled_from(BLOCKS), pages, told)


RAMS = st.tuples(st.lists(KINDS, min_size=PAGES, max_size=PAGES),
                 st.lists(KINDS, min_size=PAGES, max_size=PAGES), st.integers(0, 1000))


def _told(seed: int | None, n: int) -> np.ndarray | None:
    if seed is None:
        return None
    return np.random.default_rng(seed).integers(0, 2, n).astype(bool)


def _frame_all(saver: RamSaver, rams: dict[str, np.ndarray], batches, out_kind: str):
    """Frame every batch; (bytes of each batch, counters of each, last block)."""
    counters = []
    chunks = []
    for block, pages, told in batches:
        idx = np.asarray(pages, dtype=np.intp)
        out = bytearray() if out_kind == "bytearray" else FrameBuffer(64)
        counters.append(saver.save_pages(out, block, rams[block], idx, _told(told, idx.size)))
        chunks.append(bytes(out) if isinstance(out, bytearray) else bytes(out.view()))
    return chunks, counters, saver.last_block


@needs_build
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rams=RAMS, batches=st.lists(_batch(), min_size=1, max_size=6),
       out_kind=st.sampled_from(["bytearray", "framebuffer"]))
def test_compiled_framing_equals_the_twin(rams, batches, out_kind) -> None:
    kinds_a, kinds_b, seed = rams
    ram = {BLOCKS[0]: _ram(kinds_a, seed), BLOCKS[1]: _ram(kinds_b, seed + 1)}
    ours = _frame_all(RamSaver(native=SEND), ram, batches, out_kind)
    twin = _frame_all(RamSaver(native=None), ram, batches, out_kind)
    assert ours == twin


def _read_all(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(1 << 16):
        into += chunk


@needs_build
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rams=RAMS, batches=st.lists(_batch(), min_size=1, max_size=5),
       deadline=st.booleans(), pipe=st.booleans())
def test_gathered_records_sent_from_ram_equal_the_twin(rams, batches, deadline, pipe) -> None:
    """FrameBuffer(gather=True) + send_to over a socket pair (sendmsg) or a pipe (writev):
    the twin's bytes, also when the fd takes a part of a batch at a time (small buffers;
    a deadline: MSG_DONTWAIT and poll), with flat bytes before and after in order."""
    kinds_a, kinds_b, seed = rams
    ram = {BLOCKS[0]: _ram(kinds_a, seed), BLOCKS[1]: _ram(kinds_b, seed + 1)}
    chunks, twin_counts, twin_last = _frame_all(RamSaver(native=None), ram, batches,
                                                "bytearray")
    got = bytearray()
    if pipe:
        rfd, wfd = os.pipe()
        source = os.fdopen(rfd, "rb", buffering=0)
        channel = FdChannel("test", read_fd=None, write_fd=wfd)
    else:
        a, source = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        channel = SocketChannel(a, "test")
    reader = threading.Thread(target=_read_all, args=(source, got))
    reader.start()
    try:
        if deadline:
            channel.set_timeout(10.0)
        saver, counts = RamSaver(native=SEND), []
        for block, pages, told in batches:
            frame = FrameBuffer(64, gather=True)
            frame.put(b"<")
            idx = np.asarray(pages, dtype=np.intp)
            counts.append(saver.save_pages(frame, block, ram[block], idx, _told(told, idx.size)))
            frame.put(b">")
            expected = len(frame)
            frame.send_to(channel)
            assert len(frame) == expected
    finally:
        channel.close()  # EOF for the reader
        reader.join(timeout=30)
        source.close()
    assert not reader.is_alive()
    assert counts == twin_counts and saver.last_block == twin_last
    assert bytes(got) == b"".join(b"<" + chunk + b">" for chunk in chunks)


def _read_all(source, into: bytearray) -> None:
    read = source.recv if isinstance(source, socket.socket) else source.read
    while chunk := read(1 << 16):
        into += chunk


@needs_build
def test_gathered_records_copied_in_by_view() -> None:
    """A gathering buffer read with view() holds the twin's bytes (the records copied in
    among the flat bytes), and is flat afterwards."""
    mem = _ram(["random", "zero", "one-byte", "zero", "random"] * 4, 3)
    pages = np.array([4, 0, 1, 2, 3, 7, 8, 9], dtype=np.intp)
    twin = bytearray(b"head")
    RamSaver(native=None).save_pages(twin, "pc.ram", mem, pages)
    RamSaver(native=None).save_pages(twin, "pc.ram", mem, pages[::-1].copy())
    frame = FrameBuffer(16, gather=True)
    frame.put(b"head")
    saver = RamSaver(native=SEND)
    saver.save_pages(frame, "pc.ram", mem, pages)
    saver.last_block = None
    saver.save_pages(frame, "pc.ram", mem, pages[::-1].copy())
    size = len(frame)
    assert bytes(frame.view()) == bytes(twin) and len(frame) == size == len(twin)
    frame.clear()
    assert len(frame) == 0 and bytes(frame.view()) == b""


@needs_build
def test_bad_arguments_are_refused_before_any_byte() -> None:
    mem = np.zeros(4 * PAGE, dtype=np.uint8)
    flags = np.zeros(2, dtype=np.uint8)
    with pytest.raises(IndexError, match="page 4 outside RAM of 4 pages"):
        SEND.classify(mem, np.array([0, 4], dtype=np.int64), flags)
    with pytest.raises(IndexError, match="page -1"):
        SEND.classify(mem, np.array([0, -1], dtype=np.int64), flags)
    with pytest.raises(ValueError, match="zero flags: 2 for 3 pages"):
        SEND.classify(mem, np.array([0, 1, 2], dtype=np.int64), flags)
    with pytest.raises(TypeError, match="64-bit ints"):
        SEND.classify(mem, np.array([0, 1], dtype=np.int32), flags)
    out = bytearray(20)
    with pytest.raises(ValueError, match="do not fit"):
        SEND.frame(out, 0, mem, np.array([0, 1], dtype=np.int64), flags, None)
    assert out == bytearray(20)
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        SEND.frame(bytearray(9000), 0, mem, np.array([0], dtype=np.int64),
                   np.zeros(1, dtype=np.uint8), b"x" * 256)
    with pytest.raises(ValueError, match="resume at 18 of 18"):
        SEND.send(-1, 0, mem, np.array([0, 1], dtype=np.int64), np.ones(2, dtype=np.uint8),
                  None, 18)


@needs_build
def test_a_hole_is_trusted_and_not_read() -> None:
    """A page the caller says is zero (a hole: reading it would allocate it) goes as a
    ZERO record without being read, even when it is not zero; the others are tested."""
    mem = _ram(["random", "zero", "random"], 1)
    flags = np.array([1, 0, 0], dtype=np.uint8)
    assert SEND.classify(mem, np.array([0, 1, 2], dtype=np.int64), flags) == 2
    assert flags.tolist() == [1, 1, 0]


@needs_build
@pytest.mark.parametrize("deadline", [None, 30.0])
def test_a_gathered_send_blocked_on_a_full_socket_ends_at_shutdown(deadline) -> None:
    """migrate_cancel: a gathered send the peer does not read ends with ChannelClosed when
    another thread shuts the channel down (blocked in the kernel or in poll)."""
    from harness.transport.errors import ChannelClosed

    pages = 8192  # 32 MiB: more than the socket pair holds (the channel asks for 4 MiB)
    mem = np.random.default_rng(5).integers(1, 256, pages * PAGE, dtype=np.uint8)
    a, b = socket.socketpair()
    channel = SocketChannel(a, "test")
    channel.set_timeout(deadline)
    frame = FrameBuffer(64, gather=True)
    RamSaver(native=SEND).save_pages(frame, "pc.ram", mem, np.arange(pages))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            frame.send_to(channel)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        sender.join(timeout=0.5)
        assert sender.is_alive()  # blocked: nobody reads
        assert 0 < channel.bytes_sent < len(frame)
        channel.shutdown()
        sender.join(timeout=10)
        assert not sender.is_alive()
    finally:
        channel.close()
        b.close()
    assert len(errors) == 1 and isinstance(errors[0], ChannelClosed)
