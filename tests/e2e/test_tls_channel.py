"""`TlsChannel` over real loopback TCP (harness.transport.tls, tls_channel).

Strategy: plaintext the session already holds is returned without waiting on the socket
(several records in one send, read in pieces), the return direction is the same session,
a reader blocked in a receive is woken by `shutdown()` from another thread; a server that
sends session tickets (x-session-tickets) still gets every byte of a client that never
reads them and closes (T5: without the drain before close the kernel sends RST and the
queued tail is lost -- this test failed 3 of 3 runs with the drain off); the authz
denial, hostname mismatch and missing-hostname words are QEMU 7.2's.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from harness.transport import ChannelClosed, connect, listen, parse_uri
from harness.transport.tls import TlsError, TlsObjects
from harness.transport.tls_certs import make_run_credentials
from tests.unit.test_tls import _objects


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return make_run_credentials(tmp_path_factory.mktemp("tls"))


def _pair(client: TlsObjects, server: TlsObjects, params: dict | None = None):
    """(client channel, server channel or the server's error) over loopback TCP."""
    listener = listen("tcp:127.0.0.1:0")
    got: dict = {}

    def accept() -> None:
        try:
            got["channel"] = server.server_channel(listener.accept(10),
                                                   {"tls-creds": "tls0", **(params or {})}, 10)
        except TlsError as err:
            got["error"] = str(err)

    thread = threading.Thread(target=accept)
    thread.start()
    uri = parse_uri(listener.address, "source")
    try:
        channel = client.client_channel(connect(uri, timeout=5), uri, {"tls-creds": "tls0"}, 10)
    finally:
        thread.join(15)
        listener.close()
    return channel, got.get("channel") or got.get("error")


def test_channel_reads_held_plaintext_and_wakes_on_shutdown(creds):
    client, server = _objects(creds)
    src, dst = _pair(client, server)
    try:
        assert src.sock is None and src.send_gathered is None  # nothing bypasses TLS
        src.sendall(b"A" * 10 + b"B" * 70000)  # several records in one go
        assert dst.read_exact(10, timeout=5) == b"A" * 10
        assert dst.read_exact(70000, timeout=5) == b"B" * 70000  # held in the session
        dst.sendall(b"pong")  # the return direction of the same session
        assert src.read_exact(4, timeout=5) == b"pong"
        failure: list = []
        reader = threading.Thread(target=lambda: failure.append(
            pytest.raises(ChannelClosed, dst.read_exact, 1)))
        reader.start()
        threading.Event().wait(0.2)
        dst.shutdown()
        reader.join(5)
        assert not reader.is_alive() and failure
    finally:
        src.close()
        dst.close()


def test_client_that_never_reads_tickets_still_delivers_its_whole_stream(creds):
    client, server = _objects(creds, **{"x-session-tickets": 2})
    src, dst = _pair(client, server)
    data = os.urandom(1 << 20)  # fits in the socket buffers: all queued when src closes
    received = bytearray()
    try:
        src.sendall(data)  # the 2 tickets sit unread in the client's socket
        src.close()  # drained first: FIN; an RST would drop what is still queued
        buf = bytearray(1 << 20)
        while n := dst.recv_into(buf):
            received.extend(buf[:n])
        assert bytes(received) == data
    finally:
        src.close()
        dst.close()


def test_authz_denial_and_hostname_words(creds):
    client, server = _objects(creds)
    server.add("authz-simple", {"id": "auth0", "identity": "CN=harness-client,O=other"})
    src, error = _pair(client, server, {"tls-authz": "auth0"})
    src.close()
    assert error == ("TLS x509 authz check for O=migration-harness,CN=harness-client is "
                     "denied")
    listener = listen("tcp:127.0.0.1:0")
    threading.Thread(target=lambda: _quietly(server, listener), daemon=True).start()
    uri = parse_uri(listener.address, "source")
    with pytest.raises(TlsError, match="^Certificate does not match the hostname "
                                       "wrong.example$"):
        client.client_channel(connect(uri, timeout=5), uri,
                              {"tls-creds": "tls0", "tls-hostname": "wrong.example"}, 10)
    unix = parse_uri(f"unix:{Path('/nonexistent')}", "source")
    with pytest.raises(TlsError, match="^No hostname for certificate validation$"):
        client.client_channel(_Plain(), unix, {"tls-creds": "tls0"}, 10)


def _quietly(server: TlsObjects, listener) -> None:
    try:
        server.server_channel(listener.accept(10), {"tls-creds": "tls0"}, 10).close()
    except (TlsError, ChannelClosed):
        pass
    finally:
        listener.close()


class _Plain:
    """Stands for a channel the check refuses before touching it."""

    peer = "unix:/nonexistent"

    def close(self) -> None:
        pass


def test_peer_started_with_an_expired_certificate_says_so_in_one_line(tmp_path):
    import subprocess
    import sys

    expired = make_run_credentials(tmp_path, expired=True)
    option = f"tls-creds-x509,id=tls0,dir={expired.destination_dir},endpoint=server"
    proc = subprocess.run([sys.executable, "-m", "harness", "destination", "--qmp",
                           f"unix:{tmp_path}/q.sock", "--object", option],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"harness destination: --object {option}: The server "
                                   f"certificate {expired.destination_dir}/server-cert.pem "
                                   "has expired")
