"""The scenario model: DESIGN.md's example validates, every key means what it says."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from harness.scenario import (
    BytesTrigger,
    CommandAction,
    CommandTrigger,
    EventTrigger,
    Guest,
    LinkFault,
    MigrationParameters,
    NetFault,
    PassTrigger,
    ProcessFault,
    ProgressTrigger,
    RemainingTrigger,
    Scenario,
    ScenarioError,
    SetParametersAction,
    StatusTrigger,
    Step,
    TimeTrigger,
    load_scenario,
    names,
    parse_scenario,
)
from harness.scenario.steps import NET_FAULT_FIELDS
from harness.scenario.units import GiB, KiB, MiB
from tests.conftest import shared_file

#: DESIGN.md section 3 "Scenario file", verbatim
DESIGN_EXAMPLE = """\
name: postcopy-basic                # default: file stem
description: |                      # numbered steps, for humans
  1. ... 2. ...
seed: 7                             # drives guest content, workload and random faults
timeout: 60s                        # watchdog for the whole scenario
guest:
  machine: none                     # name sent in the configuration section
  memory: 256MiB                    # one block named "ram"; or:
  # blocks: [{name: pc.ram, size: 256MiB}, {name: pc.bios, size: 256KiB}]
  fill: 0.5                         # fraction of pages with non-zero content at start
  workload: {dirty-rate: 32MiB/s, pattern: hotset, hotset: 16MiB}   # uniform | hotset | sequential
  devices: [timer, globalstate, cpu]                                 # `blocker` = unmigratable
source: {kind: harness}             # or {kind: qemu, args: [...]}; host: NAME for agents
destination: {kind: harness}
transport: tcp                      # tcp | unix | exec | fd (or uri: "...")
capabilities: {postcopy-ram: true}  # QMP capability names
parameters: {max-bandwidth: 1GiB, downtime-limit: 300}              # QMP parameter names
steps:                              # triggers, actions and faults: see below
  - on: {pass: 2}
    do: migrate-start-postcopy
  - on: {event: page-request, count: 10}
    fault: {kind: net.reset, channel: return-path}
  - on: {status: {peer: destination, is: postcopy-paused}}
    do: migrate-recover
expect:
  source: completed                 # final MigrationStatus of each peer
  destination: completed
  memory: identical                 # identical | source-intact
  guest-runs-on: destination        # destination | source | nowhere
"""

def test_the_example_here_is_the_one_in_design_md():
    design = shared_file("DESIGN.md")
    match = re.search(r"### Scenario file.*?```yaml\n(.*?)```", design.read_text(), re.DOTALL)
    assert match is not None
    assert match.group(1) == DESIGN_EXAMPLE


def test_design_example_validates_with_every_value_in_base_units():
    s = parse_scenario(DESIGN_EXAMPLE, file="postcopy-basic.yaml")
    assert (s.name, s.description, s.seed, s.timeout) == ("postcopy-basic", "1. ... 2. ...\n", 7,
                                                          60.0)
    g = s.guest
    assert (g.machine, g.memory, g.blocks, g.fill) == ("none", 256 * MiB, None, 0.5)
    assert [(b.name, b.size) for b in g.ram_blocks] == [("ram", 256 * MiB)]
    assert (g.workload.dirty_rate, g.workload.pattern, g.workload.hotset) == (
        32 * MiB, "hotset", 16 * MiB)
    assert g.devices == ("timer", "globalstate", "cpu")
    assert s.source.kind == s.destination.kind == "harness"
    assert (s.transport.scheme, s.transport.uri) == ("tcp", None)
    assert s.capabilities == {"postcopy-ram": True} and s.postcopy
    assert (s.parameters.max_bandwidth, s.parameters.downtime_limit) == (GiB, 300)
    assert s.parameters.qmp_arguments() == {"max-bandwidth": GiB, "downtime-limit": 300}
    first, second, third = s.steps
    assert isinstance(first.on, PassTrigger) and first.on.pass_ == 2
    assert first.do == CommandAction(command="migrate-start-postcopy") and first.fault is None
    assert isinstance(second.on, EventTrigger)
    assert (second.on.event, second.on.count, second.on.probability) == ("page-request", 10, 1.0)
    assert isinstance(second.fault, NetFault) and second.do is None
    assert (second.fault.kind, second.fault.channel) == ("net.reset", "return-path")
    assert isinstance(third.on, StatusTrigger)
    assert (third.on.status.peer, third.on.status.is_) == ("destination", "postcopy-paused")
    assert third.action_name == "migrate-recover"
    e = s.expect
    assert (e.source, e.destination, e.memory, e.guest_runs_on) == (
        "completed", "completed", "identical", "destination")


def test_design_example_with_its_blocks_alternative():
    text = DESIGN_EXAMPLE.replace("  memory: 256MiB", "  # memory: 256MiB").replace(
        "  # blocks:", "  blocks:")
    guest = parse_scenario(text).guest
    assert guest.memory is None
    assert [(b.name, b.size) for b in guest.ram_blocks] == [("pc.ram", 256 * MiB),
                                                            ("pc.bios", 256 * KiB)]
    assert guest.total_memory == 256 * MiB + 256 * KiB


EVERYTHING = """\
name: everything
description: every key and every kind
seed: 42
timeout: 2m
hosts:
  left: {agent: "tcp://10.0.0.1:5555"}
  right: {agent: "tcp://10.0.0.2:5555"}
