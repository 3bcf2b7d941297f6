"""A timing relay between two migration peers: when a requested page comes back.

Strategy: the source connects to the relay instead of the destination; every connection
it accepts (the main one, then, with postcopy-preempt, the preempt channel opened right
after it -- fact P2) is connected to the destination in the same order (the destination
tells the channels apart by order only, P3) and pumped both ways by two threads, byte
for byte, nothing changed.  Nothing inside either peer is touched.

Two watchers timestamp bytes as the relay receives them (`time.perf_counter`):
- `ReturnPathWatch` frames the destination -> source bytes of the main connection
  (`be16 type, be16 len, data`, migration/migration.c's return path) and notes the first
  REQ_PAGES / REQ_PAGES_ID for each page (`be64 start, be32 len[, u8 n, idstr]`);
- `PageWatch` looks in the source -> destination bytes of every connection for the be64
  word of a RAM record of a page still awaited (offset | PAGE or ZERO, with or without
  CONTINUE: migration/ram.c's RAM_SAVE_FLAG_*), so a page counts wherever it came --
  the preempt channel (bare records, P4) or the main stream (inside ram sections).  It is
  a search for those 8 bytes, not a parse of the stream: a page whose content held the
  very word would be taken for its record (the real guest's pages hold small counters).

What one latency is: from a request's bytes reaching the relay to the first record of
that page reaching it afterwards -- the source's work and one round trip through the
relay, not the destination's fault, its request's way to the relay, nor the placing.  A
request for a page whose record had passed the relay already (it was in flight toward
the destination, pushed in the background) is counted in `early`, not timed.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Self

import numpy as np

from harness.protocol.constants import RP_MAX_LEN, RamFlag, RpMsg

PAGE = 4096
RP_HEADER = struct.Struct(">HH")
CHUNK = 1 << 16
_FLAG_BYTES = np.array([RamFlag.PAGE, RamFlag.PAGE | RamFlag.CONTINUE, RamFlag.ZERO,
                        RamFlag.ZERO | RamFlag.CONTINUE], dtype=np.uint8)


@dataclass
class Tap:
    """Awaited pages (offset -> when asked) and the latencies seen, shared by the pumps."""

    pending: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # microseconds
    requests: int = 0
    early: int = 0  # requests for a page whose record had passed the relay already
    passed: set[int] = field(default_factory=set)  # offsets whose record passed
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def asked(self, offset: int, when: float) -> None:
        with self.lock:
            self.requests += 1
            if offset in self.passed:  # in flight toward the destination: not timed here
                self.early += 1
            else:
                self.pending.setdefault(offset, when)

    def arrived(self, offset: int, when: float) -> None:
        with self.lock:
            self.passed.add(offset)
            asked = self.pending.pop(offset, None)
            if asked is not None and when < asked:  # read before the request was: early
                self.early += 1
            elif asked is not None:
                self.latencies.append((when - asked) * 1e6)

    def microseconds(self) -> np.ndarray:
        with self.lock:
            return np.array(self.latencies, dtype=np.float64)


class ReturnPathWatch:
    """Frames destination -> source bytes; notes every page request in `tap`."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.buf = bytearray()
        self.lost = False

    def feed(self, data: bytes, when: float) -> None:
        if self.lost:
            return
        self.buf += data
        while len(self.buf) >= RP_HEADER.size:
            kind, length = RP_HEADER.unpack_from(self.buf)
            if kind == RpMsg.RECV_BITMAP or length > RP_MAX_LEN:  # a recovery's bitmap
                self.tap.problems.append(f"return path: message {kind} len {length}: "
                                         "stopped reading requests")
                self.lost = True
                return
            if len(self.buf) < RP_HEADER.size + length:
                return
            body = bytes(self.buf[RP_HEADER.size:RP_HEADER.size + length])
            del self.buf[:RP_HEADER.size + length]
            if kind in (RpMsg.REQ_PAGES, RpMsg.REQ_PAGES_ID) and length >= 12:
                start, size = struct.unpack_from(">QI", body)
                for offset in range(start, start + max(size, PAGE), PAGE):
                    self.tap.asked(offset, when)


class PageWatch:
    """Finds the be64 word of an awaited page's record in source -> destination bytes.

    numpy picks the candidates -- 8 bytes whose last byte is a record's flags, whose
    low nibble before it is 0 (the offset is page-aligned) and whose first 3 bytes are 0
    (an offset below 1 TiB) -- and their offsets are looked up among the awaited ones."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.tail = b""  # the last 7 bytes, so a word split between two reads is found

    def feed(self, data: bytes, when: float) -> None:
        window = np.frombuffer(self.tail + data, dtype=np.uint8)
        self.tail = bytes(window[-7:])
        if window.size < 8:
            return
        last = window[7:]
        hit = np.isin(last, _FLAG_BYTES) & ((window[6:-1] & 0x0F) == 0)
        hit &= (window[:-7] == 0) & (window[1:-6] == 0) & (window[2:-5] == 0)
        at = np.flatnonzero(hit)
        if not at.size:
            return
        words = np.zeros(at.size, dtype=np.uint64)
        for k in range(8):
            words = (words << np.uint64(8)) | window[at + k].astype(np.uint64)
        for offset in set((words & ~np.uint64(PAGE - 1)).tolist()):
            self.tap.arrived(offset, when)


class Relay:
    """Listens on 127.0.0.1; relays each accepted connection to `target` (host, port)."""

    def __init__(self, target: tuple[str, int], tap: Tap, timeout: float = 120.0) -> None:
        self.target = target
        self.tap = tap
        self.timeout = timeout
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._accept, name="relay-accept",
                                          daemon=True)

    def __enter__(self) -> Self:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                down, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = socket.create_connection(self.target, timeout=10)
            for sock in (down, up):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._socks.append(sock)
            main = self.connections == 0
            self.connections += 1
            self._pump(down, up, PageWatch(self.tap), f"relay-{self.connections}-down")
            self._pump(up, down, ReturnPathWatch(self.tap) if main else None,
                       f"relay-{self.connections}-up")

    def _pump(self, src: socket.socket, dst: socket.socket,
              watch: PageWatch | ReturnPathWatch | None, name: str) -> None:
        def run() -> None:
            try:
                while data := src.recv(CHUNK):
                    when = time.perf_counter()
                    if watch is not None:
                        watch.feed(data, when)
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._accepter.join(5)
        for sock in self._socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        for sock in self._socks:
            sock.close()
