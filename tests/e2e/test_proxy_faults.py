"""The proxy on real sockets: pass-through, every network fault, and wire triggers.

A `Proxy` object (the same one `harness proxy` runs) between a source socket and a
destination socket of the test, over TCP and unix sockets.  Streams are made with the
codec; what the far end reads is compared byte for byte, or decoded.  Every socket has a
timeout, the proxy is closed and its threads checked gone after each test, timing
assertions are generous lower bounds only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.faults.proxy import Proxy
from harness.protocol import (
    PackagedStart,
    Pong,
    PostcopyResume,
    RamBlockInfo,
    RamFlag,
    RamPages,
    RecvBitmapRequest,
    ReqPages,
    ReqPagesId,
    ReturnPathDecoder,
    SectionType,
    StreamEncoder,
    decode_all,
    encode_command,
    encode_rp,
)
from harness.protocol.commands import Packaged, PostcopyRun
from harness.protocol.savevm import PausedStream
from harness.runner.peers import short_dir
from tests.unit.test_roundtrip import COMPOSITE

PAGE = 4096
WAIT = 10.0  # s: the deadline of every wait in these tests


def paused_stream(pages: int = 64, seed: int = 1) -> tuple[bytes, np.ndarray]:
    ram = np.frombuffer(np.random.default_rng(seed).bytes(pages * PAGE), np.uint8).copy()
    ram[4 * PAGE:6 * PAGE] = 0
    return PausedStream(ram={"ram": ram}).encode(), ram


@dataclass
class Link:
    """A proxy between a source end and a destination end, both owned by the test."""

    proxy: Proxy
    server: socket.socket
    server_path: str | None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def connect(self) -> tuple[socket.socket, socket.socket]:
        """A new connection through the proxy: (the source's end, the destination's end)."""
        address = self.proxy.address
        if address.startswith("unix:"):
            source = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            source.settimeout(WAIT)
            source.connect(address.removeprefix("unix:"))
        else:
            host, _, port = address.removeprefix("tcp:").rpartition(":")
            source = socket.create_connection((host, int(port)), timeout=WAIT)
        self.sockets.append(source)
        destination, _ = self.server.accept()
        destination.settimeout(WAIT)
        self.sockets.append(destination)
        return source, destination

    def event(self, name: str, check: Callable[[dict[str, Any]], bool] = lambda d: True,
              timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for got, data in list(self.events):
                if got == name and check(data):
                    return data
            time.sleep(0.005)
        raise AssertionError(f"no {name} event within {timeout} s: {self.events}")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for got, data in list(self.events) if got == name]


def _listen(transport: str, where: Path) -> tuple[socket.socket, str, str | None]:
    if transport == "unix":
        path = str(where / "dst.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        uri = f"unix:{path}"
    else:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        uri = f"tcp:127.0.0.1:{server.getsockname()[1]}"
        path = None
    server.listen(4)
    server.settimeout(WAIT)
    return server, uri, path


@pytest.fixture
def make_link() -> Iterator[Callable[..., Link]]:
    links: list[Link] = []
    dirs: list[Path] = []

    def make(transport: str = "tcp", **options: Any) -> Link:
        where = short_dir("mhp")
        dirs.append(where)
        server, target, path = _listen(transport, where)
        listen = f"unix:{where}/proxy.sock" if transport == "unix" else "tcp:127.0.0.1:0"
        events: list[tuple[str, dict[str, Any]]] = []
        proxy = Proxy(listen, target, seed=5, emit=lambda n, d: events.append((n, d)),
                      **options)
        link = Link(proxy, server, path, events)
        links.append(link)
        proxy.start()
        return link

    yield make
    for link in links:
        for sock in link.sockets:
            sock.close()
        link.proxy.close()
        link.server.close()
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("proxy")]
    assert not leftover, f"proxy threads still running: {leftover}"
    for where in dirs:
        for path in where.iterdir():
            path.unlink()
        where.rmdir()


def send_in_background(sock: socket.socket, data: bytes, shut: bool = False) -> threading.Thread:
    def send() -> None:
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the fault under test may end the connection

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise AssertionError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def read_to_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 20):
        out += chunk
    return bytes(out)


def nothing_within(sock: socket.socket, seconds: float) -> bool:
    """True when no byte (and no EOF) arrives within `seconds`: the socket is just quiet."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(WAIT)
    return False