guest:
  memory: 16MiB
  fill: 1
  workload: {dirty-rate: 4M, pattern: sequential}
source: {kind: qemu, args: [-m, 16, -nodefaults], binary: /usr/bin/qemu-system-x86_64,
         host: left}
destination: {kind: qemu, host: right}  # QEMU peers may set what the harness peer refuses
transport: {uri: "unix:/tmp/migration.sock"}
capabilities: {postcopy-ram: on, events: yes, return-path: true, postcopy-preempt: true,
               xbzrle: false}
parameters:
  max-bandwidth: 100MiB/s
  max-postcopy-bandwidth: 10M
  xbzrle-cache-size: 64MiB
  downtime-limit: 0.5s
  announce-initial: 50ms
  cpu-throttle-initial: 30
  max-cpu-throttle: 90
  compress-level: 9
  multifd-channels: 4
  multifd-compression: zstd
  tls-creds: null
steps:
  - {name: start, on: {time: 1.5s}, do: stop}
  - {name: resume, after: start, on: {time: 300ms, probability: 0.3}, do: cont}
  - {on: {pass: 1}, do: {migrate-set-parameters: {max-bandwidth: 1GiB, downtime-limit: 300}}}
  - {on: {command: POSTCOPY_RUN}, do: migrate-pause}
  - {on: {bytes: {channel: return-path, after: 8MiB}}, fault: {kind: kill, target: destination}}
  - {on: {bytes: {after: 1M}}, fault: {kind: stop, target: source, duration: 1s}}
  - {on: {remaining: {below: 16MiB}}, do: migrate-start-postcopy}
  - {on: {progress: 50%}, fault: {kind: net.delay, delay: 50ms, direction: forward}}
  - {on: {event: pong}, fault: {kind: net.drop, message: REQ_PAGES}}
  - {on: {event: section, count: 3}, fault: {kind: net.corrupt, frame: PACKAGED, where: header}}
  - {on: {event: command}, fault: {kind: net.bandwidth, rate: 10MiB/s, duration: 2s}}
  - {on: {time: 3s}, fault: {kind: link.bandwidth, host: right, rate: 1M}}
  - {on: {time: 4s}, fault: {kind: link.down, host: left, duration: 1s}}
  - {on: {status: {peer: source, is: failed}}, do: migrate-cancel}
