"""The shipped TLS scenarios (scenarios/tls/), run as a user runs them, in one `harness run`.

Strategy: both files in one run (one runner start).  Under a terminating proxy a page's
corrupted byte travels re-encrypted and the migration completes silently wrong, as the
plaintext corruption does; under a passthrough proxy the corrupted ciphertext is refused
by the destination's TLS session in GnuTLS's words.  Each report lists its fault (kind,
frame, where, the byte changed).
"""

from __future__ import annotations

from tests.conftest import REPO
from tests.e2e.test_scenarios import run

TLS = REPO / "scenarios" / "tls"


def test_corrupt_under_termination_is_silent_and_under_passthrough_a_tls_error(tmp_path):
    code, report, output = run(TLS / "corrupt-page-terminate.yaml",
                               TLS / "corrupt-record-passthrough.yaml", tmp=tmp_path)
    assert code == 0, output
    terminate, passthrough = report["scenarios"]
    for sc, frame in ((terminate, "RAM_PAGE"), (passthrough, "TLS_RECORD")):
        assert sc["verdict"] == "pass", sc["reason"]
        [fault] = sc["faults"]
        assert fault["kind"] == "net.corrupt" and fault["detail"]["frame"] == frame
    assert terminate["faults"][0]["detail"]["detail"]["page"].startswith("ram@0x")
    assert terminate["destination"]["status"] == "completed"
    error = passthrough["destination"]["error"]
    assert "Cannot read from TLS channel: Input/output error (Decryption has failed." \
        in error, error  # QEMU 7.2's words (io/channel-tls.c), seen with --peers qemu