def rp_messages(data: bytes) -> list[Any]:
    decoder = ReturnPathDecoder()
    decoder.receive_data(data)
    return decoder.events()


# ------------------------------------------------------------------ pass-through
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_pass_through_is_byte_identical_both_ways(make_link, transport):
    link = make_link(transport)
    stream, _ = paused_stream(pages=2048)  # 8 MiB: many receives, partial records
    back = b"".join(encode_rp(m) for m in [Pong(1), ReqPagesId(0, PAGE, "ram"),
                                           ReqPages(PAGE, PAGE), Pong(2)] * 50)
    source, destination = link.connect()
    sender = send_in_background(source, stream, shut=True)
    replier = send_in_background(destination, back, shut=True)
    assert read_to_eof(destination) == stream
    assert read_to_eof(source) == back
    sender.join(WAIT)
    replier.join(WAIT)
    link.event("SESSION", lambda d: d["event"] == "closed")
    query = link.proxy.query()
    assert query["bytes"]["main"] == {"received": len(stream), "forwarded": len(stream),
                                      "discarded": 0}
    assert query["bytes"]["return-path"]["forwarded"] == len(back)
    assert query["frames"]["main"]["RAM_PAGE"] == 2048
    assert query["frames"]["main"]["VMDESCRIPTION"] == 1
    assert (query["pongs"], query["page-requests"]) == (100, 100)
    assert query["sessions"]["closed"] == 1 and not query["framing-errors"]


# ------------------------------------------------------------------ connection faults
def test_reset_is_a_connection_reset_and_later_connections_pass(make_link):
    link = make_link()
    link.proxy.arm("cut", {"bytes": {"channel": "main", "after": 1000}},
                   {"kind": "net.reset"})
    source, destination = link.connect()
    send_in_background(source, COMPOSITE)
    assert read_exactly(destination, 1000) == COMPOSITE[:1000]
    with pytest.raises(ConnectionResetError):
        destination.recv(1)
    with pytest.raises(ConnectionResetError):
        source.recv(1)
    assert link.event("WIRE")["offset"] == 1000
    assert link.event("FAULT")["kind"] == "net.reset"
    assert link.event("SESSION", lambda d: d["event"] == "closed")["reason"] == "net.reset (cut)"
    source, destination = link.connect()  # recovery reconnects through the proxy
    source.sendall(COMPOSITE)
    assert read_exactly(destination, len(COMPOSITE)) == COMPOSITE


def test_reset_on_unix_sockets_closes_both_ends(make_link):
    link = make_link("unix")
    link.proxy.arm("cut", {"bytes": {"channel": "main", "after": 100}}, {"kind": "net.reset"})
    source, destination = link.connect()
    send_in_background(source, COMPOSITE)
    assert read_to_eof(destination) == COMPOSITE[:100]
    assert source.recv(1) == b""