expect: {source: postcopy-paused, memory: source-intact, guest-runs-on: nowhere}
"""


def test_every_key_and_kind_together():
    s = parse_scenario(EVERYTHING)
    assert (s.seed, s.timeout) == (42, 120.0)
    assert s.hosts["left"].agent == "tcp://10.0.0.1:5555"
    assert s.source.args == ("-m", "16", "-nodefaults")  # numbers on a command line are text
    assert str(s.source.binary) == "/usr/bin/qemu-system-x86_64"
    assert (s.source.host, s.destination.host) == ("left", "right")
    assert (s.transport.scheme, s.transport.uri) == ("unix", "unix:/tmp/migration.sock")
    assert s.capabilities["events"] is True and s.capabilities["xbzrle"] is False
    p = s.parameters
    assert (p.max_bandwidth, p.max_postcopy_bandwidth, p.xbzrle_cache_size) == (
        100 * MiB, 10 * MiB, 64 * MiB)
    assert (p.downtime_limit, p.announce_initial, p.multifd_compression) == (500, 50, "zstd")
    assert "tls-creds" in p.qmp_arguments() and p.tls_creds is None  # explicit null is sent
    kinds = [type(step.on) for step in s.steps]
    assert {TimeTrigger, PassTrigger, StatusTrigger, EventTrigger, CommandTrigger, BytesTrigger,
            RemainingTrigger, ProgressTrigger} <= set(kinds)
    assert s.steps[1].after == "start" and s.steps[1].on.probability == 0.3
    assert isinstance(s.steps[2].do, SetParametersAction)
    assert s.steps[2].do.migrate_set_parameters.qmp_arguments() == {
        "max-bandwidth": GiB, "downtime-limit": 300}
    assert s.steps[5].on.bytes.channel == "main"
    assert isinstance(s.steps[5].fault, ProcessFault) and s.steps[5].fault.duration == 1.0
    drop = s.steps[8].fault
    assert isinstance(drop, NetFault) and drop.channel == "return-path"  # implied by REQ_PAGES
    assert isinstance(s.steps[11].fault, LinkFault) and s.steps[11].fault.rate == MiB
    assert s.step_named("resume") is s.steps[1]


def test_defaults():
    s = parse_scenario("name: tiny\n")
    assert (s.seed, s.timeout, s.description, s.steps, s.hosts) == (0, 60.0, "", (), {})
    assert s.guest.ram_blocks[0].name == "ram" and s.guest.memory == 64 * MiB
    assert s.guest.devices == ("timer", "globalstate") and s.guest.machine == "none"
    assert (s.guest.workload.dirty_rate, s.guest.workload.pattern) == (0, "uniform")
    assert (s.source.kind, s.destination.kind, s.transport.scheme) == ("harness", "harness", "tcp")
    assert s.capabilities == {} and s.parameters.qmp_arguments() == {}
    assert s.expect.model_dump(exclude_none=True) == {}
    assert s.source_file is None


def test_name_defaults_to_the_file_stem_and_the_path_is_kept(tmp_path):
    path = tmp_path / "kill-destination.yaml"
    path.write_text("seed: 3\n")
    s = load_scenario(path)
    assert (s.name, s.source_file) == ("kill-destination", path)


def test_a_scenario_round_trips_through_its_dump():
    s = parse_scenario(EVERYTHING)
    data = s.model_dump(mode="json", exclude_none=True)
    assert "guest-runs-on" in data["expect"] and data["steps"][0]["do"] == "stop"
    again = Scenario.model_validate(data, by_name=False)
    assert again == s


def test_models_are_frozen():
    s = parse_scenario(DESIGN_EXAMPLE)
    with pytest.raises(ValidationError):
        s.seed = 8  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.guest.fill = 0.1  # type: ignore[misc]


def test_python_code_builds_models_by_attribute_name():
    guest = Guest(memory=32 * MiB, workload={"dirty_rate": "1M", "pattern": "hotset",
                                             "hotset": "1M"})
    assert guest.workload.dirty_rate == MiB
    step = Step(on=PassTrigger(pass_=3), do="cont")
    assert step.action_name == "cont"
    assert MigrationParameters(compress_level=3).qmp_arguments() == {"compress-level": 3}


def test_file_keys_are_kebab_case_only():
    with pytest.raises(ScenarioError, match="unknown key 'dirty_rate'"):
        parse_scenario("name: x\nguest: {workload: {dirty_rate: 1M}}\n")


def test_yaml_1_1_booleans_other_than_true_false_are_plain_words():
    s = parse_scenario("name: x\ncapabilities: {postcopy-ram: on, events: off, xbzrle: no}\n"
                       "guest: {machine: yes}\n")
    assert s.capabilities == {"postcopy-ram": True, "events": False, "xbzrle": False}
    assert s.guest.machine == "yes"  # `on:` (a step's trigger key) stays the word "on" too


@pytest.mark.parametrize("trigger,cls", [
    ("{time: 1s}", TimeTrigger), ("{pass: 1}", PassTrigger),
    ("{status: {peer: source, is: active}}", StatusTrigger), ("{event: pong}", EventTrigger),
    ("{command: PING}", CommandTrigger), ("{bytes: {after: 1M}}", BytesTrigger),
    ("{remaining: {below: 1M}}", RemainingTrigger), ("{progress: 10%}", ProgressTrigger),
])
def test_each_trigger_key_picks_its_class(trigger, cls):
    s = parse_scenario(f"name: x\nsteps:\n  - on: {trigger}\n    do: stop\n")
    assert type(s.steps[0].on) is cls and s.steps[0].on.kind == cls.KEY


def _net_fault(kind: str, **fields: str) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in {"kind": kind, **fields}.items())
    return f"name: x\nsteps:\n  - on: {{pass: 1}}\n    fault: {{{body}}}\n"


VALUES = {"duration": "1s", "delay": "10ms", "rate": "1M", "message": "PING", "where": "payload",
          "frame": "SECTION_FULL", "section": "serial"}


@pytest.mark.parametrize("kind", sorted(NET_FAULT_FIELDS))
def test_each_net_fault_takes_its_table_row(kind):
    required, optional = NET_FAULT_FIELDS[kind]
    everything = {name: VALUES[name] for name in required | optional}
    fault = parse_scenario(_net_fault(kind, **everything)).steps[0].fault
    assert isinstance(fault, NetFault) and fault.kind == kind
    for missing in required:
        with pytest.raises(ScenarioError, match=f"{kind} needs {missing}:"):
            parse_scenario(_net_fault(kind, **{k: v for k, v in everything.items()
                                               if k != missing}))
    for extra in sorted(set(VALUES) - required - optional):
        with pytest.raises(ScenarioError, match=f"{extra} does not apply to {kind}") as err:
            parse_scenario(_net_fault(kind, **everything, **{extra: VALUES[extra]}))
        assert err.value.field == f"steps[0].fault.{extra}"


def test_names_agree_with_the_protocol_constants():
    from harness.protocol.constants import MigCmd, RpMsg

    assert names.MIG_CMD_NAMES == tuple(c.name for c in MigCmd if c.name != "INVALID")
    assert set(names.RP_MESSAGE_NAMES) == {m.name for m in RpMsg if m.name != "INVALID"}
    assert len(names.CAPABILITIES) == 21 and len(names.MIGRATION_STATUSES) == 14


@pytest.mark.parametrize("written,scheme,uri", [
    ("tcp", "tcp", None), ("unix", "unix", None), ("exec", "exec", None), ("fd", "fd", None),
    ("file", "file", None),
    ('{uri: "tcp:127.0.0.1:0"}', "tcp", "tcp:127.0.0.1:0"),
    ('{uri: "tcp:[::1]:4444"}', "tcp", "tcp:[::1]:4444"),
    ('{uri: "exec:cat > /dev/null"}', "exec", "exec:cat > /dev/null"),
    ('{uri: "file:/tmp/stream,offset=4096"}', "file", "file:/tmp/stream,offset=4096"),
    ('"unix:/run/migration.sock"', "unix", "unix:/run/migration.sock"),
])
def test_transport_forms(written, scheme, uri):
    transport = parse_scenario(f"name: x\ntransport: {written}\n").transport
    assert (transport.scheme, transport.uri) == (scheme, uri)


@pytest.mark.parametrize("written,attribute,value", [
    ("downtime-limit: 300", "downtime_limit", 300),
    ("downtime-limit: 300ms", "downtime_limit", 300),
    ("downtime-limit: 0.3s", "downtime_limit", 300),
    ("max-bandwidth: 32MiB/s", "max_bandwidth", 32 * MiB),
    ("max-bandwidth: 1000", "max_bandwidth", 1000),
    ("max-postcopy-bandwidth: 1G", "max_postcopy_bandwidth", GiB),
    ("xbzrle-cache-size: 4KiB", "xbzrle_cache_size", 4 * KiB),
    ("announce-step: 100ms", "announce_step", 100),
    ("cpu-throttle-tailslow: on", "cpu_throttle_tailslow", True),
    ("multifd-zstd-level: 20", "multifd_zstd_level", 20),
])
def test_parameters_take_units_where_qemu_takes_bytes_or_milliseconds(written, attribute, value):
    qemu = "source: {kind: qemu}\ndestination: {kind: qemu}\n"  # any parameter QEMU takes
    params = parse_scenario(f"name: x\n{qemu}parameters:\n  {written}\n").parameters
    assert getattr(params, attribute) == value


@pytest.mark.parametrize("written", [
    "compress-level: -1", "compress-threads: 0", "decompress-threads: 256",
    "throttle-trigger-threshold: 101", "cpu-throttle-increment: 0", "multifd-channels: 0",
    "multifd-zlib-level: 10", "multifd-zstd-level: 21", "announce-rounds: 1001",
    "announce-step: 0", "downtime-limit: 2001s", "xbzrle-cache-size: 2048",
    "max-cpu-throttle: 100", "max-cpu-throttle: 19",
])
def test_parameter_ranges_are_qemus(written):
    with pytest.raises(ScenarioError, match="expects") as err:
        parse_scenario(f"name: x\nparameters:\n  {written}\n")
    assert err.value.field == "parameters." + written.split(":")[0]


def test_a_qemu_peer_with_the_default_guest_is_fine():
    s = parse_scenario("name: x\nsource: {kind: qemu, args: [-m, 64M]}\n")
    assert s.source.kind == "qemu" and s.guest.ram_blocks[0].name == "ram"
