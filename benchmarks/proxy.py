"""Proxy benchmark: ~1 GiB of page records through `harness proxy`, beside a direct stream.

Not a test.  A sender process writes a valid migration stream (header, configuration,
the ram START, then PART sections each carrying every page of a 64 MiB block of random
content, encoded once with the codec, then END and EOF) over loopback TCP to a receiver
process, which reads it into a 4 MiB buffer and times first byte to EOF.  Each round
does it three times: straight from sender to receiver (the baseline, measured in the
same run); through a plain relay process (recv_into / sendall of 4 MiB, no framing: what
any user-space hop costs on this machine, for context); and through a `python -m harness
proxy` process, which frames every record (RAM in discard mode) and forwards it.
Figures are GB/s of stream; the medians of the rounds and the ratios are printed, and
query-proxy's counters are checked (every byte forwarded, every page record seen).

    python benchmarks/proxy.py [--size-mib 1024] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from harness.control import ControlClient, ControlError
from harness.protocol import RamBlockInfo, SectionType, StreamEncoder

PAGE = 4096
BLOCK = 64 << 20
BUFFER = 4 << 20
TIMEOUT = 120.0


def stream_pieces(passes: int) -> tuple[list[bytes | memoryview], int]:
    """The stream as a few big buffers (the 64 MiB of records is reused per pass)."""
    rng = np.random.default_rng(7)
    ram = rng.integers(0, 256, BLOCK, dtype=np.uint8)
    enc = StreamEncoder()
    records = bytearray()
    enc.ram.save_pages(records, "ram", ram, range(BLOCK // PAGE))
    body = memoryview(bytes(records))
    pieces: list[bytes | memoryview] = [enc.header() + enc.configuration("none")
                                        + enc.ram_start(2, [RamBlockInfo("ram", BLOCK)])]
    part = enc.section_header(SectionType.SECTION_PART, 2)
    tail = enc.ram_section(SectionType.SECTION_PART, 2, b"")[len(part):]  # EOS + footer
    for _ in range(passes):
        pieces += [part, body, tail]
    pieces.append(enc.ram_section(SectionType.SECTION_END, 2, b"") + enc.eof())
    return pieces, sum(len(p) for p in pieces)


def sender(address: tuple[str, int], passes: int, ready: Any) -> None:
    pieces, _ = stream_pieces(passes)
    ready.send("built")
    ready.recv()  # go
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        for piece in pieces:
            sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the other end closes when it has everything


def receiver(results: Any) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        results.send(server.getsockname()[1])
        server.settimeout(TIMEOUT)
        conn, _ = server.accept()
    with conn:
        buf = bytearray(BUFFER)
        view = memoryview(buf)
        total = conn.recv_into(view)
        start = time.perf_counter()
        while n := conn.recv_into(view):
            total += n
        results.send((total, time.perf_counter() - start))


def relay(target: tuple[str, int], ready: Any) -> None:
    """A plain user-space hop: accept one connection, copy it to `target`, no framing."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        ready.send(server.getsockname()[1])
        server.settimeout(TIMEOUT)
        conn, _ = server.accept()
    with conn, socket.create_connection(target, timeout=TIMEOUT) as out:
        view = memoryview(bytearray(BUFFER))
        while n := conn.recv_into(view):
            out.sendall(view[:n])
        out.shutdown(socket.SHUT_WR)
        out.recv(1)


