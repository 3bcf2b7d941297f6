"""`harness run ... --html FILE` on a real run, opened in a real headless Chromium.

One run of two small scenarios (real peer processes): a 32 MiB precopy whose source is
frozen for 0.5 s at pass 2, and a 32 MiB postcopy whose destination guest requests pages.
The JSON report must carry the samples, the passes and the postcopy latency histogram; the
HTML must be self-contained (every image a data: URI, no http(s) reference) with the
plots each scenario has data for, the verdicts and the fault; Chromium (Debian's
`chromium`, installed by .ci/run) must parse it (--dump-dom: the plot images are in the
DOM) and draw it (--screenshot: many colours, the plots' own colours among them).  Every
Chromium process is in a session of its own and killed with it, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

PRECOPY = """\
name: report-precopy-stop
description: |
  1. A 32 MiB guest migrates in precopy at 16 MiB/s while its workload rewrites a hot set;
  2. at pass 2 the source is frozen for 0.5 s; 3. at pass 3 the bandwidth is raised.
seed: 11
timeout: 60s
guest: {memory: 32MiB, fill: 0.5, workload: {dirty-rate: 16MiB/s, pattern: hotset, hotset: 4MiB}}
parameters: {max-bandwidth: 16MiB, downtime-limit: 50}
steps:
  - on: {pass: 2}
    fault: {kind: stop, target: source, duration: 0.5s}
  - on: {pass: 3}
    do: {migrate-set-parameters: {max-bandwidth: 1GiB}}
expect: {source: completed, destination: completed, memory: identical, guest-runs-on: destination}
"""

POSTCOPY = """\
name: report-postcopy
description: |
  1. A 32 MiB guest switches to postcopy as soon as it is active; the push is held to
  8 MiB/s, so the destination guest requests the pages it touches.
seed: 12
timeout: 60s
guest: {memory: 32MiB, fill: 1.0, workload: {dirty-rate: 16MiB/s}}
capabilities: {postcopy-ram: true}
parameters: {max-bandwidth: 32MiB, max-postcopy-bandwidth: 8MiB}
steps:
  - on: {status: {peer: source, is: active}}
    do: migrate-start-postcopy
expect: {source: completed, destination: completed, memory: identical, guest-runs-on: destination}
"""

#: the plots each scenario has data for, in the report's order
PLOTS = {"report-precopy-stop": ["timeline", "transfer", "passes", "downtime"],
         "report-postcopy": ["timeline", "transfer", "passes", "latency", "downtime"]}
ACTIVE_BLUE = (0x31, 0x82, 0xBD)  # plots.COLOURS["active"]: the status bands, the lines


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(binary: str, args: list[str], profile: Path, timeout: float = 90
                 ) -> str:
    """Run headless Chromium in a session of its own; its stdout.  The session is killed
    whatever happens, so no renderer or zygote outlives the test."""
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, f"chromium {args[0]} exited {proc.returncode}: {err[-2000:]}"
    return out


class Figures(HTMLParser):
    """The report's <figure class=plot data-plot=NAME> and the <img> inside each."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: list[tuple[str, str]] = []  # (data-plot, img src)
        self.srcs: list[str] = []  # every src and href of the page
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.srcs += [v or "" for k, v in attrs if k in ("src", "href") and
                      not (k == "href" and (v or "").startswith("#"))]
        if tag == "figure" and "plot" in (a.get("class") or "").split():
            self._figure = a.get("data-plot") or ""
        elif tag == "img" and self._figure is not None:
            self.plots.append((self._figure, a.get("src") or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None


def test_html_report_of_a_real_run_renders_in_chromium(tmp_path):
    for name, text in (("precopy.yaml", PRECOPY), ("postcopy.yaml", POSTCOPY)):
        (tmp_path / name).write_text(text)
    report, page = tmp_path / "report.json", tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(tmp_path / "precopy.yaml"),
         str(tmp_path / "postcopy.yaml"), "--json", str(report), "--html", str(page)],
        capture_output=True, text=True, timeout=180, cwd=REPO, check=False,
        env={**os.environ, "HARNESS_WORKDIR": str(tmp_path / "work")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(report.read_text())
    check_json(doc)
    text = page.read_text()
    check_self_contained(text, doc)

    binary = chromium_binary()
    if binary is None:
        pytest.skip("the JSON and HTML checks passed; rendering needs Chromium, which is not "
                    "installed (Debian: apt-get install --no-install-recommends chromium)")
    dom = run_chromium(binary, ["--dump-dom", page.as_uri()], tmp_path / "profile")
    parsed = Figures()
    parsed.feed(dom)
    assert [name for name, _ in parsed.plots] == [p for sc in PLOTS.values() for p in sc]
    assert all(src.startswith("data:image/png;base64,") for _, src in parsed.plots)
    shot = tmp_path / "shot.png"
    run_chromium(binary, [f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri()],
                 tmp_path / "profile")
    check_screenshot(shot)


def check_json(doc: dict) -> None:
    by_name = {sc["name"]: sc for sc in doc["scenarios"]}
    assert set(by_name) == set(PLOTS)
    for sc in by_name.values():
        assert sc["verdict"] == "pass", sc["reason"]
        samples = sc["samples"]
        assert len(samples) >= 3
        assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
        assert samples[-1]["status"] == "completed"
        assert samples[-1]["transferred"] == sc["stats"]["ram"]["transferred"]
    precopy = by_name["report-precopy-stop"]
    passes = precopy["passes"]
    assert len(passes) >= 2 and passes[0]["pass"] == 1
    assert passes[0]["bandwidth"] > 0 and passes[0]["dirtied"] is not None
    assert sum(p["transferred"] for p in passes) <= precopy["stats"]["ram"]["transferred"]
    # the frozen source sent nothing for 0.5 s: pass 2 is slower than pass 1
    assert passes[1]["bandwidth"] < passes[0]["bandwidth"]
    lat = by_name["report-postcopy"]["destination-stats"]["x-postcopy"]["latency-us"]
    hist = lat["histogram"]
    assert sum(hist["counts"]) == lat["count"] > 0
    assert len(hist["edges-us"]) == len(hist["counts"]) + 1
    assert hist["edges-us"][0] <= lat["p50"] <= hist["edges-us"][-1]


def check_self_contained(text: str, doc: dict) -> None:
    assert not re.search(r"https?://", text), "the report refers to something outside it"
    parsed = Figures()
    parsed.feed(text)
    assert all(src.startswith("data:") for src in parsed.srcs), parsed.srcs[:3]
    assert [name for name, _ in parsed.plots] == [p for sc in PLOTS.values() for p in sc]
    assert text.count("<img ") == len(parsed.plots) == 9
    assert text.count(">PASS</span>") >= 2  # the verdicts, in the summary and the sections
    assert "<td>stop</td><td>source</td>" in text  # the fault
    assert "report-precopy-stop" in text and "report-postcopy" in text
    for sc in doc["scenarios"]:
        for inv in sc["invariants"]:
            assert inv["name"] in text


def check_screenshot(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    pixels = (image[..., :3] * 255).round().astype(np.int32)
    assert pixels.shape[:2] == (3000, 1200)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 200, "the screenshot has hardly any colours"
    not_white = float(np.mean(packed != 0xFFFFFF))
    assert not_white > 0.05, f"the screenshot is nearly blank ({not_white:.1%} not white)"
    blue = np.abs(pixels - np.array(ACTIVE_BLUE)).max(axis=-1) <= 8
    assert int(blue.sum()) > 2000, "the plots' colours are not on the page"
