"""Link faults on an agent's host: applied on the runner's request, always undone.

Strategy: the fault itself is `harness.faults.link.apply(kind, toward=ADDRESS, ...)`,
which returns an object with `undo()` and `detail()` (and raises `LinkFaultError` with a
readable message); it is imported only when a link fault is asked for, so an agent on a
host without the tools still runs peers.  What this module adds is ownership: every
applied fault is an `ActiveLink` of its run with an optional deadline, and the agent's
loop undoes it at that deadline, when the runner asks, when the run ends or is orphaned,
and when the agent stops -- a cut link never outlives the run that cut it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from harness.control.agent_messages import LinkFaultRequest
from harness.control.errors import CommandError
from harness.control.messages import GENERIC_ERROR

__all__ = ["ActiveLink", "apply_link"]

log = logging.getLogger(__name__)


@dataclass
class ActiveLink:
    request: LinkFaultRequest
    fault: Any  # harness.faults.link.LinkFault
    applied_at: float
    until: float | None  # monotonic deadline of its `duration`
    detail: dict[str, Any] = field(default_factory=dict)

    def undo(self) -> tuple[dict[str, Any], str | None]:
        """Undo the fault: (its detail, an error text or None).  Never raises."""
        try:
            self.fault.undo()
        except Exception as err:  # noqa: BLE001 - reported to the runner, the agent goes on
            log.error("undoing %s toward %s: %s", self.request.kind, self.request.toward, err)
            return self.detail, f"{type(err).__name__}: {err}"
        try:
            self.detail = dict(self.fault.detail())  # now with what undid it
        except Exception as err:  # noqa: BLE001 - the detail of the apply is a fair record
            log.info("detail of %s after undo: %s", self.request.kind, err)
        return self.detail, None


def apply_link(request: LinkFaultRequest) -> ActiveLink:
    """Apply a link fault on this host; CommandError with the injector's message if not."""
    try:
        from harness.faults import link
    except ImportError as err:
        raise CommandError(GENERIC_ERROR, f"{request.kind}: link faults are not available on "
                                          f"this agent ({err})") from None
    try:
        fault = link.apply(request.kind, toward=request.toward, rate=request.rate,
                           delay=request.delay, jitter=request.jitter)
    except Exception as err:  # noqa: BLE001 - LinkFaultError, or a bug: a QMP error either way
        raise CommandError(GENERIC_ERROR, f"{request.kind} toward {request.toward}: "
                                          f"{err}") from None
    now = time.monotonic()
    until = now + request.duration if request.duration is not None else None
    try:
        detail = dict(fault.detail())
    except Exception as err:  # noqa: BLE001 - a detail is a nicety, the fault is applied
        detail = {"detail-error": str(err)}
    return ActiveLink(request, fault, now, until, detail)
