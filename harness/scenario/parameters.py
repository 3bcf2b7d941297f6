"""Migration capabilities and parameters, checked the way QEMU 7.2 checks them.

Strategy: `MigrationParameters` is QEMU 7.2's `MigrateSetParameters` as a model: one optional
field per member, so an unknown name is an unknown key and each value has its QAPI type.
Ranges are QEMU's own (migration/migration.c: migrate_params_check), with QEMU's wording,
so a scenario that validates here is not refused by a real QEMU later. Sizes and rates
accept units; millisecond parameters accept durations. Capabilities stay a plain mapping
name -> bool (what `migrate-set-capabilities` takes); the combinations QEMU refuses
(migration/migration.c: migrate_caps_check) are refused here too.  What a `kind: harness`
peer does not implement (`harness_peer_issues`) is refused too, when a peer is one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, StrictInt, model_validator

from harness.migration.config import (
    PARAMETER_DEFAULTS,
    PARAMETER_RANGES,
    SUPPORTED_CAPABILITIES,
    UNIMPLEMENTED_PARAMETERS,
    harness_caps_refusal,
    not_implemented,
)

from .base import (
    Issue,
    Milliseconds,
    Rate,
    ScenarioModel,
    Size,
    choice,
    in_range,
    raise_issues,
    unknown_name,
)
from .names import CAPABILITIES, LATER_CAPABILITIES, LATER_PARAMETERS, TARGET_PAGE_SIZE

SIZE_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1
MAX_MIGRATE_DOWNTIME_MS = 2000 * 1000  # migration/migration.c: MAX_MIGRATE_DOWNTIME_SECONDS
MultiFDCompression = Literal["none", "zlib", "zstd"]  # qapi/migration.json, QEMU 7.2
MULTIFD_COMPRESSIONS: tuple[str, ...] = get_args(MultiFDCompression)
DEFAULT_CPU_THROTTLE_INITIAL = 20  # migration/migration.c: DEFAULT_MIGRATE_CPU_THROTTLE_INITIAL


def _qemu(name: str, low: int, high: int, words: str | None = None) -> AfterValidator:
    return AfterValidator(in_range(low, high, words, name=name))


def _power_of_two_page(value: int | None) -> int | None:
    if value is not None and (value < TARGET_PAGE_SIZE or value & (value - 1)):
        raise ValueError("xbzrle-cache-size expects a power of two no less than the target "
                         f"page size ({TARGET_PAGE_SIZE}), got {value}")
    return value


def _qemu_range(name: str) -> AfterValidator:
    """QEMU 7.2's range and words for `name` (harness.migration.config has the table)."""
    low, high, words = PARAMETER_RANGES[name]
    return _qemu(name, low, high, words)


