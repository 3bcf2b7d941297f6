"""A real QEMU source and a harness destination on two agent hosts, across network
namespaces (issue 14, helper E): scenarios/real/qemu-pc-to-harness-postcopy.yaml placed by
an inventory (`harness run --hosts`) passes with every page identical, as locally -- the
harness destination got the pc machine's layout (learnt on the source's host) inline in
its `peer-start` and says so in its log, and the QEMU side's digests are the harness's
own kind, compared with the destination's; the same run with one RAM page corrupted by
the proxy (on the destination's host) fails, naming that page, as a local run does, and
the destination's log fetched back from its host says which layout it loaded.
Skipped with the reason when QEMU, userfaultfd or network namespaces are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_multihost
from tests.e2e.test_multihost import REPO, World, inventory_file
from tests.qemu_env import QEMU_MARKS, USERFAULTFD_MARK

world = test_multihost.world  # its three namespaces and two CURVE agents, for this module

pytestmark = [*QEMU_MARKS, USERFAULTFD_MARK, pytest.mark.netns, pytest.mark.timeout(400)]

SHIPPED = REPO / "scenarios" / "real" / "qemu-pc-to-harness-postcopy.yaml"

#: the shipped scenario with one RAM page corrupted in precopy, 32 MiB into RAM, where the
#: hot set (1 MiB) never is, so the source never sends that page again
CORRUPT = """\
name: qemu-harness-hosts-corrupt-page
seed: 1309
timeout: 60s
guest: {machine: pc, memory: 128MiB, workload: {dirty-rate: 4MiB/s, pattern: hotset,
        hotset: 1MiB}}
source: {kind: qemu}
capabilities: {postcopy-ram: true}
parameters: {max-bandwidth: 64MiB}
steps:
  - on: {bytes: {channel: main, after: 32MiB}}
    fault: {kind: net.corrupt, frame: RAM_PAGE, where: payload}
  - name: switch
    on: {pass: 2}
    do: migrate-start-postcopy
expect: {source: completed, destination: completed, memory: identical,
         guest-runs-on: destination}
"""


def _placed_on_the_hosts(sc: dict[str, Any]) -> None:
    started = {t["peer"]: t["data"] for t in sc["timeline"] if t["name"] == "started"}
    assert (started["source"]["host"], started["destination"]["host"]) == ("a", "b")
    assert sc["source"]["facts"]["host"] == "a"
    assert sc["destination"]["kind"] == "harness"
    [layout] = [t["data"] for t in sc["timeline"] if t["name"] == "machine-layout"]
    assert layout["host"] == "a" and layout["machine"] == "pc-i440fx-7.2"
    [migrate] = [t for t in sc["timeline"] if t["name"] == "migrate"]
    assert migrate["data"]["uri"].startswith("tcp:198.18.0.3:")  # host b


def _source_digests_were_the_harness_kind(sc: dict[str, Any]) -> None:
    [read] = [t["data"] for t in sc["timeline"]
              if t["name"] == "memory-read" and t["peer"] == "source"]
    assert read["host"] == "a" and read["digests"] == "harness"
    facts = sc["source"]["facts"]  # 8 bytes a page, not the RAM
    assert 0 < facts["oracle-bytes-received"] < facts["memory-bytes"] / 100, facts


def test_a_qemu_source_migrates_to_a_harness_destination_on_another_host(world: World):
    code, sc, output = world.run(SHIPPED, "qemu-to-harness-hosts", "--hosts",
                                 str(inventory_file(world)))
    assert code == 0 and sc["verdict"] == "pass", output
    _placed_on_the_hosts(sc)
    [identical] = [i for i in sc["invariants"] if i["name"] == "memory-identical"]
    assert identical["ok"] and "pages equal" in identical["detail"], identical
    assert "read from a fresh QEMU of its command line" in identical["detail"]  # on host a
    requests = sc["stats"]["ram"]["postcopy-requests"]
    assert requests > 0 and requests == sc["destination-stats"]["x-postcopy"]["requests"]
    _source_digests_were_the_harness_kind(sc)
    # the destination has the machine's blocks only from the layout: every block compared
    assert sc["workdir"] is None  # a pass leaves nothing behind; its log: the next test


def test_a_page_the_proxy_corrupts_is_named_by_the_oracle_across_hosts(world: World):
    path = world.tmp / "qemu-harness-hosts-corrupt-page.yaml"
    path.write_text(CORRUPT)
    code, sc, output = world.run(path, "qemu-to-harness-hosts-corrupt", "--hosts",
                                 str(inventory_file(world)))
    assert code == 1 and sc["verdict"] == "fail", output
    _placed_on_the_hosts(sc)
    assert sc["source"]["status"] == sc["destination"]["status"] == "completed"
    [fault] = sc["faults"]
    block, address = fault["detail"]["detail"]["page"].split("@")  # pc.ram@0x...
    failed = [i for i in sc["invariants"] if not i["ok"]]
    assert [i["name"] for i in failed] == ["memory-identical"], failed
    assert failed[0]["detail"] == f"{block}: 1 pages differ (first at {address})"
    _source_digests_were_the_harness_kind(sc)
    log = Path(sc["destination"]["log"])  # fetched back from host b (a failure keeps it)
    assert log.is_file() and "/hosts/b/" in str(log), sc["destination"]["log"]
    text = log.read_text()
    assert "harness destination: layout " in text and "/layout.json: machine " \
        "pc-i440fx-7.2, 6 RAM blocks" in text, text[-2000:]
