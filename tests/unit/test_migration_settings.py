"""Every capability and parameter QEMU 7.2 lists is implemented by the harness peer (a named
test shows its effect) or refused by it -- none is accepted and ignored.

The tables below are the inventory: a new name in harness.migration.config fails here
until it is put in one of them.  Refusals are checked on the peer's MigrationConfig (what
`migrate-set-capabilities` / `migrate-set-parameters` run) and in scenario validation,
which refuses the same settings for `kind: harness` peers only.
"""

from __future__ import annotations

import json
import re

import pytest

from harness.migration.config import (
    CAPABILITIES,
    PARAMETER_DEFAULTS,
    SUPPORTED_CAPABILITIES,
    UNIMPLEMENTED_PARAMETERS,
    ConfigError,
    MigrationConfig,
)
from harness.scenario import ScenarioError, parse_scenario
from harness.scenario.names import PLAIN_ACTIONS
from tests.conftest import REPO

E2E = "tests/e2e/test_migration_settings.py"
CONVERGENCE = "tests/pair/test_convergence_pair.py"
THROTTLE = "tests/unit/test_xbzrle_convergence.py"
MULTIFD = "tests/pair/test_multifd_pair.py"

#: capability -> the test that shows what it does (file::function)
IMPLEMENTED_CAPABILITIES = {
    "xbzrle": f"{CONVERGENCE}::test_xbzrle_sends_deltas_of_the_hot_set",
    "auto-converge": f"{CONVERGENCE}::test_auto_converge_throttles_the_guest_until_precopy_"
                     "converges",
    "compress": f"{CONVERGENCE}::test_compression_threads_on_both_sides",
    "events": "tests/e2e/test_qmp_socket.py::test_qemu_qmp_migrates_and_hears_migration_events",
    "postcopy-ram": "tests/e2e/test_qmp_socket.py::test_migrate_start_postcopy_reaches_"
                    "postcopy_active_then_completes",
    "return-path": "tests/pair/test_precopy_pair.py::test_return_path_gets_pong_and_shut",
    "pause-before-switchover": f"{E2E}::test_pause_before_switchover_waits_in_pre_switchover_"
                               "until_migrate_continue",
    "x-ignore-shared": f"{E2E}::test_x_ignore_shared_stream_is_well_formed_and_migrates_"
                       "everything",
    "validate-uuid": f"{E2E}::test_validate_uuid_refuses_a_guest_with_another_uuid",
    "postcopy-blocktime": f"{E2E}::test_postcopy_blocktime_is_reported_only_with_its_capability",
    "postcopy-preempt": "tests/pair/test_preempt_destination.py::test_requested_pages_come_on_"
                        "preempt_and_wake_the_guest",
    "multifd": f"{MULTIFD}::test_multifd_pair_moves_memory_with_one_sync_per_ram_eos",
    "block": "tests/e2e/test_block_qemu.py::test_block_migration_disks_identical_in_qemu_order",
    "zero-blocks": "tests/unit/test_block_save.py::test_bulk_then_completion_rebuilds_the_disk",
}
REFUSED_CAPABILITIES = {
    "rdma-pin-all", "x-colo", "release-ram", "dirty-bitmaps",
    "late-block-activate", "background-snapshot", "zero-copy-send",
}

IMPLEMENTED_PARAMETERS = {
    # the harness's drives have no backing file: every chunk goes, as 7.2's for a raw image
    "block-incremental": "tests/unit/test_block_save.py::test_blk_inc_for_one_migration_and_"
                         "the_mixing_error",
    "compress-level": f"{CONVERGENCE}::test_compression_threads_on_both_sides",
    "compress-threads": f"{CONVERGENCE}::test_compression_threads_on_both_sides",
    "decompress-threads": f"{CONVERGENCE}::test_compression_threads_on_both_sides",
    "throttle-trigger-threshold": f"{THROTTLE}::test_tailslow_raises_only_what_should_bring_"
                                  "the_dirty_rate_to_the_threshold",
    "cpu-throttle-initial": f"{THROTTLE}::test_throttle_starts_on_the_second_bad_period_then_"
                            "steps_up_to_the_maximum",
    "cpu-throttle-increment": f"{THROTTLE}::test_throttle_starts_on_the_second_bad_period_then_"
                              "steps_up_to_the_maximum",
    "cpu-throttle-tailslow": f"{THROTTLE}::test_tailslow_raises_only_what_should_bring_the_"
                             "dirty_rate_to_the_threshold",
    "max-cpu-throttle": f"{THROTTLE}::test_throttle_starts_on_the_second_bad_period_then_"
                        "steps_up_to_the_maximum",
    # TLS: `migrate` fails as QEMU 7.2's does without the credentials object
    "tls-creds": f"{E2E}::test_tls_creds_fail_the_migration_as_qemu_does_without_the_object",
    "tls-hostname": f"{E2E}::test_tls_creds_fail_the_migration_as_qemu_does_without_the_object",
    "tls-authz": f"{E2E}::test_tls_creds_fail_the_migration_as_qemu_does_without_the_object",
    "max-bandwidth": "tests/e2e/test_qmp_socket.py::test_migrate_cancel_on_a_slow_migration_"
                     "cancels",
    "downtime-limit": "tests/e2e/test_destination_vcpu.py::test_the_destination_vcpu_process_"
                      "exists_before_the_guest_runs_there",
    "xbzrle-cache-size": f"{CONVERGENCE}::test_xbzrle_sends_deltas_of_the_hot_set",
    "max-postcopy-bandwidth": f"{E2E}::test_pause_before_switchover_before_postcopy_then_"
                              "postcopy_active",
    "multifd-channels": f"{MULTIFD}::test_multifd_pair_moves_memory_with_one_sync_per_ram_eos",
    "multifd-compression": f"{MULTIFD}::test_multifd_pair_moves_memory_with_one_sync_per_ram_eos",
    # honoured, unlike 7.2's migrate-set-parameters (facts M14)
    "multifd-zlib-level": f"{MULTIFD}::test_wire_zero_pages_on_main_one_sync_per_eos_and_the_"
                          "level_used",
    "multifd-zstd-level": f"{MULTIFD}::test_wire_zero_pages_on_main_one_sync_per_eos_and_the_"
                          "level_used",
}


