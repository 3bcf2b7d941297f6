"""`tls:` -- a scenario's migration over TLS, with the run's own CA and certificates.

Strategy: one small model; the runner (harness/runner/tls_setup.py) makes the CA and the
certificates in the work directory, adds `tls-creds-x509` objects to both peers (QMP
`object-add`: QEMU and the harness take the same arguments) and sets `tls-creds` (and
`tls-hostname`, `tls-authz`) on them.  The failure knobs are what a test of QEMU 7.2's
refusals needs, and nothing more.  `tls: {}` (or `tls: true`) is TLS with the defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, StrictBool, StrictInt, model_validator

from .base import ScenarioModel, Text, choice, in_range

TLS_PROXY_MODES = ("terminate", "passthrough")
TlsProxyMode = Literal["terminate", "passthrough"]


class Tls(ScenarioModel):
    """`tls:`: TLS on every migration channel (main, return path, preempt, multifd)."""

    hostname: Text | None = None
    """The source's tls-hostname (default: none for tcp -- the URI's host is checked --
    and `localhost` for unix/fd, which QEMU cannot check without one)."""
    authz: Text | StrictBool = False
    """true: the destination's tls-authz allows the run's client certificate's DN;
    a DN string: allows that identity only (another DN is denied, in QEMU's words)."""
    wrong_ca: StrictBool = False
    """The source's CA and client certificate come from another CA than the
    destination's: each side fails to verify the other."""
    expired: StrictBool = False
    """The destination's server certificate has expired (QEMU 7.2 and the harness
    refuse to load it: the run cannot start its destination)."""
    proxy: Annotated[TlsProxyMode, choice("a TLS proxy mode", TLS_PROXY_MODES)] = "terminate"
    """When the run has a proxy: `terminate` (it decrypts, faults and triggers see the
    plaintext, and re-encrypts) or `passthrough` (it forwards the TLS bytes untouched,
    framed as records: a frame fault aims at TLS_RECORD, and a corrupted one is a TLS
    error at the destination)."""
    session_tickets: Annotated[StrictInt, AfterValidator(
        in_range(0, 16, "an integer from 0 to 16"))] = 0
    """Testing knob (harness destination only): its server sends this many TLS 1.3
    session tickets, as a default OpenSSL server does (x-session-tickets=N); 0 is QEMU's
    and the harness's default."""

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any) -> Any:
        return {} if data is True or data is None else data


def tls_issues(scenario: Any) -> list[Any]:
    """What `tls:` cannot go with: a pipe or a file carries no TLS in the harness."""
    from .base import Issue

    tls = scenario.tls
    if tls is None:
        return []
    issues = []
    if scenario.transport.scheme in ("exec", "file"):
        issues.append(Issue(("tls",), f"needs a socket transport (tcp, unix, fd), "
                                      f"not {scenario.transport.scheme}"))
    issues += _frame_issues(scenario, tls.proxy == "passthrough")
    if tls.session_tickets and scenario.destination.kind != "harness":
        issues.append(Issue(("tls", "session-tickets"), "session-tickets is a harness "
                            "destination's testing knob; this destination is "
                            f"{scenario.destination.kind}"))
    return issues


def _frame_issues(scenario: Any, passthrough: bool) -> list[Any]:
    """A passthrough proxy sees TLS records only; a terminating one never sees any."""
    from .base import Issue

    issues = []
    for index, step in enumerate(scenario.steps):
        fault = step.fault
        frame, message = getattr(fault, "frame", None), getattr(fault, "message", None)
        if passthrough and (message or (frame and frame != "TLS_RECORD")):
            issues.append(Issue(("steps", index, "fault"), "with tls: {proxy: passthrough} "
                                "the proxy forwards ciphertext: a frame fault can aim at "
                                f"TLS_RECORD only, not {message or frame}"))
        elif passthrough and frame is None and getattr(fault, "kind", "") in (
                "net.corrupt", "net.truncate"):
            issues.append(Issue(("steps", index, "fault"), "with tls: {proxy: passthrough} "
                                "name frame: TLS_RECORD (the proxy sees no RAM page)"))
        elif not passthrough and frame == "TLS_RECORD":
            issues.append(Issue(("steps", index, "fault", "frame"), "TLS_RECORD frames exist "
                                "only with tls: {proxy: passthrough}"))
    return issues