def one_transfer(ctx: Any, passes: int, via: str, sockdir: str) -> tuple[float, dict]:
    recv_end, recv_child = ctx.Pipe()
    rproc = ctx.Process(target=receiver, args=(recv_child,))
    rproc.start()
    proxy: subprocess.Popen[bytes] | None = None
    client: ControlClient | None = None
    sproc = hop = None
    try:
        if not recv_end.poll(30):
            raise RuntimeError("the receiver did not start")
        port = recv_end.recv()
        address = ("127.0.0.1", port)
        if via == "relay":
            hop_end, hop_child = ctx.Pipe()
            hop = ctx.Process(target=relay, args=(address, hop_child))
            hop.start()
            if not hop_end.poll(30):
                raise RuntimeError("the relay did not start")
            address = ("127.0.0.1", hop_end.recv())
        if via == "proxy":
            control = f"ipc://{sockdir}/proxy.ctl"
            proxy = subprocess.Popen([sys.executable, "-m", "harness", "proxy", "--control",
                                      control, "--listen", "tcp:127.0.0.1:0", "--target",
                                      f"tcp:127.0.0.1:{port}"])
            client = ControlClient(control, timeout=30)
            client.hello(timeout=30)
            listen = client.execute("query-proxy")["listen"]
            host, _, pport = listen.removeprefix("tcp:").rpartition(":")
            address = (host, int(pport))
        send_end, send_child = ctx.Pipe()
        sproc = ctx.Process(target=sender, args=(address, passes, send_child))
        sproc.start()
        if not send_end.poll(60):
            raise RuntimeError("the sender did not build its stream")
        send_end.recv()
        send_end.send("go")
        if not recv_end.poll(TIMEOUT):
            raise RuntimeError("the transfer did not finish in time")
        total, seconds = recv_end.recv()
        counters = client.execute("query-proxy") if client is not None else {}
        sproc.join(30)
        rproc.join(30)
        return total / seconds / 1e9, {"bytes": total, **({"proxy": counters} if counters else {})}
    finally:
        for proc in (sproc, rproc, hop):
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(10)
        if client is not None:
            try:
                client.execute("quit", timeout=10)
            except ControlError:
                pass
            client.close()
        if proxy is not None:
            try:
                proxy.wait(20)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    passes = max(1, args.size_mib * (1 << 20) // BLOCK)
    _, size = stream_pieces(0)
    size += passes * (BLOCK // PAGE) * (PAGE + 8)
    ctx = mp.get_context("spawn")
    direct, relayed, proxied = [], [], []
    checks = []
    with tempfile.TemporaryDirectory(prefix="mhb", dir="/tmp") as sockdir:
        for _ in range(args.rounds):
            direct.append(one_transfer(ctx, passes, "direct", sockdir)[0])
            relayed.append(one_transfer(ctx, passes, "relay", sockdir)[0])
            rate, info = one_transfer(ctx, passes, "proxy", sockdir)
            proxied.append(rate)
            counters = info["proxy"]
            main_bytes = counters["bytes"]["main"]
            checks.append(main_bytes["received"] == main_bytes["forwarded"] == info["bytes"]
                          and counters["frames"]["main"].get("RAM_PAGE") == passes * BLOCK // PAGE
                          and not counters["framing-errors"])
    d, r, p = (statistics.median(x) for x in (direct, relayed, proxied))
    print(f"stream: {size / (1 << 30):.2f} GiB of page records over loopback TCP, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs")
    print(f"  direct (sender -> receiver)        {d:6.2f} GB/s   rounds: "
          + ", ".join(f"{x:.2f}" for x in direct))
    print(f"  through a plain relay (no framing) {r:6.2f} GB/s   rounds: "
          + ", ".join(f"{x:.2f}" for x in relayed))
    print(f"  through harness proxy (framed)     {p:6.2f} GB/s   rounds: "
          + ", ".join(f"{x:.2f}" for x in proxied))
    print(f"  ratio proxy / direct               {p / d:6.2f}")
    print(f"  ratio proxy / plain relay          {p / r:6.2f}")
    print(f"  proxy counters consistent (bytes forwarded = received, every page seen): "
          f"{all(checks)}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"bytes": size, "direct": direct, "relay": relayed, "proxy": proxied,
                       "ratio": p / d, "ratio-relay": p / r, "consistent": all(checks)},
                      out, indent=1)


if __name__ == "__main__":
    main()
