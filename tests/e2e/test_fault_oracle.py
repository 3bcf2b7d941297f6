"""The oracle is itself tested: QEMU's stream has no checksum, so a page whose payload the
proxy corrupts loads without complaint -- only the memory check can see it, and it must
name the page the proxy changed."""

from __future__ import annotations

from tests.e2e.test_scenarios import run

# no workload: every page is sent once, in pass 1, so the corrupted copy is never resent
CORRUPT = """\
name: oracle
seed: 11
timeout: 60s
guest: {memory: 32MiB, fill: 1.0}
parameters: {max-bandwidth: 8MiB}
steps:
  - name: corrupt
    on: {pass: 1}
    fault: {kind: net.corrupt, frame: RAM_PAGE, where: payload}
  - after: corrupt
    on: {time: 0s}
    do: {migrate-set-parameters: {max-bandwidth: 1GiB}}
expect: {source: completed, destination: completed, guest-runs-on: destination%s}
"""


def _scenario(tmp_path, memory: str):
    path = tmp_path / "oracle.yaml"
    path.write_text(CORRUPT % memory)
    return run(path, tmp=tmp_path)


def test_a_corrupted_page_fails_memory_identical_naming_that_page(tmp_path):
    code, report, output = _scenario(tmp_path, ", memory: identical")
    assert code == 1, output
    [sc] = report["scenarios"]
    assert sc["verdict"] == "fail"
    checks = {i["name"]: i for i in sc["invariants"]}
    memory = checks["memory-identical"]
    assert not memory["ok"]
    [fault] = sc["faults"]
    assert fault["kind"] == "net.corrupt"
    detail = fault["detail"]["detail"]  # the proxy's own record of what it changed
    assert detail["where"] == "payload" and detail["old"] != detail["new"]
    block, address = detail["page"].split("@")
    # exactly the page the proxy changed, and nothing else
    assert memory["detail"] == f"{block}: 1 pages differ (first at {address})"
    # everything else about the run was right: only the memory check sees it
    assert [name for name, i in checks.items() if not i["ok"]] == ["memory-identical"]
    assert "memory-identical" in output and address in output


def test_the_same_run_without_the_memory_expectation_passes(tmp_path):
    # the control: the load really completes, so the failure above is the oracle's alone
    code, report, output = _scenario(tmp_path, "")
    assert code == 0, output
    [sc] = report["scenarios"]
    assert [f["kind"] for f in sc["faults"]] == ["net.corrupt"]
    assert sc["destination"]["status"] == "completed"
