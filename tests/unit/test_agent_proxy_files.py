"""The proxy an agent runs and the run files it hands back, without processes: the typed
messages, the proxy's options and relay rules, the inline layout, the run directory's
listing and chunked reads, the bounded event log, the fetch limit and the placement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.control import ProtocolMessageError
from harness.control import agent_messages as am
from harness.control.agent_files import (
    EVENT_LOG,
    MAX_CHUNK,
    EventLog,
    check_file_name,
    list_files,
    read_chunk,
)
from harness.control.agent_peers import PeerProcess
from harness.control.agent_proxy import check_options, proxy_command_line, relay_refusal
from harness.faults.proxy_main import MAX_INLINE_LAYOUT, inline_layout
from harness.qemu.layout import MAX_DEPTH, MachineLayout
from harness.runner.agent_pool import placement_problems, used_hosts
from harness.runner.agent_proxy import layout_arguments, proxy_host
from harness.runner.fetch import DEFAULT_LIMIT, LIMIT_ENV, fetch_limit
from harness.scenario import parse_scenario

GOOD = {"listen": "tcp:198.18.0.3:0", "target": "tcp:198.18.0.3:4444", "seed": 7,
        "record": True}


def test_the_file_commands_travel_typed_and_bad_file_names_are_refused():
    body = am.RunFileRead("stream.fwd.bin", 8, 1024)
    command, arguments = am.request_arguments(body)
    assert (command, arguments) == ("run-file-read", {"file": "stream.fwd.bin", "offset": 8,
                                                      "length": 1024})
    assert am.decode_request(command, arguments) == body
    assert am.decode_request("run-files", {}) == am.RunFiles()
    assert am.decode_request("run-file-read", {"file": "a.log"}).length == MAX_CHUNK
    for bad in ("../etc/passwd", ".hidden", "a/b", "a..b", "a.", "", "x" * 65, "a.b.c.d.e"):
        with pytest.raises(ProtocolMessageError) as refused:
            am.decode_request("run-file-read", {"file": bad})
        assert "member 'file'" in str(refused.value) and "is not a file name" in str(
            refused.value)
    with pytest.raises(ProtocolMessageError, match="member 'offset' must be an integer"):
        am.decode_request("run-file-read", {"file": "a.log", "offset": True})
    assert check_file_name("agent-events.jsonl") is None


def test_proxy_options_are_exactly_listen_target_seed_and_record(tmp_path):
    assert check_options(GOOD, tmp_path) is None
    assert check_options({"listen": f"unix:{tmp_path}/p.sock", "target": "unix:d.sock"},
                         tmp_path) is None  # relative: inside the run's directory
    cases = [
        ({**GOOD, "layout": "/etc/x"}, "proxy option 'layout' is unexpected"),
        ({"target": GOOD["target"]}, "proxy option 'listen' is missing"),
        ({**GOOD, "seed": True}, "proxy option 'seed' must be an integer"),
        ({**GOOD, "record": "yes"}, "proxy option 'record' must be a boolean"),
        ({**GOOD, "listen": 5}, "proxy option 'listen' must be a string"),
        ({**GOOD, "target": "exec:nc somewhere 1"}, "the proxy forwards tcp: and unix:"),
        ({**GOOD, "listen": "unix:/tmp/elsewhere.sock"}, "lies inside the run's directory"),
        ({**GOOD, "target": f"unix:{tmp_path}/../x.sock"}, "lies inside the run's directory"),
        ({**GOOD, "listen": "tcp:nohostport"}, "proxy option 'listen'"),
    ]
    for options, says in cases:
        problem = check_options(options, tmp_path)
        assert problem is not None and says in problem, (options, problem)


def _peer(tmp_path: Path, role: str = "proxy", **options) -> PeerProcess:
    import zmq

    spec = am.PeerStart("proxy", role, {}, kind="proxy", options=options)  # type: ignore[arg-type]
    context = zmq.Context()
    peer = PeerProcess(spec, tmp_path, context)
    peer.close_socket()
    context.term()
    return peer


def test_the_proxys_command_line_is_built_from_checked_options(tmp_path):
    argv = proxy_command_line(_peer(tmp_path, **GOOD))
    at = argv.index("proxy")
    assert argv[at + 1:] == ["--control", argv[argv.index("--control") + 1],
                             "--listen", GOOD["listen"], "--target", GOOD["target"],
                             "--seed", "7", "--record", str(tmp_path)]
    assert argv[argv.index("--control") + 1].startswith("ipc://")
    no_record = proxy_command_line(_peer(tmp_path, listen=GOOD["listen"], target=GOOD["target"]))
    assert "--record" not in no_record and no_record[-2:] == ["--seed", "0"]
    multifd = proxy_command_line(_peer(tmp_path, **GOOD, multifd=3))  # issue 16
    assert multifd[-2:] == ["--multifd", "3"]
    assert "must be an integer" in (check_options({**GOOD, "multifd": "3"}, tmp_path) or "")
    with pytest.raises(OSError, match="has the role 'proxy', not 'source'"):
        proxy_command_line(_peer(tmp_path, "source", **GOOD))
    with pytest.raises(OSError, match="proxy option 'listen' is missing"):
        proxy_command_line(_peer(tmp_path, target=GOOD["target"]))
    # through the agent's dispatch: kind "proxy" is known, the lifeline wraps it
    assert "proxy" in _peer(tmp_path, **GOOD).command_line()


def test_what_the_agent_relays_to_its_proxy_stays_on_its_sockets(tmp_path):
    peer = _peer(tmp_path, **GOOD)
    assert relay_refusal(peer, "x-proxy-target", {"uri": "tcp:198.18.0.3:5555"},
                         tmp_path) is None
    assert "inside the run's directory" in relay_refusal(
        peer, "x-proxy-target", {"uri": "unix:/run/other.sock"}, tmp_path)
    assert "never a file" in relay_refusal(peer, "x-proxy-layout", {"file": "/etc/shadow"},
                                           tmp_path)
    assert relay_refusal(peer, "x-proxy-layout", {"layout": None}, tmp_path) is None
    assert relay_refusal(peer, "x-proxy-arm", {"id": "s", "trigger": None}, tmp_path) is None


def _layout_doc() -> dict:
    layout = MachineLayout("ab12", "pc-i440fx-7.2", (("pc.ram", 1 << 24),),
                           {"page_size": 4096, "devices": []})
    return json.loads(json.dumps(layout.to_json()))


def test_an_inline_layout_is_read_like_a_layout_file_and_bounded():
    doc = _layout_doc()
    layout = inline_layout(doc)
    assert (layout.key, layout.machine, layout.blocks) == ("ab12", "pc-i440fx-7.2",
                                                          (("pc.ram", 1 << 24),))
    deep: dict = {"devices": []}
    node = deep
    for _ in range(MAX_DEPTH + 2):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ValueError, match=f"nests deeper than {MAX_DEPTH} levels"):
        inline_layout({**doc, "vmdesc": deep})
    with pytest.raises(ValueError, match=f"exceeds {MAX_INLINE_LAYOUT}"):
        inline_layout({**doc, "probe": {"pad": "x" * MAX_INLINE_LAYOUT}})
    with pytest.raises(ValueError, match="x-proxy-layout: layout format"):
        inline_layout({**doc, "format": 99})


def test_a_remote_proxy_gets_the_layout_inline_a_local_one_its_file(tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(_layout_doc()))
    assert layout_arguments(path, None) == {"file": str(path)}
    inline = layout_arguments(path, "b")
    assert inline == {"layout": _layout_doc()}
    assert inline_layout(inline["layout"]).key == "ab12"  # what the remote proxy reads


def test_a_run_directory_lists_its_plain_regular_files_only(tmp_path):
    (tmp_path / "source.log").write_text("hello\n")
    (tmp_path / "stream.fwd.bin").write_bytes(b"Q" * 5000)
    (tmp_path / ".harness-agent-run").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.log").symlink_to("/etc/passwd")
    (tmp_path / "bad name.log").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    assert list_files(tmp_path) == [{"name": "source.log", "size": 6},
                                    {"name": "stream.fwd.bin", "size": 5000}]
    assert read_chunk(tmp_path, "stream.fwd.bin", 4990, 100) == b"Q" * 10
    assert read_chunk(tmp_path, "source.log", 6, 10) == b""
    with pytest.raises(OSError):  # never followed
        read_chunk(tmp_path, "link.log", 0, 10)
    with pytest.raises(ValueError, match="not a regular file"):
        read_chunk(tmp_path, "pipe", 0, 10)
    with pytest.raises(ValueError, match="is not a file name"):
        read_chunk(tmp_path, "../source.log", 0, 10)
    with pytest.raises(ValueError, match="length 1-"):
        read_chunk(tmp_path, "source.log", 0, MAX_CHUNK + 1)


def test_the_agents_event_log_stops_at_its_limit_with_a_note(tmp_path):
    log = EventLog(tmp_path, limit=400)
    for n in range(20):
        log.write("PEER_EVENT", {"peer": "proxy", "event": "WIRE", "n": n})
    log.close()
    lines = [json.loads(line) for line in (tmp_path / EVENT_LOG).read_text().splitlines()]
    assert lines[0]["data"]["n"] == 0 and lines[0]["event"] == "PEER_EVENT"
    assert lines[-1]["event"] == "AGENT_EVENT_LOG_FULL"
    assert lines[-1]["data"]["limit"] == 400
    assert sum(len(json.dumps(x)) + 1 for x in lines[:-1]) <= 400
    assert 1 < len(lines) < 20


def test_the_fetch_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    assert fetch_limit() == DEFAULT_LIMIT == 256 << 20
    monkeypatch.setenv(LIMIT_ENV, "2KiB")
    assert fetch_limit() == 2048
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=LIMIT_ENV):
        fetch_limit()


HOSTS = "name: p\nhosts:\n  a: {agent: 'tcp://10.0.0.1:7340'}\n  b: {agent: 'tcp://10.0.0.2:7340'}\n"
NET = "steps:\n  - on: {pass: 1}\n    fault: {kind: net.reset}\n"


def test_the_proxy_runs_on_its_host_else_the_destinations_and_is_an_agent_host():
    across = parse_scenario(HOSTS + "source: {host: a}\ndestination: {host: b}\n" + NET)
    assert proxy_host(across) == "b" and placement_problems(across) == []
    on_a = parse_scenario(HOSTS + "source: {host: a}\ndestination: {host: b}\n"
                          "proxy: {host: a}\n" + NET)
    assert proxy_host(on_a) == "a"
    local = parse_scenario("name: p\n" + NET)
    assert proxy_host(local) is None and used_hosts(local) == []
    third = parse_scenario(HOSTS.replace("hosts:\n", "hosts:\n  c: {agent: 'tcp://10.0.0.3:1'}\n")
                           + "source: {host: a}\ndestination: {host: b}\nproxy: {host: c}\n")
    assert used_hosts(third) == ["a", "b", "c"]
    stranded = parse_scenario(HOSTS + "proxy: {host: a}\n" + NET)
    [problem] = placement_problems(stranded)
    assert "proxy: host a with peers beside the runner" in problem