def _test_exists(where: str) -> bool:
    path, _, name = where.partition("::")
    text = (REPO / path).read_text()
    return re.search(rf"^(async )?def {re.escape(name)}\(", text, re.MULTILINE) is not None


def test_every_capability_is_implemented_or_refused_and_never_both():
    assert set(IMPLEMENTED_CAPABILITIES) | REFUSED_CAPABILITIES == set(CAPABILITIES)
    assert not set(IMPLEMENTED_CAPABILITIES) & REFUSED_CAPABILITIES
    assert set(IMPLEMENTED_CAPABILITIES) == SUPPORTED_CAPABILITIES


def test_every_parameter_is_implemented_or_refused_and_never_both():
    assert set(IMPLEMENTED_PARAMETERS) | UNIMPLEMENTED_PARAMETERS == set(PARAMETER_DEFAULTS)
    assert not set(IMPLEMENTED_PARAMETERS) & UNIMPLEMENTED_PARAMETERS


@pytest.mark.parametrize("where", sorted(set(IMPLEMENTED_CAPABILITIES.values())
                                         | set(IMPLEMENTED_PARAMETERS.values())))
def test_each_implemented_setting_names_a_test_that_exists(where):
    assert _test_exists(where), where


@pytest.mark.parametrize("name", sorted(REFUSED_CAPABILITIES))
def test_refused_capability_is_refused_in_one_line_and_not_listed(name):
    config = MigrationConfig.default()
    with pytest.raises(ConfigError) as err:
        config.set_capabilities([{"capability": name, "state": True}], running=False)
    assert str(err.value) == f"Capability '{name}' is not implemented by the harness peer"
    assert config.cap(name) is False
    config.set_capabilities([{"capability": name, "state": False}], running=False)  # off: fine
    assert name not in {c["capability"] for c in config.query_capabilities()}


@pytest.mark.parametrize("name", sorted(IMPLEMENTED_CAPABILITIES))
def test_implemented_capability_is_settable_and_listed(name):
    config = MigrationConfig.default()
    needs = {"postcopy-preempt": ("postcopy-ram",)}.get(name, ())  # migrate_caps_check
    config.set_capabilities([{"capability": n, "state": True} for n in (*needs, name)],
                            running=False)
    assert config.cap(name) is True
    assert {"capability": name, "state": True} in config.query_capabilities()


def _other_value(name: str) -> object:
    default = PARAMETER_DEFAULTS[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, str):
        return "zlib" if name == "multifd-compression" else "x"
    return default + 1


@pytest.mark.parametrize("name", sorted(UNIMPLEMENTED_PARAMETERS))
def test_refused_parameter_takes_its_default_only(name):
    config = MigrationConfig.default()
    config.set_parameters({name: PARAMETER_DEFAULTS[name]})
    with pytest.raises(ConfigError) as err:
        config.set_parameters({name: _other_value(name)})
    assert str(err.value) == (f"Parameter '{name}' is not implemented by the harness peer "
                              f"(only its default {json.dumps(PARAMETER_DEFAULTS[name])})")
    assert config.param(name) == PARAMETER_DEFAULTS[name]


@pytest.mark.parametrize("name", sorted(IMPLEMENTED_PARAMETERS))
def test_implemented_parameter_takes_another_value(name):
    config = MigrationConfig.default()
    value = {"xbzrle-cache-size": 1 << 20, "max-cpu-throttle": 90, "compress-level": 9,
             "cpu-throttle-initial": 30}.get(name, _other_value(name))
    config.set_parameters({name: value})
    assert config.param(name) == value


