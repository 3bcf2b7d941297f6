"""The baseline for page-request latency: a raw request/response round trip.

Strategy: a child process (`python -m harness.bench.rtt tcp|unix ADDRESS`) answers every
24-byte request with a 4104-byte response (a page record: be64 header + 4 KiB) on a
plain blocking socket; the parent times each round trip.  Same sizes as a postcopy page
request and the page that answers it, same two-process setup, no protocol code.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np

REQUEST = 24
RESPONSE = 8 + 4096


def _recv_exact(sock: socket.socket, n: int, buf: bytearray) -> None:
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("peer closed")
        got += k


def serve(kind: str, address: str) -> None:
    family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(("127.0.0.1", int(address)) if kind == "tcp" else address)
        if kind == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(REQUEST)
        page = bytes(RESPONSE)
        try:
            while True:
                _recv_exact(sock, REQUEST, buf)
                sock.sendall(page)
        except ConnectionError:
            return


def round_trips(kind: str, count: int = 3000, warmup: int = 300) -> np.ndarray:
    """Microseconds of `count` request/response round trips with a child process."""
    family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as server:
        if kind == "tcp":
            server.bind(("127.0.0.1", 0))
            address = str(server.getsockname()[1])
        else:
            import tempfile

            address = tempfile.mktemp(prefix="mhrtt", dir="/tmp")
            server.bind(address)
        server.listen(1)
        server.settimeout(30)
        child = subprocess.Popen([sys.executable, "-m", "harness.bench.rtt", kind, address])
        try:
            conn, _ = server.accept()
            with conn:
                if kind == "tcp":
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(30)
                request = bytes(REQUEST)
                buf = bytearray(RESPONSE)
                times = np.empty(count, dtype=np.float64)
                for i in range(warmup + count):
                    t0 = time.perf_counter()
                    conn.sendall(request)
                    _recv_exact(conn, RESPONSE, buf)
                    if i >= warmup:
                        times[i - warmup] = (time.perf_counter() - t0) * 1e6
                return times
        finally:
            child.wait(timeout=30)
            if kind == "unix":
                import os

                os.unlink(address)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
