"""Every kind of bad scenario file names the file, the line, the column and the field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.scenario import ScenarioError, load_scenario, load_scenarios, parse_scenario
from tests.unit.test_scenario_model import EVERYTHING

STEP = "  - on: {pass: 1}\n    do: stop\n"
LINK = "name: a\nhosts:\n  h1: {agent: 'tcp://10.0.0.1:5555'}\nsteps:\n  - on: {pass: 1}\n"

#: id -> (file text, line, column, field, a fragment of the reason)
CASES: dict[str, tuple[str, int, int, str | None, str]] = {
    "unknown key at top level": (
        "name: a\nguets: {memory: 1M}\n",
        2, 1, "guets", "unknown key 'guets' (expected one of: name, description, seed,"),
    "unknown key nested": (
        "name: a\nguest:\n  memory: 16MiB\n  workload:\n    dirty-rat: 1M\n",
        5, 5, "guest.workload.dirty-rat", "did you mean 'dirty-rate'?"),
    "bad size": (
        "name: a\nguest:\n  memory: 16MB\n",
        3, 11, "guest.memory", "'16MB' is not a size (expected a number of bytes"),
    "bad status": (
        "name: a\nsteps:\n" + STEP + "  - on:\n      status: {peer: source, is: actve}\n"
        "    do: cont\n",
        6, 34, "steps[1].on.status.is",
        "'actve' is not a migration status (expected one of: none, setup,"),
    "step with both do and fault": (
        ("name: a\nsteps:\n  - on: {pass: 1}\n    do: stop\n"
         "    fault: {kind: kill, target: source}\n"),
        3, 5, "steps[0]", "either do: or fault:, not both"),
    "network fault over exec": (
        "name: a\ntransport: exec\nsteps:\n  - on: {pass: 1}\n    fault: {kind: net.reset}\n",
        5, 19, "steps[0].fault.kind", ("net.reset acts in the proxy between the peers, which "
                                       "needs transport: tcp or unix (this scenario uses exec)")),
    "wire trigger over a file": (
        "name: a\ntransport: file\nsteps:\n  - on: {command: POSTCOPY_RUN}\n    do: stop\n",
        4, 9, "steps[0].on", "the command: trigger is seen by the proxy between the peers"),
    "step with neither do nor fault": (
        "name: a\nsteps:\n  - on: {pass: 1}\n",
        3, 5, "steps[0]", "a step needs do: (an action) or fault: (a fault)"),
    "after names an unknown step": (
        ("name: a\nsteps:\n  - name: first\n    on: {pass: 1}\n    do: stop\n"
        "  - on: {time: 1s}\n    after: frist\n    do: cont\n"),
        7, 12, "steps[1].after", "'frist' is not the name of a step (steps named: first)"),
    "after names its own step": (
        "name: a\nsteps:\n  - name: me\n    after: me\n    on: {pass: 1}\n    do: stop\n",
        4, 12, "steps[0].after", "cannot come after itself"),
    "after chain loops": (
        ("name: a\nsteps:\n  - {name: x, after: y, on: {pass: 1}, do: stop}\n"
        "  - {name: y, after: x, on: {pass: 1}, do: cont}\n"),
        3, 22, "steps[0].after", "'x' -> 'y' -> 'x' is a loop"),
    "duplicate step name": (
        ("name: a\nsteps:\n  - {name: x, on: {pass: 1}, do: stop}\n"
        "  - {name: x, on: {pass: 2}, do: cont}\n"),
        4, 12, "steps[1].name", "step name 'x' is already used by steps[0]"),
    "hotset larger than memory": (
        "name: a\nguest:\n  memory: 16MiB\n  workload: {pattern: hotset, hotset: 32MiB}\n",
        4, 39, "guest.workload.hotset", "the hotset (32 MiB) does not fit in the guest's memory"),
    "hotset pattern without hotset": (
        "name: a\nguest:\n  workload:\n    pattern: hotset\n",
        4, 5, "guest.workload.hotset", "pattern: hotset needs hotset: SIZE"),
    "memory and blocks": (
        "name: a\nguest:\n  memory: 16MiB\n  blocks: [{name: ram, size: 16MiB}]\n",
        4, 3, "guest.blocks", "give memory: (one block named \"ram\") or blocks:, not both"),
    "qemu peer with a cpu device": (
        "name: a\nsource: {kind: qemu}\nguest:\n  devices: [timer, globalstate, cpu]\n",
        4, 33, "guest.devices[2]",
        ("a QEMU peer runs machine none (RAM only, one block \"ram\" and the devices timer "
         "and globalstate) or a real machine (pc, q35, pc-i440fx-X.Y or pc-q35-X.Y) "
         "(source.kind: qemu); not cpu")),
    "qemu peer with pc blocks": (
        "name: a\ndestination:\n  kind: qemu\nguest:\n  blocks:\n    - {name: pc.ram, size: 16M}\n",
        6, 5, "guest.blocks", "not the blocks pc.ram (write memory: SIZE instead)"),
    "postcopy action without the capability": (
        "name: a\nsteps:\n  - on: {pass: 2}\n    do: migrate-start-postcopy\n",
        4, 9, "steps[0].do",
        "\"Enable postcopy with migrate_set_capability before the start of migration\""),
    "bad parameter name": (
        "name: a\nparameters:\n  downtime-limit: 300\n  max-bandwith: 1GiB\n",
        4, 3, "parameters.max-bandwith",
        "'max-bandwith' is not a migration parameter (expected one of: announce-initial,"),
    "parameter of a later QEMU": (
        "name: a\nparameters:\n  avail-switchover-bandwidth: 1G\n",
        3, 3, "parameters.avail-switchover-bandwidth",
        "is not a migration parameter of QEMU 7.2 (it appeared in QEMU 8.2)"),
    "bad parameter range": (
        "name: a\nparameters:\n  cpu-throttle-initial: 100\n",
        3, 25, "parameters.cpu-throttle-initial",
        "cpu-throttle-initial expects an integer in the range of 1 to 99, got 100"),
    "bad parameter range in a step": (
        ("name: a\nsteps:\n  - on: {pass: 1}\n    do:\n      migrate-set-parameters:\n"
        "        compress-level: 12\n"),
        6, 25, "steps[0].do.migrate-set-parameters.compress-level",
        "compress-level expects a value between 0 and 9, got 12"),
    "bad capability name": (
        "name: a\ncapabilities:\n  postcopy-ram: true\n  postcopy-rma: true\n",
        4, 3, "capabilities.postcopy-rma", "did you mean 'postcopy-ram'?"),
    "capabilities QEMU refuses together": (
        "name: a\ncapabilities:\n  postcopy-preempt: true\n",
        3, 21, "capabilities.postcopy-preempt", "Postcopy preempt requires postcopy-ram"),
    "duplicate key": (
        "name: a\nseed: 1\nseed: 2\n",
        3, 1, "seed", "duplicate key 'seed' (first given at line 2)"),
    "duplicate key nested": (
        "name: a\nsteps:\n  - on: {pass: 1}\n    do: stop\n    do: cont\n",
        5, 5, "steps[0].do", "duplicate key 'do' (first given at line 4)"),
    "YAML syntax error": (
        "name: a\nguest: {memory: 16MiB\nsteps: []\n",
        3, 6, None, "invalid YAML: expected ',' or '}'"),
    "tab indentation": (
        "name: a\nguest:\n\tmemory: 1M\n",
        3, 1, None, "invalid YAML: found character '\\t'"),
    "empty file": ("", 1, 1, None, "the file is empty"),
    "only comments": ("# nothing yet\n", 1, 1, None, "the file is empty"),
    "list instead of mapping": (
        "- name: a\n  seed: 1\n",
        1, 1, None, "a scenario file is a mapping of keys (name:, guest:, steps:, ...), not a"),
    "two trigger keys": (
        "name: a\nsteps:\n  - on: {pass: 1, time: 2s}\n    do: stop\n",
        3, 19, "steps[0].on.time", "a trigger names one condition"),
    "unknown trigger key": (
        "name: a\nsteps:\n  - on: {passes: 1}\n    do: stop\n",
        3, 10, "steps[0].on.passes", "'passes' is not a trigger (expected one of: time, pass,"),
    "trigger that is not a mapping": (
        "name: a\nsteps:\n  - on: 5\n    do: stop\n",
        3, 9, "steps[0].on", "a trigger is a mapping such as {pass: 2}"),
    "trigger with a stray key": (
        "name: a\nsteps:\n  - on: {pass: 1, count: 3}\n    do: stop\n",
        3, 19, "steps[0].on.count", "unknown key 'count' (expected one of: probability, pass)"),
    "missing key in a trigger": (
        "name: a\nsteps:\n  - on:\n      status: {peer: source}\n    do: stop\n",
        4, 15, "steps[0].on.status.is", "missing required key 'is'"),
    "missing key in a block": (
        "name: a\nguest:\n  blocks:\n    - name: ram\n",
        4, 7, "guest.blocks[0].size", "missing required key 'size'"),
    "unknown action": (
        "name: a\nsteps:\n  - on: {pass: 1}\n    do: migrate-frobnicate\n",
        4, 9, "steps[0].do", "'migrate-frobnicate' is not an action"),
    "net fault without its required field": (
        "name: a\nsteps:\n  - on: {pass: 1}\n    fault:\n      kind: net.delay\n",
        5, 7, "steps[0].fault", "net.delay needs delay:"),
    "net fault with a field of another kind": (
        "name: a\nsteps:\n  - on: {pass: 1}\n    fault: {kind: net.reset, rate: 1M}\n",
        4, 30, "steps[0].fault.rate", "rate does not apply to net.reset"),
    "unknown fault kind": (
        "name: a\nsteps:\n  - on: {pass: 1}\n    fault: {kind: net.dorp, message: PONG}\n",
        4, 19, "steps[0].fault.kind", "did you mean 'net.drop'?"),
    "return-path message on main": (
        ("name: a\nsteps:\n  - on: {pass: 1}\n    fault: {kind: net.drop, message: REQ_PAGES, "
        "channel: main}\n"),
        4, 58, "steps[0].fault.channel", "REQ_PAGES travels on the return-path channel"),
    "link fault on an unknown host": (
        ("name: a\nhosts:\n  h1: {agent: 'tcp://10.0.0.1:5555'}\nsteps:\n  - on: {pass: 1}\n"
        "    fault: {kind: link.down, host: h2}\n"),
        6, 36, "steps[0].fault.host", "'h2' is not one of the hosts (hosts: h1)"),
    "link fault without a host": (
        LINK + "    fault: {kind: link.blackhole}\n",
        6, 12, "steps[0].fault", "link.blackhole needs host: (the host, one of hosts:,"),
    "link.bandwidth without rate": (
        LINK + "    fault: {kind: link.bandwidth, host: h1}\n",
        6, 12, "steps[0].fault", "link.bandwidth needs rate:"),
    "link.bandwidth at rate 0": (
        LINK + "    fault: {kind: link.bandwidth, host: h1, rate: 0}\n",
        6, 51, "steps[0].fault.rate", "link.bandwidth needs a rate above 0"),
    "link.delay without delay": (
        LINK + "    fault: {kind: link.delay, host: h1, jitter: 5ms}\n",
        6, 12, "steps[0].fault", "link.delay needs delay:"),
    "jitter on link.bandwidth": (
        LINK + "    fault: {kind: link.bandwidth, host: h1, rate: 1M, jitter: 5ms}\n",
        6, 55, "steps[0].fault.jitter",
        "jitter does not apply to link.bandwidth (it takes: host, duration, rate)"),
    "misspelt link.delay": (
        LINK + "    fault: {kind: link.dealy, host: h1, delay: 5ms}\n",
        6, 19, "steps[0].fault.kind", "did you mean 'link.delay'?"),
    "peer on an unknown host": (
        "name: a\nsource: {host: left}\n",
        2, 16, "source.host", "'left' is not one of the hosts (hosts: none"),
    "bad transport": (
        "name: a\ntransport: udp\n",
        2, 12, "transport", "'udp' is not a transport (expected one of: tcp, unix, exec, fd,"),
    "bad transport uri": (
        "name: a\ntransport: {uri: 'tcp:localhost'}\n",
        2, 18, "transport.uri", "is not a tcp URI (expected tcp:HOST:PORT)"),
    "wrong type": (
        "name: a\nseed: lots\n",
        2, 7, "seed", "expected an integer, got 'lots'"),
    "null section": (
        "name: a\nguest:\n",
        2, 7, "guest", "expected a mapping, got nothing (null)"),
    "bad expectation": (
        "name: a\nexpect:\n  guest-runs-on: both\n",
        3, 18, "expect.guest-runs-on", "'both' is not a place"),
    "args for a harness peer": (
        "name: a\nsource:\n  args: [-S]\n",
        3, 3, "source.args", "args: applies to kind: qemu only"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_error_names_file_line_column_and_field(case, tmp_path):
    text, line, column, field, fragment = CASES[case]
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    err = caught.value
    assert (err.file, err.line, err.column, err.field) == (str(path), line, column, field), str(err)
    assert fragment in err.reason
    where = f"{path}:{line}:{column}: " + (f"{field}: " if field else "")
    assert str(err).splitlines()[0] == where + err.reason


def test_message_reads_like_the_documented_example(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(CASES["bad status"][0])
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(
        f"{path}:6:34: steps[1].on.status.is: 'actve' is not a migration status (expected one "
        "of: none, setup, cancelling, cancelled, active, postcopy-active, postcopy-paused, "
        "postcopy-recover, completed, failed, colo, pre-switchover, device, wait-unplug)")


def test_every_problem_is_reported_in_file_order(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("name: a\nseed: -1\nguest:\n  fill: 2\nsteps:\n  - on: {pass: 0}\n"
                    "    do: stop\nexpect: {source: done}\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    problems = caught.value.problems
    assert [(p.line, p.field) for p in problems] == [
        (2, "seed"), (4, "guest.fill"), (6, "steps[0].on.pass"), (8, "expect.source")]
    assert str(caught.value).count("\n") == 3
    assert (caught.value.line, caught.value.field) == (2, "seed")


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="no such file") as caught:
        load_scenario(tmp_path / "absent.yaml")
    assert caught.value.file == str(tmp_path / "absent.yaml") and caught.value.line is None


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(ScenarioError, match="is a directory"):
        load_scenario(tmp_path)


def test_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ScenarioError, match="not UTF-8 text"):
        load_scenario(path)


def test_load_scenarios_reports_every_file(tmp_path):
    good, bad1, bad2 = (tmp_path / n for n in ("good.yaml", "bad1.yaml", "bad2.yaml"))
    good.write_text("seed: 1\n")
    bad1.write_text("seed: x\n")
    bad2.write_text("")
    assert [s.name for s in load_scenarios([good])] == ["good"]
    with pytest.raises(ScenarioError) as caught:
        load_scenarios([good, bad1, bad2])
    assert [p.file for p in caught.value.problems] == [str(bad1), str(bad2)]


def test_load_scenarios_reads_a_directory_in_name_order(tmp_path):
    for name in ("b", "a"):
        (tmp_path / f"{name}.yaml").write_text("seed: 1\n")
    assert [s.name for s in load_scenarios([tmp_path])] == ["a", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScenarioError, match="no scenario files"):
        load_scenarios([empty])


def _lines_of(text: str) -> int:
    return text.count("\n") + 1


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_edit_of_a_valid_file_loads_or_fails_with_a_located_scenario_error(data):
    """Delete, duplicate or garble a line of a valid file: the loader either returns a
    Scenario or raises ScenarioError pointing inside the file, never anything else."""
    lines = EVERYTHING.splitlines(keepends=True)
    index = data.draw(st.integers(0, len(lines) - 1))
    edit = data.draw(st.sampled_from(["delete", "duplicate", "garble", "truncate"]))
    line = lines[index]
    if edit == "delete":
        lines[index] = ""
    elif edit == "duplicate":
        lines[index] = line + line
    elif edit == "truncate":
        lines[index] = line[:data.draw(st.integers(0, len(line)))] + "\n"
    else:
        at = data.draw(st.integers(0, len(line)))
        junk = data.draw(st.text(alphabet="{}[]:,-&*!|>'\" \tabc019%", max_size=4))
        lines[index] = line[:at] + junk + line[at:]
    text = "".join(lines)
    try:
        parse_scenario(text, file="edited.yaml")
    except ScenarioError as err:
        for problem in err.problems:
            assert problem.file == "edited.yaml"
            assert problem.line is not None and 1 <= problem.line <= _lines_of(text)
            assert problem.reason


def test_scenario_error_survives_pickling():
    """Runner and pytest-xdist workers pass errors between processes."""
    import pickle

    with pytest.raises(ScenarioError) as caught:
        parse_scenario("name: a\nseed: x\nguest: {fill: 3}\n", file="p.yaml")
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.problems, str(again), again.line, again.field) == (
        caught.value.problems, str(caught.value), 2, "seed")
