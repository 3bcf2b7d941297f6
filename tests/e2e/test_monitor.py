"""`harness monitor` driven in a real pseudo-terminal (pexpect), on real peer processes.

Each test spawns `python -m harness monitor` in a pty, types commands (Tab included) and
reads the screen; the peers are real processes migrating over real sockets, through the
real fault proxy.  Every expect has a deadline; every process is reaped in a finally (and
the tests that quit check that the console reaped them itself).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from harness.migration.config import SUPPORTED_CAPABILITIES
from harness.runner.peers import HarnessPeer

pexpect = pytest.importorskip("pexpect", reason="pexpect drives the console in a pty "
                                                "(pip install '.[test]')")

REPO = Path(__file__).resolve().parents[2]
PROMPT = "(harness) "
SENTINEL = "help [cmd] -- show the help"
TIMEOUT = 15


class Console:
    """A monitor in a pty: `run` a command and get what it printed before the next prompt."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.transcript = io.StringIO()
        child.logfile_read = self.transcript

    def run(self, line: str, timeout: float = TIMEOUT) -> str:
        """Events print above the prompt and redraw it, so a prompt alone does not mark the
        end of a command's output: a second, known command (`help help`) does."""
        self.child.sendline(line)
        self.child.sendline("help help")
        self.child.expect_exact(SENTINEL, timeout=timeout)
        output = str(self.child.before)
        self.child.expect_exact(PROMPT, timeout=timeout)
        return output

    def wait_for(self, *patterns: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        """Until each pattern appears `count` times in all the console printed, in
        whatever order (events come when they come, also amid a command's output).
        What it reads is gone from pexpect's buffer: `run` (its sentinel) comes next."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.transcript.getvalue()
            missing = [p for p in patterns if len(re.findall(p, text)) < count]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s: {missing}\n"
                                     f"--- the console's last output:\n{text[-4000:]}")
            try:
                self.child.read_nonblocking(65536, timeout=0.1)
            except pexpect.TIMEOUT:
                pass

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.child.pid).children(recursive=True)

    def quit_and_check_reaped(self, keys: str = "quit\r") -> None:
        """End the console with `keys`; it exits 0 and leaves no process behind."""
        started = self.descendants()
        assert started, "the console has no child processes to reap"
        self.child.send(keys)
        self.child.expect(pexpect.EOF, timeout=TIMEOUT)
        self.child.close()
        assert self.child.exitstatus == 0, self.child.before
        _, alive = psutil.wait_procs(started, timeout=10)
        assert alive == [], f"left behind: {alive}"


@contextmanager
def monitor(tmp_path: Path, *args: str) -> Iterator[Console]:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HARNESS_WORKDIR": str(tmp_path / "work"), "TERM": "xterm"}
    child = pexpect.spawn(sys.executable, ["-m", "harness", "monitor", *args], cwd=str(REPO),
                          env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(60, 250))
    try:
        child.expect_exact(PROMPT, timeout=30)
        yield Console(child)
    finally:
        procs = _tree(child.pid)
        if child.isalive():
            child.terminate(force=True)
        child.close(force=True)
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_configure_both_peers_complete_and_recover_from_bad_input(tmp_path):
    with monitor(tmp_path, "--start", "--proxy", "--memory", "32MiB") as con:
        caps = con.run("info migrate_capabilities")
        assert "xbzrle: off" in caps and "postcopy-ram: off" in caps
        # the capabilities the harness peer implements; a refused one is not offered
        assert len(re.findall(r"^[a-z-]+: (?:on|off)\r?$", caps, re.MULTILINE)) == len(
            SUPPORTED_CAPABILITIES)
        assert "release-ram" not in caps and "pause-before-switchover: off" in caps
        assert ("Capability 'release-ram' is not implemented by the harness peer"
                in con.run("migrate_set_capability release-ram on"))
        assert "Error: invalid parameter value: foo" in con.run("migrate_continue foo")
        assert "Error: Migration not in expected state: none" in con.run(
            "migrate_continue pre-switchover")

        assert "Error" not in con.run("migrate_set_capability postcopy-ram on")
        assert "postcopy-ram: on" in con.run("info migrate_capabilities")
        assert "postcopy-ram: on" in con.run("info migrate_capabilities destination")

        assert "Error" not in con.run("migrate_set_parameter max-bandwidth 8M")
        assert "max-bandwidth: 8388608 bytes/second" in con.run("info migrate_parameters")
        con.run("migrate_set_parameter max-bandwidth 100")  # HMP: a bare number is MiB/s
        assert "max-bandwidth: 104857600 bytes/second" in con.run(
            "info migrate_parameters destination")

        assert "unknown command: 'frobnicate'" in con.run("frobnicate")
        assert "Expected 'on' or 'off'" in con.run("migrate_set_capability postcopy-ram maybe")
        assert re.search(r"Error: inject net\.blackhole: duration: '1x' is not a duration",
                         con.run("inject net.blackhole duration=1x"))
        assert "Error: max-bandwidth: '10MB' is not a rate" in con.run(
            "migrate_set_parameter max-bandwidth 10MB")
        assert "VM status: running" in con.run("info status")  # it goes on
        con.child.send("\x10\x10\r")  # Ctrl-P twice: the history, past `help help`
        con.wait_for(r"VM status: running", count=2)

        con.child.send("info migrate_cap\t")  # Tab completes the info topic...
        con.child.expect_exact("info migrate_capabilities ")
        con.child.send("\r")
        con.child.expect_exact("postcopy-ram: on")
        con.child.expect_exact(PROMPT)
        con.child.send("info mig\t")  # ...up to the common prefix (and a bell: ambiguous)
        con.child.expect(r"info mig\x07?rate")
        con.child.send("\x15")  # Ctrl-U: drop the line
        con.child.send("migrate_set_cap\t")  # command names
        con.child.expect_exact("migrate_set_capability ")
        con.child.send("\x15inject net.bl\t")  # fault kinds
        con.child.expect_exact("net.blackhole ")
        con.child.send("\x15")
        assert "inject fault [key=value...] -- fire a fault now" in con.run("help inject")
        assert "trigger event=page-request count=10" in con.run("help trigger")

        con.quit_and_check_reaped()
    assert "info migrate_parameters" in (tmp_path / "cache" / "migration-harness" /
                                         "monitor_history").read_text()


def test_migrate_detached_inject_trigger_and_postcopy(tmp_path):
    with monitor(tmp_path, "--start", "--proxy", "--memory", "64MiB") as con:
        con.run("migrate_set_capability postcopy-ram on")
        con.run("migrate_set_parameter max-bandwidth 4M")
        assert "t1: armed (in the proxy)" in con.run(
            "trigger command=POSTCOPY_RUN net.delay delay=1ms duration=100ms")
        assert "t2: armed: on status=postcopy-active peer=destination" in con.run(
            "trigger status=postcopy-active peer=destination stop target=source "
            "duration=200ms")

        assert re.search(r"migrating to tcp:127\.0\.0\.1:\d+ \(the proxy\)", con.run("migrate -d"))
        con.wait_for(r"source MIGRATION status=active")
        assert "Migration status: active" in con.run("info migrate")

        con.run("inject net.blackhole duration=1s")
        con.wait_for(r"proxy FAULT i1 net\.blackhole channel=main .*duration=1")

        con.run("migrate_start_postcopy")
        con.wait_for(r"source MIGRATION status=postcopy-active",
                     r"proxy WIRE t1 command=POSTCOPY_RUN",
                     r"monitor TRIGGER t1 fired \(command=POSTCOPY_RUN\)",
                     r"proxy FAULT t1 net\.delay",
                     r"monitor TRIGGER t2 fired .*FAULT stop target=source pids=\d+",
                     r"monitor THAW target=source",
                     r"source MIGRATION status=completed",
                     r"destination MIGRATION status=completed")
        info = con.run("info migrate")
        assert "Migration status: completed" in info and "postcopy ram:" in info
        assert re.search(r"t1: .*\[fired\]", con.run("info triggers"))
        con.quit_and_check_reaped("\x04")  # Ctrl-D


def test_synchronous_migrate_progress_ctrl_c_and_process_faults(tmp_path):
    with monitor(tmp_path, "--start", "--memory", "64MiB") as con:
        assert "Error: net.reset needs the fault proxy" in con.run("inject net.reset")
        con.run("migrate_set_parameter max-bandwidth 4M")
        con.child.sendline("migrate")
        con.wait_for(r"Completed \d+ % \(active", count=2)  # once a second, as HMP polls
        con.child.sendintr()
        con.wait_for(r"cancelling the migration \(migrate_cancel\)",
                     r"Migration status: cancelled")
        assert "Migration status: cancelled" in con.run("info migrate")

        con.run("inject stop target=destination duration=300ms")
        con.wait_for(r"monitor FAULT stop target=destination pids=\d+",
                     r"monitor THAW target=destination")
        con.run("inject kill target=destination")
        con.wait_for(r"monitor FAULT kill target=destination",
                     r"destination connection lost \(exited with status -9\)")
        assert "VM status: paused" not in con.run("info status")  # the source runs on
        con.quit_and_check_reaped("\x03")  # Ctrl-C at the prompt ends it too


def test_pause_before_switchover_gives_the_prompt_back_and_migrate_continue_completes(tmp_path):
    with monitor(tmp_path, "--start", "--memory", "16MiB") as con:
        assert "Error" not in con.run("migrate_set_capability pause-before-switchover on")
        con.child.sendline("migrate")
        con.wait_for(r"Migration paused before switchover: migrate_continue pre-switchover")
        assert "Migration status: pre-switchover" in con.run("info migrate")
        assert "Error: Migration not in expected state: pre-switchover" in con.run(
            "migrate_continue active")
        assert "Error" not in con.run("migrate_continue pre-switchover")
        con.wait_for(r"MIGRATION status=completed")
        assert "Migration status: completed" in con.run("info migrate")
        con.quit_and_check_reaped()


def test_the_console_proxy_forwards_the_multifd_channels_it_was_started_for(tmp_path):
    """A multifd migration through a proxy started without --proxy-multifd is refused in
    one line naming the option; with it, the channels go through the proxy."""
    with monitor(tmp_path, "--start", "--proxy", "--memory", "16MiB") as con:
        assert "Error" not in con.run("migrate_set_capability multifd on")
        assert ("Error: migrate: the source opens 2 multifd channels, the proxy forwards 0: "
                "start the console with --proxy --proxy-multifd 2") in con.run("migrate -d")
        assert "Migration status" not in con.run("info migrate")  # nothing was started
        con.quit_and_check_reaped()
    with monitor(tmp_path, "--start", "--proxy", "--proxy-multifd", "2",
                 "--memory", "16MiB") as con:
        assert "Error" not in con.run("migrate_set_capability multifd on")
        assert re.search(r"migrating to tcp:127\.0\.0\.1:\d+ \(the proxy\)", con.run("migrate -d"))
        con.wait_for(r"MIGRATION status=completed")
        assert "Migration status: completed" in con.run("info migrate")
        con.quit_and_check_reaped()


def _peer(role: str, workdir: Path) -> HarnessPeer:
    guest = {"machine": "none", "seed": 3, "fill": 0.5,
             "blocks": [{"name": "ram", "size": 32 << 20}], "devices": ["timer", "globalstate"],
             "workload": None}
    return HarnessPeer(role, workdir, guest, ["--incoming", "defer"] if role == "destination"
                       else [])


def test_attach_to_peers_started_elsewhere_leaves_them_running(tmp_path):
    src, dst = _peer("source", tmp_path), _peer("destination", tmp_path)
    try:
        for peer in (dst, src):
            peer.start()
            peer.execute("migrate-set-capabilities",
                         {"capabilities": [{"capability": "events", "state": True}]})
        dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        control = tmp_path / "control.json"
        control.write_text(json.dumps({"source": src.address, "destination": dst.address,
                                       "proxy": None, "pids": {"source": src.pid,
                                                               "destination": dst.pid}}))
        with monitor(tmp_path, "--attach", str(tmp_path)) as con:
            assert re.search(r"socket address: \[\s+tcp:127\.0\.0\.1:\d+",
                             con.run("info migrate destination"))
            assert re.search(r"migrating to tcp:127\.0\.0\.1:\d+ \(the destination\)",
                             con.run("migrate -d"))
            con.wait_for(r"source MIGRATION status=completed",
                         r"destination MIGRATION status=completed")
            con.child.sendline("quit")
            con.child.expect(pexpect.EOF)
            con.child.close()
            assert con.child.exitstatus == 0
        assert src.alive() and dst.alive()  # attached, not owned
        assert src.execute("query-migrate")["status"] == "completed"
    finally:
        src.close()
        dst.close()


def test_attach_to_a_live_harness_run(tmp_path):
    """`harness run` writes control.json once its peers are up; a console attaches."""
    scenario = tmp_path / "slow.yaml"
    scenario.write_text("name: slow\ntimeout: 60s\nguest: {memory: 64MiB, fill: 0.5}\n"
                        "parameters: {max-bandwidth: 4MiB}\n"
                        "expect: {source: completed, destination: completed}\n")
    work = tmp_path / "work"
    run = subprocess.Popen([sys.executable, "-m", "harness", "run", str(scenario)],
                           cwd=REPO, env={**os.environ, "HARNESS_WORKDIR": str(work)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        control = _await_file(work, "*/control.json", TIMEOUT)
        doc = json.loads(control.read_text())
        assert doc["proxy"] is None and doc["pids"]["source"] > 0
        with monitor(tmp_path, "--attach", str(control)) as con:
            assert "Migration status: active" in con.run("info migrate")
            con.run("migrate_set_parameter max-bandwidth 1G")  # hurry it up, by hand
            con.wait_for(r"source MIGRATION status=completed")
            con.child.sendline("quit")
            con.child.expect(pexpect.EOF)
        out, _ = run.communicate(timeout=30)
        assert run.returncode == 0, out
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
        run.wait(10)


def _await_file(root: Path, pattern: str, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} under {root} within {timeout} s")


def test_bad_attach_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "harness", "monitor", "--attach",
                             str(tmp_path / "nothing.json")], cwd=REPO, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "nothing.json: no such file" in result.stderr
    assert "Traceback" not in result.stderr
    both = subprocess.run([sys.executable, "-m", "harness", "monitor", "--start", "--attach",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=30,
                          check=False)
    assert both.returncode == 2 and "give one of --start" in both.stderr