def test_half_close_gives_eof_one_way_while_the_other_flows(make_link):
    link = make_link()
    link.proxy.arm("half", {"bytes": {"channel": "main", "after": 300}},
                   {"kind": "net.half-close", "channel": "main", "direction": "forward"})
    source, destination = link.connect()
    source.sendall(COMPOSITE)
    assert read_to_eof(destination) == COMPOSITE[:300]
    destination.sendall(encode_rp(Pong(7)))  # the return path still flows
    assert read_exactly(source, 8) == encode_rp(Pong(7))
    source.sendall(b"more")  # read and discarded by the proxy
    link.event("FAULT", lambda d: d["kind"] == "net.half-close")
    deadline = time.monotonic() + WAIT
    while link.proxy.query()["bytes"]["main"]["discarded"] < len(COMPOSITE) - 300 + 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_half_close_both_closes_both_directions_cleanly(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("both", None, {"kind": "net.half-close"})
    assert destination.recv(1) == b""
    assert source.recv(1) == b""


# ------------------------------------------------------------------ shaping faults
def test_blackhole_for_a_duration_holds_then_delivers_everything(make_link):
    link = make_link()
    source, destination = link.connect()
    start = time.monotonic()
    link.proxy.arm("hole", None, {"kind": "net.blackhole", "channel": "main",
                                  "direction": "forward", "duration": 1.5})
    send_in_background(source, COMPOSITE * 10)
    assert nothing_within(destination, 0.5)
    assert read_exactly(destination, len(COMPOSITE) * 10) == COMPOSITE * 10
    assert time.monotonic() - start >= 1.4


def test_blackhole_for_good_never_delivers_and_keeps_the_connection(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("hole", None, {"kind": "net.blackhole", "channel": "main",
                                  "direction": "forward"})
    source.sendall(COMPOSITE)
    assert nothing_within(destination, 1.0)  # no data, and no EOF either
    destination.sendall(encode_rp(Pong(3)))
    assert read_exactly(source, 8) == encode_rp(Pong(3))
    assert link.proxy.query()["bytes"]["main"]["forwarded"] == 0


def test_delay_delivers_late(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("slow", None, {"kind": "net.delay", "delay": 0.4, "channel": "main",
                                  "direction": "forward"})
    start = time.monotonic()
    source.sendall(COMPOSITE)
    assert read_exactly(destination, len(COMPOSITE)) == COMPOSITE
    assert time.monotonic() - start >= 0.35
    fault = link.event("FAULT")
    assert fault["detail"] == {"duration": None, "delay": 0.4} and fault["flow"] == "main"


def test_jitter_keeps_the_order(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("jitter", None, {"kind": "net.jitter", "delay": 0.02, "duration": 5})
    pieces = [bytes([i]) * 997 for i in range(60)]
    for piece in pieces:
        source.sendall(piece)
        time.sleep(0.002)
    assert read_exactly(destination, 60 * 997) == b"".join(pieces)


def test_bandwidth_limits_the_rate(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("thin", None, {"kind": "net.bandwidth", "rate": 256 << 10,
                                  "channel": "main", "direction": "forward"})
    data = np.random.default_rng(3).bytes(384 << 10)
    start = time.monotonic()
    send_in_background(source, data)
    assert read_exactly(destination, len(data)) == data
    assert time.monotonic() - start >= 1.0  # 1.5 s at 256 KiB/s, minus the burst


# ------------------------------------------------------------------ message faults
REQUESTS = [ReqPagesId(0, PAGE, "ram"), ReqPages(PAGE, PAGE), Pong(1), ReqPages(2 * PAGE, PAGE),
            ReqPages(3 * PAGE, PAGE)]


def test_drop_removes_exactly_the_next_req_pages(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("drop", None, {"kind": "net.drop", "message": "REQ_PAGES"})
    data = b"".join(encode_rp(m) for m in REQUESTS)
    destination.sendall(data)
    got = read_exactly(source, len(data) - 16)
    assert rp_messages(got) == [REQUESTS[0], REQUESTS[2], REQUESTS[3], REQUESTS[4]]
    fault = link.event("FAULT")
    assert (fault["flow"], fault["frame"], fault["offset"]) == (
        "return-path", "REQ_PAGES", len(encode_rp(REQUESTS[0])))
    assert link.proxy.query()["bytes"]["return-path"]["discarded"] == 16


def test_duplicate_sends_the_next_message_twice(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("dup", None, {"kind": "net.duplicate", "message": "REQ_PAGES"})
    data = b"".join(encode_rp(m) for m in REQUESTS)
    destination.sendall(data)
    got = read_exactly(source, len(data) + 16)
    assert rp_messages(got) == [REQUESTS[0], REQUESTS[1], REQUESTS[1], *REQUESTS[2:]]


def test_drop_inside_packaged_rewrites_the_package_length(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("norun", None, {"kind": "net.drop", "message": "POSTCOPY_RUN"})
    source.sendall(COMPOSITE)
    source.shutdown(socket.SHUT_WR)
    got = read_to_eof(destination)
    assert len(got) == len(COMPOSITE) - 5
    events = decode_all(got)
    assert not any(isinstance(e, PostcopyRun) for e in events)
    original = next(e for e in decode_all(COMPOSITE) if isinstance(e, Packaged))
    package = next(e for e in events if isinstance(e, Packaged))
    assert package.length == original.length - 5
    assert any(isinstance(e, PackagedStart) for e in events)
    assert link.event("FAULT")["detail"]["packaged"] == original.offset


def test_drop_of_a_command_within_a_window_drops_every_one(make_link):
    link = make_link()
    source, destination = link.connect()
    link.proxy.arm("pings", None, {"kind": "net.drop", "message": "PING", "duration": 30})
    source.sendall(COMPOSITE)
    source.shutdown(socket.SHUT_WR)
    got = read_to_eof(destination)
    assert len(got) == len(COMPOSITE) - 4 * 9
    assert [type(e).__name__ for e in decode_all(got) if type(e).__name__ == "Ping"] == []


# ------------------------------------------------------------------ frame faults
def _page_payloads(stream: bytes) -> list[tuple[int, int]]:
    out = []
    for batch in decode_all(stream, ram="discard"):
        if isinstance(batch, RamPages) and batch.spans is not None:
            for (start, payload, end), kind in zip(batch.spans.tolist(), batch.kinds.tolist(),
                                                   strict=True):
                if kind == RamFlag.PAGE:
                    out.append((payload, end))
    return out


def test_corrupt_changes_one_byte_of_a_page_payload_and_it_still_loads(make_link):
    link = make_link()
    stream, ram = paused_stream()
    after = 20000
    link.proxy.arm("flip", {"bytes": {"channel": "main", "after": after}},
                   {"kind": "net.corrupt"})
    source, destination = link.connect()
    send_in_background(source, stream, shut=True)
    got = read_to_eof(destination)
    assert len(got) == len(stream)
    diff = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(stream, np.uint8))
    assert diff.size == 1
    offset = int(diff[0])
    payload, end = next((p, e) for p, e in _page_payloads(stream) if p - 8 >= after)
    assert payload <= offset < end  # inside the first normal page after the trigger
    fault = link.event("FAULT")
    assert fault["frame"] == "RAM_PAGE" and fault["offset"] == offset
    assert (fault["detail"]["old"], fault["detail"]["new"]) == (stream[offset], got[offset])
    decoder_ram = {"ram": np.zeros_like(ram)}
    decode_all(got, ram=decoder_ram)  # QEMU's format has no checksum: it still loads
    changed = np.flatnonzero((decoder_ram["ram"] != ram).reshape(-1, PAGE).any(axis=1))
    assert changed.size == 1


def test_corrupt_is_the_same_for_the_same_seed(make_link):
    offsets = []
    for _ in range(2):
        link = make_link()
        link.proxy.arm("flip", None, {"kind": "net.corrupt", "frame": "SECTION_FULL"})
        stream, _ = paused_stream(pages=8)
        source, destination = link.connect()
        send_in_background(source, stream, shut=True)
        read_to_eof(destination)
        fault = link.event("FAULT")
        assert fault["frame"] == "SECTION_FULL" and fault["detail"]["where"] == "payload"
        offsets.append((fault["offset"], fault["detail"]["new"]))
    assert offsets[0] == offsets[1]


def test_truncate_ends_the_stream_inside_the_next_page(make_link):
    link = make_link()
    stream, _ = paused_stream()
    link.proxy.arm("cut", None, {"kind": "net.truncate"})
    source, destination = link.connect()
    send_in_background(source, stream)
    got = read_to_eof(destination)
    assert got == stream[:len(got)]
    first = next(b for b in decode_all(stream, ram="discard") if isinstance(b, RamPages))
    assert first.spans is not None
    _, payload, end = first.spans[0].tolist()
    assert len(got) == payload + (end - payload) // 2  # mid-payload of the first page
    assert source.recv(1) == b""  # and the session is closed
    closed = link.event("SESSION", lambda d: d["event"] == "closed")
    assert "net.truncate (cut)" in closed["reason"]


def test_truncate_inside_packaged(make_link):
    link = make_link()
    link.proxy.arm("cut", None, {"kind": "net.truncate", "frame": "PACKAGED"})
    source, destination = link.connect()
    source.sendall(COMPOSITE)
    got = read_to_eof(destination)
    package = next(e for e in decode_all(COMPOSITE) if isinstance(e, Packaged))
    blob = package.offset + 9
    assert blob < len(got) < blob + package.length
    assert got == COMPOSITE[:len(got)]


# ------------------------------------------------------------------ triggers
def test_the_third_pong_holds_both_directions_until_released(make_link):
    link = make_link()
    link.proxy.arm("third", {"event": "pong", "count": 3}, None, hold=True)
    source, destination = link.connect()
    destination.sendall(b"".join(encode_rp(Pong(i)) for i in range(1, 6)))
    assert read_exactly(source, 24) == b"".join(encode_rp(Pong(i)) for i in range(1, 4))
    wire = link.event("WIRE")
    assert (wire["offset"], wire["frame"], wire["count"], wire["held"]) == (24, "PONG", 3, True)
    source.sendall(b"QEVM")
    assert nothing_within(source, 0.3) and nothing_within(destination, 0.3)
    link.proxy.release("third")
    assert read_exactly(source, 16) == encode_rp(Pong(4)) + encode_rp(Pong(5))
    assert read_exactly(destination, 4) == b"QEVM"
    assert link.event("HOLD_RELEASED")["by"] == "x-proxy-release"


def test_postcopy_run_inside_packaged_triggers_at_its_end(make_link):
    link = make_link()
    link.proxy.arm("run", {"command": "POSTCOPY_RUN"}, None, hold=True)
    source, destination = link.connect()
    source.sendall(COMPOSITE)
    package = next(e for e in decode_all(COMPOSITE) if isinstance(e, Packaged))
    end = package.offset + 9 + package.length
    assert read_exactly(destination, end) == COMPOSITE[:end]
    assert nothing_within(destination, 0.3)
    wire = link.event("WIRE")
    assert (wire["frame"], wire["offset"]) == ("POSTCOPY_RUN", end)
    link.proxy.release("run")
    assert read_exactly(destination, len(COMPOSITE) - end) == COMPOSITE[end:]


def test_bytes_after_n_is_exact(make_link):
    link = make_link()
    link.proxy.arm("n", {"bytes": {"channel": "main", "after": 1234}}, None, hold=True)
    source, destination = link.connect()
    source.sendall(COMPOSITE)
    assert read_exactly(destination, 1234) == COMPOSITE[:1234]
    assert nothing_within(destination, 0.3)
    assert link.event("WIRE")["offset"] == 1234
    link.proxy.release("n")
    assert read_exactly(destination, len(COMPOSITE) - 1234) == COMPOSITE[1234:]


def test_a_section_trigger_matches_at_the_end_of_its_header(make_link):
    link = make_link()
    link.proxy.arm("second", {"event": "section", "count": 2}, None, hold=True)
    source, destination = link.connect()
    source.sendall(COMPOSITE)
    wire = link.event("WIRE")
    assert wire["frame"] == "SECTION_PART"
    part = next(e for e in decode_all(COMPOSITE) if getattr(e, "type", None)
                == SectionType.SECTION_PART)
    assert wire["offset"] == part.offset + 5
    assert read_exactly(destination, part.offset + 5) == COMPOSITE[:part.offset + 5]
    assert nothing_within(destination, 0.3)
    link.proxy.release("second")


def test_a_hold_nobody_releases_ends_at_its_deadline(make_link):
    link = make_link(hold_deadline=0.5)
    source, destination = link.connect()
    link.proxy.arm("stuck", None, None, hold=True)
    source.sendall(b"QEVM")
    assert link.event("HOLD_RELEASED")["by"] == "deadline"
    assert read_exactly(destination, 4) == b"QEVM"


def test_a_trigger_fires_with_its_probability_drawn_from_the_seed(make_link):
    link = make_link()
    link.proxy.arm("maybe", {"event": "pong"}, None, probability=0.5)
    source, destination = link.connect()
    destination.sendall(b"".join(encode_rp(Pong(i)) for i in range(1, 41)))
    read_exactly(source, 320)
    wire = link.event("WIRE")
    link2 = make_link()
    link2.proxy.arm("maybe", {"event": "pong"}, None, probability=0.5)
    source2, destination2 = link2.connect()
    destination2.sendall(b"".join(encode_rp(Pong(i)) for i in range(1, 41)))
    read_exactly(source2, 320)
    assert link2.event("WIRE")["count"] == wire["count"]  # the same seed draws the same


# ------------------------------------------------------------------ framing and sessions
def test_lost_framing_passes_bytes_unchanged_and_says_where(make_link):
    link = make_link()
    data = COMPOSITE[:200] + b"\x99" * 64 + COMPOSITE[200:]
    source, destination = link.connect()
    source.sendall(data)
    assert read_exactly(destination, len(data)) == data
    lost = link.event("FRAMING_LOST")
    assert lost["channel"] == "main" and lost["message"].startswith("framing lost at offset ")
    assert link.proxy.query()["framing-errors"] == [lost]


def _recovery_streams() -> tuple[bytes, bytes]:
    enc = StreamEncoder()
    mem = np.frombuffer(np.random.default_rng(4).bytes(16 * PAGE), np.uint8)
    records = bytearray()
    enc.ram.save_pages(records, "ram", mem, range(8))
    first = (enc.header() + enc.configuration("none")
             + enc.ram_start(3, [RamBlockInfo("ram", mem.size)])
             + enc.ram_section(SectionType.SECTION_PART, 3, records))
    enc.ram.reset()
    records = bytearray()
    enc.ram.save_pages(records, "ram", mem, range(8, 16))
    second = (encode_command(RecvBitmapRequest("ram")) + encode_command(PostcopyResume())
              + enc.ram_section(SectionType.SECTION_PART, 3, records)
              + enc.ram_section(SectionType.SECTION_END, 3, b"") + enc.eof())
    return first, second


def test_a_reconnection_continues_the_stream_at_the_new_target(make_link):
    link = make_link()
    first, second = _recovery_streams()
    source, destination = link.connect()
    source.sendall(first)
    assert read_exactly(destination, len(first)) == first
    source.close()
    destination.close()
    link.event("SESSION", lambda d: d["event"] == "closed")
    new_server, target, _ = _listen("tcp", Path("/tmp"))
    try:
        link.proxy.set_target(target)
        link.server, old = new_server, link.server
        old.close()
        link.proxy.arm("resume", {"command": "POSTCOPY_RESUME"}, None)
        source, destination = link.connect()
        source.sendall(second)
        source.shutdown(socket.SHUT_WR)
        assert read_to_eof(destination) == second
        wire = link.event("WIRE")
        assert (wire["session"], wire["offset"]) == (2, len(encode_command(
            RecvBitmapRequest("ram"))) + 5)
        query = link.proxy.query()
        assert not query["framing-errors"]
        assert query["sessions"]["list"][1]["continued"] is True
        assert query["frames"]["main"]["RAM_PAGE"] == 16
    finally:
        new_server.close()


def test_arm_refuses_what_it_cannot_do(make_link):
    link = make_link()
    cases = [
        (("a", None, None), "nothing to do"),
        (("b", {"pass": 2}, None), "a pass trigger is the runner's"),
        (("c", None, {"kind": "net.drop", "message": "REQ_PAGES", "channel": "main",
                      "direction": "forward"}), "REQ_PAGES travels on the return-path"),
        (("d", None, {"kind": "net.corrupt", "frame": "SUBSECTION"}), "SUBSECTION"),
        (("e", None, {"kind": "net.delay"}), "net.delay needs delay:"),
    ]
    for args, words in cases:
        with pytest.raises(ValueError, match=words):
            link.proxy.arm(*args)
    link.proxy.arm("f", {"event": "pong"}, None)
    with pytest.raises(ValueError, match="already used"):
        link.proxy.arm("f", {"event": "pong"}, None)
    with pytest.raises(ValueError, match="no hold 'f' is on"):
        link.proxy.release("f")


def test_a_release_sent_as_soon_as_the_wire_event_arrives_ends_the_hold(make_link):
    """A runner may release a hold the moment WIRE reaches it (across hosts it did, within a
    millisecond): the hold is in place before WIRE is emitted, so that release ends it --
    the stream is not left held until the deadline."""
    link = make_link(hold_deadline=30)
    released: list[dict[str, Any]] = []

    def fast_runner(name: str, data: dict[str, Any]) -> None:
        link.events.append((name, data))
        if name == "WIRE":
            released.append(link.proxy.release(data["id"]))  # ValueError if not held yet
    link.proxy._emit_to = fast_runner
    link.proxy.arm("n", {"bytes": {"channel": "main", "after": 100}}, None, hold=True)
    source, destination = link.connect()
    source.sendall(COMPOSITE)
    assert read_exactly(destination, len(COMPOSITE)) == COMPOSITE  # not held for 30 s
    assert released == [{}] and link.proxy.holds.active == []
    assert link.event("HOLD_RELEASED")["by"] == "x-proxy-release"
