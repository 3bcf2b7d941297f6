"""A scenario's `tls:` at run time: the run's certificates and each peer's TLS settings.

Strategy: the certificates are made once per run in the work directory
(harness.transport.tls_certs: `tls-source/` holds the client pair, `tls-destination/` the
server pair, each with its CA), then each peer gets its `tls-creds-x509` object through
QMP `object-add` -- the same arguments for QEMU 7.2 and a harness peer, and no `,,`
escaping of a DN, which `-object` would need (T3) -- and the parameters that use it:
`tls-creds` on both, `tls-hostname` on the source (given, or `localhost` for a
transport without a host name: QEMU checks nothing without one), `tls-authz` on the
destination with an `authz-simple` object.  A peer refusing an object (an expired
certificate, in QEMU's words) fails the configuration like any refused setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.transport.tls_certs import RunCredentials, make_run_credentials

__all__ = ["CREDS_ID", "credentials", "peer_settings", "proxy_dir", "refuse_remote_proxy"]

CREDS_ID = "tls0"
AUTHZ_ID = "authz0"


def credentials(c: Any) -> RunCredentials:
    """The run's certificates (made at the first call; `c` is the coordinator)."""
    made = getattr(c, "_tls_credentials", None)
    if made is None:
        tls = c.sc.tls
        made = make_run_credentials(c.workdir, wrong_ca=tls.wrong_ca, expired=tls.expired)
        c._tls_credentials = made
    return made


def peer_settings(c: Any, peer: Any) -> dict[str, Any]:
    """Add the peer's TLS objects (object-add) and return its TLS parameters ({} without
    `tls:`).  Raises what the peer's object-add raises (CommandError)."""
    tls = c.sc.tls
    if tls is None:
        return {}
    creds = credentials(c)
    source = peer.role == "source"
    props: dict[str, Any] = {"qom-type": "tls-creds-x509", "id": CREDS_ID,
                             "dir": str(creds.source_dir if source else creds.destination_dir),
                             "endpoint": "client" if source else "server"}
    if tls.session_tickets and not source:
        props["x-session-tickets"] = tls.session_tickets
    peer.execute("object-add", props)
    params: dict[str, Any] = {"tls-creds": CREDS_ID}
    if source:
        hostname = tls.hostname or ("" if c.sc.transport.scheme == "tcp" else "localhost")
        if hostname:
            params["tls-hostname"] = hostname
    elif tls.authz is not False:
        identity = creds.client_dn if tls.authz is True else str(tls.authz)
        peer.execute("object-add", {"qom-type": "authz-simple", "id": AUTHZ_ID,
                                    "identity": identity})
        params["tls-authz"] = AUTHZ_ID
    return params


def proxy_dir(c: Any) -> Path | None:
    """What the proxy's `--tls` gets: the work directory with the run's certificates
    (`proxy: terminate`), `passthrough` (it forwards the TLS bytes, framed as records),
    or None without `tls:`."""
    tls = c.sc.tls
    if tls is None:
        return None
    if tls.proxy == "passthrough":
        return Path("passthrough")
    credentials(c)
    return Path(c.workdir)


def refuse_remote_proxy(c: Any) -> None:
    """An agent-hosted proxy gets no `--tls`: refuse, in one line."""
    if c.sc.tls is not None:
        from harness.errors import EnvironmentFailure

        raise EnvironmentFailure("tls: with a proxy on an agent's host is not implemented "
                                 "(the agent's proxy has no --tls)")
