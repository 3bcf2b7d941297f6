"""Fault injectors: process faults, and a protocol-aware network proxy between the peers.

Strategy: `process` kills, freezes and crashes a peer's process tree.  The proxy is a
few modules, each one concern: `framing` knows where each frame of both flows lies (from
the project's codec, never a second parser); `triggers` says at which stream position
an armed effect starts and `netfaults` what each network fault does to the bytes;
`endpoint`, `outlet` and `pump` move the bytes (sockets; delivery shaped in time; one
thread per flow); `proxy` owns the sessions, arms and counters; `proxy_main` is the
process (`harness proxy`), driven over the control plane like a peer.
"""
