"""Postcopy's page requests: every request was served, both sides count the same, and no
page was received twice (QEMU places each page once).

"The same" is exact for an undisturbed run.  A break (postcopy-paused) loses requests in
flight and the destination sends the pending one again after the recovery (`resent`);
the proxy may drop or duplicate REQ_PAGES on purpose (its fault reports count them).
Then the source may have received at most what was sent: requests + re-sends +
duplicates - drops."""

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
        resent = int(dst.get("resent", 0))
        served = int(dst.get("latency-us", {}).get("count", 0))
        sent = evidence.source.stats.get("ram", {}).get("postcopy-requests")
        dropped, duplicated = _tampered(evidence)
        broken = "postcopy-paused" in evidence.destination.statuses
        problems = []
        if served != requested:
            problems.append(f"{requested - served} of {requested} requested pages never arrived")
        most = requested + resent + duplicated - dropped
        if sent is not None and not broken and not dropped and not duplicated \
                and int(sent) != requested:
            problems.append(f"the destination sent {requested} requests, the source "
                            f"received {sent}")
        elif sent is not None and int(sent) > most:
            problems.append(f"the source received {sent} requests, more than the "
                            f"{most} the destination sent")
        duplicates = int(dst.get("dropped-duplicates", 0))
        if duplicates:
            problems.append(f"{duplicates} pages arrived again after they were placed")
        if problems:
            return InvariantResult(self.name, False, "; ".join(problems))
        if broken or dropped or duplicated:
            return InvariantResult(self.name, True, (
                f"{requested} requests, all served; {resent} re-sent after a break, "
                f"{dropped} dropped and {duplicated} duplicated by the proxy, the source "
                f"received {sent}; no page placed twice"))
        return InvariantResult(self.name, True, f"{requested} requests, all served, counted "
                                                f"alike on both sides, no page placed twice")


def _tampered(evidence: Evidence) -> tuple[int, int]:
    """Page requests the proxy dropped / duplicated (from its fault reports)."""
    counts = {"net.drop": 0, "net.duplicate": 0}
    for fault in evidence.faults:
        detail = fault.detail
        if fault.kind in counts and str(detail.get("frame") or detail.get("message", "")) \
                .startswith("REQ_PAGES") and "offset" in detail:
            counts[fault.kind] += 1
    return counts["net.drop"], counts["net.duplicate"]