class MigrationParameters(ScenarioModel):
    """QEMU 7.2 `MigrateSetParameters`; unset members are None and are not sent."""

    announce_initial: Annotated[Milliseconds | None, _qemu_range("announce-initial")] = None
    announce_max: Annotated[Milliseconds | None, _qemu_range("announce-max")] = None
    announce_rounds: Annotated[StrictInt | None, _qemu_range("announce-rounds")] = None
    announce_step: Annotated[Milliseconds | None, _qemu_range("announce-step")] = None
    compress_level: Annotated[StrictInt | None, _qemu_range("compress-level")] = None
    compress_threads: Annotated[StrictInt | None, _qemu_range("compress-threads")] = None
    compress_wait_thread: bool | None = None
    decompress_threads: Annotated[StrictInt | None, _qemu_range("decompress-threads")] = None
    throttle_trigger_threshold: Annotated[
        StrictInt | None, _qemu_range("throttle-trigger-threshold")] = None
    cpu_throttle_initial: Annotated[StrictInt | None, _qemu_range("cpu-throttle-initial")] = None
    cpu_throttle_increment: Annotated[
        StrictInt | None, _qemu_range("cpu-throttle-increment")] = None
    cpu_throttle_tailslow: bool | None = None
    tls_creds: str | None = None
    tls_hostname: str | None = None
    tls_authz: str | None = None
    max_bandwidth: Annotated[Rate | None, _qemu_range("max-bandwidth")] = None
    downtime_limit: Annotated[Milliseconds | None, _qemu_range("downtime-limit")] = None
    x_checkpoint_delay: Annotated[Milliseconds | None, _qemu_range("x-checkpoint-delay")] = None
    block_incremental: bool | None = None
    multifd_channels: Annotated[StrictInt | None, _qemu_range("multifd-channels")] = None
    xbzrle_cache_size: Annotated[Size | None, AfterValidator(_power_of_two_page)] = None
    max_postcopy_bandwidth: Annotated[Rate | None, _qemu_range("max-postcopy-bandwidth")] = None
    max_cpu_throttle: Annotated[StrictInt | None, _qemu(
        "max-cpu-throttle", 1, 99, "an integer in the range of cpu-throttle-initial to 99")
                                ] = None
    multifd_compression: Annotated[MultiFDCompression, choice(
        "a multifd compression method", MULTIFD_COMPRESSIONS)] | None = None
    multifd_zlib_level: Annotated[StrictInt | None, _qemu_range("multifd-zlib-level")] = None
    multifd_zstd_level: Annotated[StrictInt | None, _qemu_range("multifd-zstd-level")] = None
    block_bitmap_mapping: tuple[dict[str, Any], ...] | None = None

    @classmethod
    def unknown_key_message(cls, key: object) -> str:
        return unknown_name(key, "a migration parameter", cls.file_keys(), LATER_PARAMETERS)

    @model_validator(mode="after")
    def _throttle_pair(self) -> MigrationParameters:
        """Both set here; against the value already in force is Scenario's check."""
        issue = self.cpu_throttle_initial is not None and throttle_issue(
            self, self.cpu_throttle_initial)
        raise_issues([issue] if issue else [])
        return self

    def qmp_arguments(self) -> dict[str, Any]:
        """The `migrate-set-parameters` arguments: only the members the file set."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def throttle_issue(params: MigrationParameters, initial: int | None) -> Issue | None:
    """max-cpu-throttle must not be below cpu-throttle-initial (QEMU checks the merged set)."""
    limit = params.max_cpu_throttle
    initial = DEFAULT_CPU_THROTTLE_INITIAL if initial is None else initial
    if limit is None or limit >= initial:
        return None
    return Issue(("max-cpu-throttle",), "max-cpu-throttle expects an integer in the range of "
                 f"cpu-throttle-initial ({initial}) to 99, got {limit}")


def _capability_names(value: object) -> object:
    if isinstance(value, Mapping):
        raise_issues([Issue((name,), unknown_name(name, "a migration capability", CAPABILITIES,
                                                  LATER_CAPABILITIES), at_key=True)
                      for name in value if name not in CAPABILITIES])
    return value


#: (capability, another it needs on or off, QEMU 7.2's words), migrate_caps_check
_CAPABILITY_RULES = (
    ("postcopy-ram", "compress", False, "Postcopy is not currently compatible with compression"),
    ("postcopy-ram", "x-ignore-shared", False, "Postcopy is not compatible with ignore-shared"),
    ("postcopy-preempt", "postcopy-ram", True, "Postcopy preempt requires postcopy-ram"),
    ("postcopy-preempt", "compress", False, "Postcopy preempt not compatible with compress"),
)


def _capability_combinations(caps: Mapping[str, bool]) -> Mapping[str, bool]:
    raise_issues(capability_issues(caps))
    return caps


Capabilities = Annotated[dict[str, bool], BeforeValidator(_capability_names),
                         AfterValidator(_capability_combinations)]
#: a peer's own `capabilities:` (over the scenario's): names checked here, combinations
#: on the merged set (`capability_issues`), since one may need the other's key
PeerCapabilities = Annotated[dict[str, bool], BeforeValidator(_capability_names)]


def capability_issues(caps: Mapping[str, bool]) -> list[Issue]:
    """QEMU 7.2's refused combinations in `caps` (a peer's merged set), one issue each."""
    return [Issue((name,), f"{message} (QEMU 7.2: migrate_caps_check)")
            for name, other, wanted, message in _CAPABILITY_RULES
            if caps.get(name) and bool(caps.get(other)) != wanted]


def harness_peer_issues(peer: str, capabilities: Mapping[str, bool],
                        places: list[tuple[tuple[Any, ...], MigrationParameters]]) -> list[Issue]:
    """What a `kind: harness` peer would refuse (harness.migration.config has the tables):
    a capability it does not implement turned on, a parameter it does not implement set
    to anything but QEMU's default, and tls-* parameters, which only a `tls:` block can
    give it together with their objects (harness/scenario/tls.py).  A scenario whose peers are both
    QEMU may set them all: QEMU honours them."""
    why = f"({peer}.kind: harness; only QEMU peers may use it)"
    issues = [Issue((name,), f"{not_implemented(name)} {why}")
              for name, on in capabilities.items()
              if on and name in CAPABILITIES and name not in SUPPORTED_CAPABILITIES]
    issues = [Issue(("capabilities", *i.path), i.message) for i in issues]
    combination = None if issues else harness_caps_refusal(dict(capabilities))
    if combination:  # e.g. multifd with postcopy-preempt: 7.2 deadlocks, the harness refuses
        issues.append(Issue(("capabilities",), f"{combination} {why}"))
    for path, params in places:
        for name, value in params.qmp_arguments().items():
            if name.startswith("tls-") and value:
                words = (f"; without it `migrate` would fail with \"No TLS credentials with "
                         f"id '{value}'\"" if name == "tls-creds" else "")
                issues.append(Issue((*path, name), "a harness peer gets its TLS objects and "
                                    f"{name} from a tls: block{words} {why}"))
            elif (name in UNIMPLEMENTED_PARAMETERS and value is not None
                  and value != PARAMETER_DEFAULTS[name]):
                issues.append(Issue((*path, name), f"{not_implemented(name)} (only its default "
                                    f"{json.dumps(PARAMETER_DEFAULTS[name])}) {why}"))
    return issues