# ---------------------------------------------------------------------- scenario validation
def _scenario(body: str, kinds: tuple[str, str] = ("harness", "harness")) -> str:
    return (f"name: s\nsource: {{kind: {kinds[0]}}}\ndestination: {{kind: {kinds[1]}}}\n"
            + body)


@pytest.mark.parametrize("body, field, says", [
    ("capabilities: {release-ram: true}\n", "capabilities.release-ram",
     "release-ram is not implemented by the harness peer"),
    ("capabilities: {multifd: true, postcopy-ram: true, postcopy-preempt: true}\n",
     "capabilities", ("multifd with postcopy-preempt is refused by the harness peer: QEMU 7.2 "
     "accepts it, then its destination reads the preempt channel as a multifd channel and "
     "deadlocks")),
    ("parameters: {x-checkpoint-delay: 5}\n", "parameters.x-checkpoint-delay",
     "x-checkpoint-delay is not implemented by the harness peer (only its default 20000)"),
    ("parameters: {tls-creds: tls0}\n", "parameters.tls-creds",
     ("a harness peer gets its TLS objects and tls-creds from a tls: block; without it "
      "`migrate` would fail with \"No TLS credentials with id 'tls0'\"")),
    ("parameters: {tls-hostname: dst}\n", "parameters.tls-hostname",
     "a harness peer gets its TLS objects and tls-hostname from a tls: block"),
    ("steps:\n  - {on: {pass: 1}, do: {migrate-set-parameters: {announce-rounds: 3}}}\n",
     "steps[0].do.migrate-set-parameters.announce-rounds",
     "announce-rounds is not implemented by the harness peer"),
])
def test_scenario_for_harness_peers_refuses_what_they_do_not_implement(body, field, says):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_scenario(body))
    text = str(err.value)
    assert f"{field}: {says}" in text and "(source.kind: harness;" in text


def test_scenario_with_one_harness_peer_names_it():
    with pytest.raises(ScenarioError, match=r"\(destination\.kind: harness;"):
        parse_scenario(_scenario("capabilities: {release-ram: true}\n", ("qemu", "harness")))


def test_scenario_for_qemu_peers_may_set_them_and_defaults_pass_for_harness_peers():
    body = ("capabilities: {release-ram: true, pause-before-switchover: true}\n"
            "parameters: {multifd-channels: 4, tls-creds: tls0, announce-step: 200}\n")
    s = parse_scenario(_scenario(body, ("qemu", "qemu")))
    assert s.parameters.qmp_arguments()["tls-creds"] == "tls0"
    parse_scenario(_scenario("capabilities: {pause-before-switchover: true}\n"
                             "parameters: {multifd-channels: 2, tls-creds: ''}\n"))


def test_migrate_continue_is_a_step_action_and_pre_switchover_a_status_trigger():
    assert "migrate-continue" in PLAIN_ACTIONS
    s = parse_scenario(_scenario(
        "capabilities: {pause-before-switchover: true}\nsteps:\n"
        "  - {on: {status: {peer: source, is: pre-switchover}}, do: migrate-continue}\n"))
    assert s.steps[0].action_name == "migrate-continue"
    assert s.steps[0].on.status.is_ == "pre-switchover"


def test_migrate_continue_and_a_pre_switchover_trigger_need_the_capability():
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_scenario(
            "steps:\n  - {on: {status: {peer: source, is: pre-switchover}}, do: migrate-continue}\n"))
    text = str(err.value)
    assert ("steps[0].do: migrate-continue needs capabilities: {pause-before-switchover: true}"
            in text)
    assert "steps[0].on.status.is: pre-switchover needs capabilities" in text


@pytest.mark.parametrize("caps, params, says", [
    (("multifd", "compress"), {}, "Multifd is not compatible with compress"),
    (("multifd", "postcopy-ram", "postcopy-preempt"), {},
     ("multifd with postcopy-preempt is refused by the harness peer: QEMU 7.2 accepts it, then "
     "its destination reads the preempt channel as a multifd channel and deadlocks")),
    (("multifd", "xbzrle"), {}, ("xbzrle with multifd is refused by the harness peer: QEMU 7.2 "
     "sends every non-zero page on a multifd channel, never as XBZRLE")),
    ((), {"multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
    ((), {"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
    ((), {"multifd-compression": "lz4"},
     "Parameter 'multifd-compression' does not accept value 'lz4'"),
    ((), {"multifd-zlib-level": 10}, ("Parameter 'multifd_zlib_level' expects a value between 0 "
     "and 9")),
])
def test_multifd_settings_are_refused_in_one_line(caps, params, says):
    """QEMU 7.2's words (facts M9, M14, X4), and the harness's own refusals (P7)."""
    config = MigrationConfig.default()
    with pytest.raises(ConfigError) as err:
        if caps:
            config.set_capabilities([{"capability": c, "state": True} for c in caps],
                                    running=False)
        config.set_parameters(params)
    assert str(err.value) == says
