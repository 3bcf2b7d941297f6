"""harness.transport.tls without sockets: objects as QEMU parses and refuses them, the
contexts they make (no session tickets unless x-session-tickets), the DN in GnuTLS's
order.  Certificates are made once per module (tls_certs, P-256: a fraction of a second).
The channel itself: tests/e2e/test_tls_channel.py.
"""

from __future__ import annotations

import ssl

import pytest

from harness.transport.tls import TlsError, TlsObjects, parse_object_option
from harness.transport.tls_certs import make_run_credentials


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return make_run_credentials(tmp_path_factory.mktemp("tls"))


def _objects(creds, **server_props) -> tuple[TlsObjects, TlsObjects]:
    client, server = TlsObjects(), TlsObjects()
    client.add_option(f"tls-creds-x509,id=tls0,dir={creds.source_dir},endpoint=client")
    server.add("tls-creds-x509", {"id": "tls0", "dir": str(creds.destination_dir),
                                  "endpoint": "server", **server_props})
    return client, server


def test_object_option_parsing_and_refusals(creds, tmp_path):
    assert parse_object_option("authz-simple,id=a,identity=O=x,,CN=y") == (
        "authz-simple", {"id": "a", "identity": "O=x,CN=y"})
    objects = TlsObjects()
    refusals = {
        f"tls-creds-x509,id=t,dir={creds.source_dir},bogus=1":
            "Property 'tls-creds-x509.bogus' not found",
        f"tls-creds-x509,id=t,dir={creds.source_dir},priority=NORMAL":
            "is not implemented by the harness peer",
        f"tls-creds-x509,id=t,dir={creds.source_dir},endpoint=both":
            "Parameter 'endpoint' does not accept value 'both'",
        f"tls-creds-x509,id=t,dir={tmp_path},endpoint=server":
            f"Unable to access credentials {tmp_path}/ca-cert.pem: No such file or directory",
        f"tls-creds-x509,id=t,dir={creds.source_dir},endpoint=client,x-session-tickets=2":
            "x-session-tickets' expects 0 to 16, on a server endpoint",
        "tls-creds-x509,dir=/x": "Parameter 'id' is missing",
        "secret,id=s,data=x": "invalid object type: secret",
    }
    for text, words in refusals.items():
        with pytest.raises(ValueError, match=None) as caught:
            objects.add_option(text)
        assert words in str(caught.value), text
    objects.add_option(f"tls-creds-x509,id=c,dir={creds.source_dir},endpoint=client")
    with pytest.raises(ValueError, match="duplicate property 'c'"):
        objects.add_option(f"tls-creds-x509,id=c,dir={creds.source_dir}")
    with pytest.raises(TlsError, match="^No TLS credentials with id 'nonexistent'$"):
        objects.creds("nonexistent", "client")
    with pytest.raises(TlsError, match="^Expected TLS credentials for a server endpoint$"):
        objects.creds("c", "server")


def test_contexts_send_no_session_tickets_unless_asked(creds):
    client, server = _objects(creds)
    server_ctx = server.creds("tls0", "server").context
    client_ctx = client.creds("tls0", "client").context
    assert server_ctx.num_tickets == 0 and server_ctx.verify_mode == ssl.CERT_REQUIRED
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    _, tickets = _objects(creds, **{"x-session-tickets": 2, "verify-peer": "off"})
    ctx = tickets.creds("tls0", "server").context
    assert ctx.num_tickets == 2 and ctx.verify_mode == ssl.CERT_NONE
    assert creds.client_dn == "O=migration-harness,CN=harness-client"  # GnuTLS's order
