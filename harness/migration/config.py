"""Migration capabilities and parameters with QEMU 7.2's names, defaults and checks.

Strategy: one `MigrationConfig` per peer, set through the QMP commands
`migrate-set-capabilities` / `migrate-set-parameters` and read by the migration code.
Defaults and range checks are QEMU 7.2's (`migration/migration.c: migrate_params_check`,
`migrate_caps_check`), and so are the error texts (QERR_INVALID_PARAMETER_VALUE is
"Parameter '%s' expects %s", with the C field name).  Changes are refused while a
migration runs ("There's a migration process in progress") except the parameters QEMU
applies live (bandwidths, downtime, throttling).  What the harness peer does not implement
is refused with one line ("... is not implemented by the harness peer"): a capability
turned on, a parameter set to anything but its default; never accepted and ignored.

multifd (source/multifd.py, destination/multifd.py) differs from 7.2 on purpose in three
places: `multifd-zlib-level` / `multifd-zstd-level` are honoured by migrate-set-parameters
and range-checked (7.2 silently ignores both there: facts M14); multifd together with
postcopy-preempt is refused (7.2 accepts it, then its destination deadlocks: facts P7);
XBZRLE together with multifd is refused (7.2 sends every non-zero page on a multifd
channel, so XBZRLE would be on and never used: ram.c: ram_save_target_page).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from harness.errors import ScenarioFailure

#: qapi/migration.json MigrationCapability, QEMU 7.2 order
CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path", "pause-before-switchover",
    "multifd", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
)

#: capabilities this harness implements (tests/unit/test_migration_settings.py names the
#: test showing each one's effect); the others are refused when turned on, and
#: query-migrate-capabilities leaves them out, as QEMU 7.2 leaves out `block` when built
#: without live block migration (migration/migration.c: qmp_query_migrate_capabilities)
SUPPORTED_CAPABILITIES = frozenset({
    "xbzrle", "auto-converge", "compress", "events", "postcopy-ram", "return-path",
    "x-ignore-shared", "validate-uuid", "postcopy-blocktime", "pause-before-switchover",
    "postcopy-preempt", "multifd", "block", "zero-blocks",
})

#: MigrationParameters of QEMU 7.2 with their defaults
PARAMETER_DEFAULTS: dict[str, Any] = {
    "announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
    "compress-level": 1, "compress-threads": 8, "compress-wait-thread": True,
    "decompress-threads": 2, "throttle-trigger-threshold": 50, "cpu-throttle-initial": 20,
    "cpu-throttle-increment": 10, "cpu-throttle-tailslow": False, "tls-creds": "",
    "tls-hostname": "", "tls-authz": "", "max-bandwidth": 134217728, "downtime-limit": 300,
    "x-checkpoint-delay": 20000, "block-incremental": False, "multifd-channels": 2,
    "xbzrle-cache-size": 67108864, "max-postcopy-bandwidth": 0, "max-cpu-throttle": 99,
    "multifd-compression": "none", "multifd-zlib-level": 1, "multifd-zstd-level": 1,
}

#: parameters the harness peer does not implement: accepted at their default only (it has
#: no NIC to announce, no COLO; its compression threads never leave a page to be sent raw,
#: so `compress-wait-thread: false` would change nothing).  `block-incremental` is honoured:
#: the harness's drives have no backing file, so it sends every chunk, as 7.2 does for a
#: raw image without one (B4)
UNIMPLEMENTED_PARAMETERS = frozenset({
    "announce-initial", "announce-max", "announce-rounds", "announce-step",
    "x-checkpoint-delay", "compress-wait-thread",
})

#: name -> (low, high, QEMU's "expects ..." text): the one table of QEMU 7.2's ranges
#: (migration/migration.c: migrate_params_check); scenario validation uses it too
PARAMETER_RANGES: dict[str, tuple[int, int, str]] = {
    "compress-level": (0, 9, "a value between 0 and 9"),
    "compress-threads": (1, 255, "a value between 1 and 255"),
    "decompress-threads": (1, 255, "a value between 1 and 255"),
    "throttle-trigger-threshold": (1, 100, "an integer in the range of 1 to 100"),
    "cpu-throttle-initial": (1, 99, "an integer in the range of 1 to 99"),
    "cpu-throttle-increment": (1, 99, "an integer in the range of 1 to 99"),
    "max-bandwidth": (0, 2**64 - 1,
                      "an integer in the range of 0 to 18446744073709551615 bytes/second"),
    "downtime-limit": (0, 2000 * 1000, "an integer in the range of 0 to (2000 * 1000) ms"),
    "multifd-channels": (1, 255, "a value between 1 and 255"),
    "multifd-zlib-level": (0, 9, "a value between 0 and 9"),
    "multifd-zstd-level": (0, 20, "a value between 0 and 20"),
    "announce-initial": (0, 100000, "a value between 0 and 100000"),
    "announce-max": (0, 100000, "a value between 0 and 100000"),
    "announce-rounds": (0, 1000, "a value between 0 and 1000"),
    "announce-step": (1, 10000, "a value between 0 and 10000"),  # sic: QEMU checks >= 1
    "max-postcopy-bandwidth": (0, 2**64 - 1,
                               ("an integer in the range of 0 to 18446744073709551615 "
                               "bytes/second")),
    "x-checkpoint-delay": (0, 2**32 - 1, "an integer"),
}

#: parameters QEMU applies to a running migration
LIVE_PARAMETERS = frozenset({"max-bandwidth", "downtime-limit", "max-postcopy-bandwidth",
                             "cpu-throttle-initial", "cpu-throttle-increment",
                             "max-cpu-throttle", "throttle-trigger-threshold",
                             "cpu-throttle-tailslow", "xbzrle-cache-size",
                             "compress-level", "x-checkpoint-delay"})

MIGRATION_ACTIVE = "There's a migration process in progress"

#: postcopy-ram.c: postcopy_preempt_setup, when the URI is not a socket
PREEMPT_NEEDS_MULTI_CHANNELS = ("Postcopy preempt is not supported as current migration "
                                "stream does not support multi-channels.")
#: the URI schemes QEMU 7.2 allows more than one channel on (migration.c: qmp_migrate and
#: qemu_start_incoming_migration call migrate_protocol_allow_multi_channels(true) only
#: for these; exec: and fd:, even an fd that is a socket, stay single-channel)
MULTI_CHANNEL_SCHEMES = ("tcp:", "unix:", "vsock:")
#: multifd.c: multifd_save_setup / migration.c: migrate_caps_check, for exec: and fd:
MULTIFD_NEEDS_SOCKET = "multifd is not supported by current protocol"
#: the harness peers' refusal of multifd with postcopy-preempt (QEMU 7.2 accepts it)
MULTIFD_PREEMPT_REFUSED = ("multifd with postcopy-preempt is refused by the harness peer: "
                           "QEMU 7.2 accepts it, then its destination reads the preempt "
                           "channel as a multifd channel and deadlocks")
MULTIFD_XBZRLE_REFUSED = ("xbzrle with multifd is refused by the harness peer: QEMU 7.2 "
                          "sends every non-zero page on a multifd channel, never as XBZRLE")


def multifd_compressions() -> tuple[str, ...]:
    """multifd-compression values served here (qapi: zstd only `if CONFIG_ZSTD`; here,
    only when the `zstandard` package imports)."""
    from harness.protocol.multifd import compressions

    return compressions()


def not_implemented(what: str) -> str:
    """The one-line refusal of a setting the harness peer does not implement."""
    return f"{what} is not implemented by the harness peer"


def preempt_uri_refusal(capabilities: dict[str, bool], uri: str) -> str | None:
    """Why postcopy-preempt cannot run over `uri` (None when it can, or is off).

    QEMU 7.2 applies it on the source in migrate_fd_connect -> postcopy_preempt_setup:
    `migrate` itself is accepted, then the migration fails with this text.  A 7.2
    destination has no such check: with exec:/fd: it waits for a second channel that
    cannot come (migration_has_all_channels); the harness destination refuses
    `migrate-incoming` with the same words instead of waiting forever."""
    if not capabilities.get("postcopy-preempt"):
        return None
    if uri.startswith(MULTI_CHANNEL_SCHEMES):
        return None
    return PREEMPT_NEEDS_MULTI_CHANNELS


def harness_caps_refusal(capabilities: dict[str, bool]) -> str | None:
    """Why a harness peer refuses this set of capabilities turned on together (None when
    it takes them): QEMU 7.2's combinations and the harness's own (multifd with
    postcopy-preempt or xbzrle); for scenario validation."""
    full = {name: bool(capabilities.get(name)) for name in CAPABILITIES}
    try:
        _check_caps(full)
    except ConfigError as err:
        return str(err)
    return None


def multifd_uri_refusal(capabilities: dict[str, bool], uri: str) -> str | None:
    """Why multifd cannot run over `uri` (None when it can, or is off): QEMU 7.2 fails
    the migration (source) or migrate-set-capabilities (destination) with this text."""
    if not capabilities.get("multifd") or uri.startswith(MULTI_CHANNEL_SCHEMES):
        return None
    return MULTIFD_NEEDS_SOCKET


def tls_refusal(parameters: dict[str, Any]) -> str | None:
    """Nothing: TLS is implemented (harness.transport.tls, in the peers' connector and
    listener, with QEMU's words for a missing or wrong credentials object).  Kept so that
    its callers need no change; it may go."""
    return None


class ConfigError(ScenarioFailure, ValueError):
    """A refused capability or parameter, in QEMU's words."""


@dataclass
class MigrationConfig:
    capabilities: dict[str, bool]
    parameters: dict[str, Any]

    @classmethod
    def default(cls) -> MigrationConfig:
        return cls({name: False for name in CAPABILITIES}, dict(PARAMETER_DEFAULTS))

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def cap(self, name: str) -> bool:
        return self.capabilities[name]

    def param(self, name: str) -> Any:
        return self.parameters[name]

    # ------------------------------------------------------------------ QMP
    def set_capabilities(self, caps: list[dict[str, Any]], running: bool) -> None:
        """migrate-set-capabilities: [{"capability": NAME, "state": bool}, ...]."""
        if running:
            raise ConfigError(MIGRATION_ACTIVE)
        new = dict(self.capabilities)
        for item in caps:
            name = item.get("capability")
            state = item.get("state")
            if name not in new:
                raise ConfigError(f"Parameter 'capability' does not accept value '{name}'")
            if not isinstance(state, bool):
                raise ConfigError("Invalid parameter type for 'state', expected: boolean")
            if state and name not in SUPPORTED_CAPABILITIES:
                raise ConfigError(not_implemented(f"Capability '{name}'"))
            new[name] = state
        _check_caps(new)
        with self._lock:
            self.capabilities = new

    def set_parameters(self, params: dict[str, Any], running: bool = False) -> None:
        """migrate-set-parameters: QMP names, checked as QEMU checks them.

        As in QEMU, parameters may change while a migration runs (`running` is only
        informative): those in LIVE_PARAMETERS take effect at once, the others at the
        next migration."""
        new = dict(self.parameters)
        for name, value in params.items():
            if name not in new:
                raise ConfigError(f"Parameter '{name}' is unexpected")
            new[name] = _check_param(name, value, new[name])
            if name in UNIMPLEMENTED_PARAMETERS and new[name] != PARAMETER_DEFAULTS[name]:
                raise ConfigError(not_implemented(f"Parameter '{name}'") + " (only its "
                                  f"default {json.dumps(PARAMETER_DEFAULTS[name])})")
        if new["max-cpu-throttle"] < new["cpu-throttle-initial"] or new["max-cpu-throttle"] > 99:
            raise ConfigError("Parameter 'max_cpu_throttle' expects an integer in the range of "
                              "cpu_throttle_initial to 99")
        size = new["xbzrle-cache-size"]
        if size < 4096 or size & (size - 1):
            raise ConfigError("Parameter 'xbzrle_cache_size' expects a power of two no less "
                              "than the target page size")
        with self._lock:
            self.parameters = new

    def query_capabilities(self) -> list[dict[str, Any]]:
        return [{"capability": n, "state": s} for n, s in self.capabilities.items()
                if n in SUPPORTED_CAPABILITIES]

    def query_parameters(self) -> dict[str, Any]:
        return dict(self.parameters)


def _check_param(name: str, value: Any, old: Any) -> Any:
    c_name = name.replace("-", "_")
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"Invalid parameter type for '{name}', expected: boolean")
        return value
    if isinstance(old, str):
        if not isinstance(value, str):
            raise ConfigError(f"Invalid parameter type for '{name}', expected: string")
        if name == "multifd-compression" and value not in multifd_compressions():
            raise ConfigError(f"Parameter '{name}' does not accept value '{value}'")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"Invalid parameter type for '{name}', expected: integer")
    if name == "multifd-channels" and not 0 <= value <= 255:
        raise ConfigError(f"Parameter '{name}' expects uint8_t")  # the QAPI type's check
    low, high, text = PARAMETER_RANGES.get(name, (0, 2**63 - 1, "an integer"))
    if not low <= value <= high:
        raise ConfigError(f"Parameter '{c_name}' expects {text}")
    return value


def _check_caps(caps: dict[str, bool]) -> None:
    """migration/migration.c: migrate_caps_check (the combinations QEMU 7.2 refuses)."""
    if caps["postcopy-ram"] and caps["x-ignore-shared"]:
        raise ConfigError("Postcopy is not compatible with ignore-shared")
    if caps["postcopy-preempt"] and not caps["postcopy-ram"]:
        raise ConfigError("Postcopy preempt requires postcopy-ram")
    if caps["postcopy-preempt"] and caps["compress"]:
        raise ConfigError("Postcopy preempt not compatible with compress")
    if caps["multifd"] and caps["compress"]:
        raise ConfigError("Multifd is not compatible with compress")
    if caps["multifd"] and caps["postcopy-preempt"]:
        raise ConfigError(MULTIFD_PREEMPT_REFUSED)
    if caps["multifd"] and caps["xbzrle"]:
        raise ConfigError(MULTIFD_XBZRLE_REFUSED)
