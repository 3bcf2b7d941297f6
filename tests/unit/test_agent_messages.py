"""Agents without processes: the typed agent messages, bind rules, hosts and placement."""

from __future__ import annotations

import pytest

from harness.control import ProtocolMessageError
from harness.control import agent_messages as am
from harness.control.curve import bind_needs_keys, check_bind
from harness.runner.agent_pool import placement_problems, used_hosts
from harness.runner.agents import tcp_uri
from harness.scenario import parse_scenario
from harness.scenario.model import Host


def test_requests_travel_with_kebab_case_members_and_come_back_typed():
    body = am.PeerStart("destination", "destination", {"seed": 1}, incoming=True)
    command, arguments = am.request_arguments(body)
    assert command == "peer-start"
    assert arguments == {"peer": "destination", "role": "destination", "guest": {"seed": 1},
                         "incoming": True, "paused": False, "kind": "harness",
                         "options": {}}
    assert am.decode_request(command, arguments) == body
    link = am.LinkFaultRequest("step-0", "link.delay", "198.18.0.2", 1.0, delay=0.05)
    assert am.request_arguments(link)[1]["toward"] == "198.18.0.2"
    assert am.decode_request(*am.request_arguments(link)) == link
    assert am.decode_request("agent-hello", {"run-id": "r"}) == am.HelloAgent("r", 0.5)


@pytest.mark.parametrize("command, arguments, says", [
    ("peer-start", {"peer": "s", "role": "source", "guest": {}, "extra": 1},
     "peer-start: member 'extra' is unexpected"),
    ("peer-start", {"peer": "s", "guest": {}}, "peer-start: member 'role' is missing"),
    ("peer-start", {"peer": "s", "role": "guest", "guest": {}},
     "member 'role' must be one of 'source', 'destination', 'proxy'"),
    ("peer-start", {"peer": "s", "role": "proxy", "guest": {}, "kind": "vm"},
     "member 'kind' must be one of 'harness', 'qemu', 'proxy'"),
    ("peer-log", {"peer": "s", "lines": True}, "member 'lines' must be an integer"),
    ("peer-execute", {"peer": 3, "command": "stop"}, "member 'peer' must be a string"),
    ("peer-fault", {"peer": "s", "kind": "explode"}, "member 'kind' must be one of"),
    ("agent-hello", {"run-id": "r", "heartbeat": "1"}, "member 'heartbeat' must be a number"),
    ("rm-rf", {}, "The command rm-rf has not been found"),
])
def test_bad_requests_are_refused_naming_the_member(command, arguments, says):
    with pytest.raises(ProtocolMessageError) as refused:
        am.decode_request(command, arguments)
    assert says in str(refused.value)


def test_events_decode_typed_and_unknown_ones_are_left_alone():
    name, data = am.event_data(am.PeerExited("source", -9, "killed"))
    assert (name, data) == ("PEER_EXITED", {"peer": "source", "exit-code": -9,
                                            "stderr-tail": "killed"})
    assert am.decode_event(name, data) == am.PeerExited("source", -9, "killed")
    assert am.decode_event("SOMETHING_NEWER", {"x": 1}) is None


@pytest.mark.parametrize("address, needs", [
    ("tcp://127.0.0.1:7340", False), ("tcp://127.9.9.9:0", False), ("tcp://[::1]:7340", False),
    ("tcp://localhost:7340", False), ("ipc:///tmp/agent.sock", False),
    ("tcp://0.0.0.0:7340", True), ("tcp://*:7340", True), ("tcp://198.18.0.1:7340", True),
    ("tcp://[::]:7340", True), ("tcp://eth0:7340", True), ("tcp://agent.example:7340", True),
])
def test_only_loopback_and_ipc_binds_go_without_keys(address, needs):
    check_bind(address)
    assert bind_needs_keys(address) is needs


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "tcp://127.0.0.1:65536", "udp://x:1",
                                     "ipc://", "127.0.0.1:7340"])
def test_a_bind_that_is_no_endpoint_is_refused(address):
    with pytest.raises(ValueError, match="expected tcp://ADDR:PORT"):
        check_bind(address)


def test_a_host_is_reached_at_its_address_or_its_agents_host():
    assert Host(agent="tcp://10.0.0.2:7340").peer_address == "10.0.0.2"
    assert Host(agent="tcp://[fd00::2]:7340").peer_address == "fd00::2"
    assert Host(agent="tcp://10.0.0.2:7340", address="192.168.1.2").peer_address == \
        "192.168.1.2"
    assert tcp_uri("fd00::2", 0) == "tcp:[fd00::2]:0"
    assert tcp_uri("10.0.0.2", 4444) == "tcp:10.0.0.2:4444"


HOSTS = "hosts:\n  a: {agent: 'tcp://10.0.0.1:1'}\n  b: {agent: 'tcp://10.0.0.2:1'}\n"


@pytest.mark.parametrize("body, says", [
    ("source: {host: a}\ndestination: {host: b}\n", None),
    ("source: {host: a}\ndestination: {host: a}\n", None),
    ("", None),  # hosts defined, peers local: a local run
    ("source: {host: a}\n", "the destination is local: place both peers on hosts"),
    ("source: {host: a}\ndestination: {host: b}\ntransport: fd\n",
     "transport: fd with peers on hosts"),
    ("source: {host: a}\ndestination: {host: b}\ntransport: {uri: 'tcp:10.0.0.2:4444'}\n",
     None),
    ("source: {host: a, kind: qemu}\ndestination: {host: b, kind: qemu}\n", None),
    # a QEMU and a harness peer on hosts: the layout goes inline, the digests are of one kind
    ("source: {host: a, kind: qemu}\ndestination: {host: b}\nexpect: {memory: identical}\n",
     None),
    (("guest: {machine: pc, memory: 64MiB}\nsource: {host: a, kind: qemu}\n"
      "destination: {host: b}\n"), None),
])
def test_what_a_placement_asks_that_the_runner_cannot_do(body, says):
    problems = placement_problems(parse_scenario(f"name: p\n{HOSTS}{body}"))
    if says is None:
        assert problems == []
    else:
        assert any(says in p for p in problems), problems


def test_the_hosts_a_run_uses_are_its_peers_and_its_link_faults():
    sc = parse_scenario(f"name: p\n{HOSTS}  c: {{agent: 'tcp://10.0.0.3:1'}}\n"
                        "source: {host: a}\ndestination: {host: b}\nsteps:\n"
                        "  - on: {pass: 1}\n    fault: {kind: link.down, host: b}\n")
    assert used_hosts(sc) == ["a", "b"]
