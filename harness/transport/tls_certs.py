"""Certificates for one run: a CA, a server and a client certificate, in QEMU's layout.

Strategy: the `cryptography` package makes what T1 says QEMU 7.2 accepts -- a CA with
basicConstraints CA:TRUE and keyCertSign, a server certificate with serverAuth and SANs
for the hostnames, a client certificate with clientAuth -- as P-256 keys (fast to make)
and writes them under QEMU's fixed names (`ca-cert.pem`, `server-cert.pem`, ...) into
one directory per peer: the source's holds the client pair, the destination's the
server pair.  Knobs make the failure cases: the source's CA and client certificate from
another CA than the destination's (`wrong_ca`), an expired server certificate
(`expired`: QEMU 7.2 and the harness refuse to load it).  Keys are written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunCredentials", "make_run_credentials"]

CLIENT_DN = (("O", "migration-harness"), ("CN", "harness-client"))


@dataclass(frozen=True)
class RunCredentials:
    source_dir: Path  # endpoint=client: ca-cert.pem, client-cert.pem, client-key.pem
    destination_dir: Path  # endpoint=server: ca-cert.pem, server-cert.pem, server-key.pem
    client_dn: str  # the client certificate's DN as QEMU's GnuTLS prints it (tls-authz)


def make_run_credentials(directory: Path, *, hostnames: tuple[str, ...] = ("localhost",
                                                                         "127.0.0.1"),
                         wrong_ca: bool = False, expired: bool = False) -> RunCredentials:
    """Write both peers' credentials under `directory` (tls-source/, tls-destination/)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(_name((("O", "migration-harness"), ("CN", "harness CA"))),
                           ca_key, None, ca_key, ca=True)
    server_ca = ca_cert
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(_name((("O", "migration-harness"), ("CN", hostnames[0]))),
                               server_key, (ca_cert, ca_key), ca_key, hostnames=hostnames,
                               usage="server", expired=expired)
    if wrong_ca:  # QEMU checks its own certificate against its CA: both come from another
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _certificate(_name((("O", "elsewhere"), ("CN", "another CA"))),
                               ca_key, None, ca_key, ca=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate(_name(CLIENT_DN), client_key, (ca_cert, ca_key), ca_key,
                               usage="client")
    source, destination = directory / "tls-source", directory / "tls-destination"
    _write_dir(source, ca_cert, "client", client_cert, client_key)
    _write_dir(destination, server_ca, "server", server_cert, server_key)
    from .tls import gnutls_dn

    return RunCredentials(source, destination, gnutls_dn(client_cert.subject))


def _name(parts: tuple[tuple[str, str], ...]):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    oids = {"O": NameOID.ORGANIZATION_NAME, "CN": NameOID.COMMON_NAME}
    return x509.Name([x509.NameAttribute(oids[key], value) for key, value in parts])


def _certificate(subject, key, issuer, issuer_key, *, ca=False,  # type: ignore[no-untyped-def]
                 hostnames: tuple[str, ...] = (), usage: str = "", expired: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) \
        if expired else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30))
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False), critical=True)
    if usage:
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" \
            else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    if hostnames:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [_san(name) for name in hostnames]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _san(name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_dir(directory: Path, ca_cert, role: str, cert, key) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "ca-cert.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / f"{role}-cert.pem").write_bytes(cert.public_bytes(pem))
    key_path = directory / f"{role}-key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
