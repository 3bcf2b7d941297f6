"""TLS against a real QEMU 7.2: both directions, and the same refusals in the same words.

Strategy: certificates from harness.transport.tls_certs (what a `tls:` scenario makes).
(1) A `-M none -m 16` QEMU source migrates to an in-process harness destination with
postcopy-ram + postcopy-preempt over TLS: the main channel (and its return path) and the
preempt channel each carry their own TLS 1.3 session, requested pages arrive on the
preempt channel, memory ends identical.  (2) A harness source peer process migrates to a
QEMU destination through `harness run` of a `tls: {authz: true}` scenario with the return
path on: QEMU checks the harness client's certificate and its DN, memory ends identical.
(3) One QEMU source and the harness client, each against a harness TLS server, fail
alike: a server certificate from another CA, a hostname mismatch, a unix: URI without
tls-hostname; and both refuse to
load an expired server certificate with the same sentence.  Every QEMU is reaped.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from destination.incoming import IncomingMigration
from harness.guest import Guest, WorkloadSpec
from harness.migration.config import MigrationConfig
from harness.qemu import QemuProcess, QMPError
from harness.transport import connect, listen, parse_uri
from harness.transport.tls import TlsError, TlsListener, TlsObjects
from harness.transport.tls_certs import make_run_credentials
from tests.e2e.test_preempt_qemu import CAPS, WAIT, MiB, _spec, _until
from tests.e2e.test_scenarios import run
from tests.qemu_env import COMMON, QEMU_MARKS

pytestmark = [*QEMU_MARKS]


def test_qemu_source_to_harness_destination_tls_on_main_and_preempt(tmp_path):
    creds = make_run_credentials(tmp_path)
    objects = TlsObjects()
    objects.add("tls-creds-x509", {"id": "tls0", "dir": str(creds.destination_dir),
                                   "endpoint": "server"})
    objects.add("authz-simple", {"id": "auth0", "identity": creds.client_dn})
    content = Guest.create(_spec(61), initial_content=True, prefault=False)
    dst = Guest.create(_spec(61, WorkloadSpec(4 * MiB, "uniform", 0, 61)),
                       initial_content=False, prefault=True)
    image = tmp_path / "ram.bin"
    image.write_bytes(content.memory.ram["ram"].tobytes())
    qemu = QemuProcess([*COMMON, "-device", f"loader,file={image},addr=0x0", "-object",
                        f"tls-creds-x509,id=tls0,dir={creds.source_dir},endpoint=client"],
                       tmp_path, name="src")
    config = MigrationConfig.default()
    config.set_capabilities(CAPS, running=False)
    config.set_parameters({"tls-creds": "tls0", "tls-authz": "auth0"})
    channels: list = []

    def listener(uri: str):
        inner = listen(parse_uri(uri, "destination"), return_path=True)
        wrapped = TlsListener(inner, objects, lambda: config.parameters)
        accept = wrapped.accept
        wrapped.accept = lambda timeout=None: channels.append(accept(timeout)) or channels[-1]
        return wrapped

    incoming = IncomingMigration(dst, config, listener, lambda name, data: None,
                                 accept_timeout=WAIT)
    dst.runstate = "inmigrate"
    incoming.snapshot = True
    try:
        qemu.start()
        qemu.qmp.execute("migrate-set-capabilities", {"capabilities": CAPS})
        qemu.qmp.execute("migrate-set-parameters", {
            "max-bandwidth": MiB, "max-postcopy-bandwidth": 64 * 1024, "tls-creds": "tls0"})
        incoming.migrate_incoming("tcp:127.0.0.1:0")
        port = incoming.socket_address[0]["port"]
        qemu.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "active", "active")
        qemu.qmp.execute("migrate-start-postcopy")
        _until(lambda: dst.runstate == "running", "the guest runs on the destination")
        fast = incoming.fast_load
        assert fast is not None
        _until(lambda: fast.pages >= 2, "requested pages on the TLS preempt channel")
        qemu.qmp.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 1 << 30})
        _until(lambda: str(incoming.state.status) in ("completed", "failed"), "the end")
        assert str(incoming.state.status) == "completed", incoming.error_desc
        # main (its return path the reverse of the same session) and preempt: two sessions
        assert [c.cipher[1] for c in channels] == ["TLSv1.3", "TLSv1.3"]
        assert np.array_equal(incoming.loaded_digests["ram"], content.digests()["ram"])
        _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "completed",
               "QEMU completed")
    finally:
        incoming.close()
        qemu.close()
        content.close()
        dst.close()


SCENARIO = """\
name: tls-to-qemu
seed: 5
timeout: 60s
guest: {machine: none, memory: 16MiB, fill: 0.5, devices: [timer, globalstate]}
destination: {kind: qemu}
capabilities: {return-path: true}
tls: {authz: true}
expect: {source: completed, destination: completed, memory: identical}
"""


def test_harness_source_to_qemu_destination_tls_with_return_path_and_authz(tmp_path):
    path = tmp_path / "tls-to-qemu.yaml"
    path.write_text(SCENARIO)
    code, report, output = run(path, tmp=tmp_path)
    assert code == 0, output
    [sc] = report["scenarios"]
    # a QEMU destination with tls-creds set loads nothing but a TLS stream: a pass is one
    assert sc["verdict"] == "pass" and sc["stats"]["ram"]["transferred"] > 4 * MiB


def _harness_server(objects: TlsObjects, where: str = "tcp:127.0.0.1:0"
                    ) -> tuple[str, dict, threading.Thread]:
    """A TLS server (one connection) at `where`; its URI, and its outcome in the dict."""
    listener = listen(where)
    outcome: dict = {}

    def serve() -> None:
        try:
            channel = objects.server_channel(listener.accept(10), {"tls-creds": "tls0"}, 10)
            outcome["first"] = channel.read_exact(4, timeout=10)
            channel.close()
        except Exception as err:  # noqa: BLE001 -- the test reads it
            outcome["error"] = str(err)
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.address, outcome, thread


def _qemu_client_error(qemu: QemuProcess, uri: str, params: dict) -> str:
    qemu.qmp.execute("migrate-set-parameters", params)
    qemu.qmp.execute("migrate", {"uri": uri})
    _until(lambda: qemu.qmp.execute("query-migrate").get("status") == "failed", "failed")
    return str(qemu.qmp.execute("query-migrate").get("error-desc"))


def _harness_client_error(objects: TlsObjects, where: str, params: dict) -> str:
    uri = parse_uri(where, "source")
    with pytest.raises(TlsError) as caught:
        objects.client_channel(connect(uri, timeout=5), uri, params, 10)
    return str(caught.value)


def test_qemu_and_harness_clients_fail_alike(tmp_path):
    good, other = make_run_credentials(tmp_path / "good"), make_run_credentials(
        tmp_path / "other", wrong_ca=True)
    server = TlsObjects()
    server.add("tls-creds-x509", {"id": "tls0", "dir": str(good.destination_dir),
                                  "endpoint": "server", "verify-peer": False})
    client = TlsObjects()
    qemu = QemuProcess([*COMMON, "-S"], tmp_path, name="src")
    try:
        qemu.start()
        for oid, creds in (("tls-good", good), ("tls-other", other)):
            args = {"id": oid, "dir": str(creds.source_dir), "endpoint": "client"}
            qemu.qmp.execute("object-add", {"qom-type": "tls-creds-x509", **args})
            client.add("tls-creds-x509", args)
        unix = f"unix:{tmp_path}/tls.sock"
        cases = {"hostname": ({"tls-creds": "tls-good", "tls-hostname": "wrong.example"},
                              "tcp:127.0.0.1:0"),
                 "no hostname": ({"tls-creds": "tls-good", "tls-hostname": ""}, unix),
                 "unknown CA": ({"tls-creds": "tls-other"}, "tcp:127.0.0.1:0")}
        seen = []
        for case, (params, where) in cases.items():
            uri, _, thread = _harness_server(server, where)
            seen.append(words := _qemu_client_error(qemu, uri, params))
            thread.join(10)
            uri, _, thread = _harness_server(server, where)
            assert _harness_client_error(client, uri, params) == words, case
            thread.join(10)
        assert seen == ["Certificate does not match the hostname wrong.example",
                        "No hostname for certificate validation",
                        "The certificate hasn't got a known issuer"]
        expired = make_run_credentials(tmp_path / "expired", expired=True)
        args = {"id": "tls-x", "dir": str(expired.destination_dir), "endpoint": "server"}
        with pytest.raises(QMPError) as qemu_refusal:
            qemu.qmp.execute("object-add", {"qom-type": "tls-creds-x509", **args})
        with pytest.raises(ValueError) as harness_refusal:
            TlsObjects().add("tls-creds-x509", args)
        assert str(harness_refusal.value) in str(qemu_refusal.value)
        assert "server-cert.pem has expired" in str(harness_refusal.value)
    finally:
        qemu.close()
