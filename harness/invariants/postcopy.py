"""Postcopy's page requests: every request was served, both sides count the same, and no
page was received twice (QEMU places each page once)."""

from __future__ import annotations

from harness.runner.result import InvariantResult

from .base import Evidence


class PostcopyRequests:
    name = "postcopy-requests"

    def applies(self, evidence: Evidence) -> bool:
        return "postcopy-active" in evidence.source.statuses and \
            evidence.destination.kind == "harness" and evidence.destination.status == "completed"

    def check(self, evidence: Evidence) -> InvariantResult:
        dst = evidence.destination.stats.get("x-postcopy", {})
        requested = int(dst.get("requests", -1))
        served = int(dst.get("latency-us", {}).get("count", 0))
        sent = evidence.source.stats.get("ram", {}).get("postcopy-requests")
        problems = []
        if served != requested:
            problems.append(f"{requested - served} of {requested} requested pages never arrived")
        if sent is not None and int(sent) != requested:
            problems.append(f"the destination sent {requested} requests, the source "
                            f"received {sent}")
        duplicates = int(dst.get("dropped-duplicates", 0))
        if duplicates:
            problems.append(f"{duplicates} pages arrived again after they were placed")
        if problems:
            return InvariantResult(self.name, False, "; ".join(problems))
        return InvariantResult(self.name, True, f"{requested} requests, all served, counted "
                                                f"alike on both sides, no page placed twice")
