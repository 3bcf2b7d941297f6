"""The baseline every throughput figure is compared with: a raw two-process socket stream.

Strategy: a child process (`python -m harness.bench.rawstream PORT`) connects and
`recv_into`s a 1 MiB buffer until EOF, then answers one byte; the parent `sendall`s the
same number of bytes in 1 MiB slices of a RAM-sized buffer.  The time runs from the
connection to that answer, so both sides' work is inside it, as for a migration.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np

CHUNK = 1 << 20


def receive(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while sock.recv_into(view):
            pass
        sock.sendall(b"!")


def stream_seconds(data: np.ndarray, timeout: float = 300.0) -> float:
    """Send `data` (uint8) to a receiver process over loopback TCP; seconds taken."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(timeout)
        port = server.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-m", "harness.bench.rawstream", str(port)])
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(timeout)
                view = data.data
                start = time.perf_counter()
                for at in range(0, len(view), CHUNK):
                    conn.sendall(view[at:at + CHUNK])
                conn.shutdown(socket.SHUT_WR)
                if conn.recv(1) != b"!":
                    raise RuntimeError("the raw-stream receiver did not confirm")
                return time.perf_counter() - start
        finally:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    receive(int(sys.argv[1]))
