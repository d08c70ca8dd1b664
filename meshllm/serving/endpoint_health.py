"""The health of one external endpoint: a small state machine fed poll results.

Pure: each poll's outcome and ``now`` go in, a :class:`HealthChanged` comes out
when the state moves.  :class:`meshllm.serving.external.ExternalEndpoint` does the
polling.

States::

    down ──(first good poll ever)──────────────► up
    down ──(good poll)──► probation ──(UP_AFTER good in a row)──► up
    probation ──(a failure)──► down
    up ──(DOWN_AFTER failures in a row)──► down

Only ``up`` is routed to.  One failed poll does not take an endpoint away (a
busy server may miss one timeout), and one good poll does not bring a flapping
one back: the hysteresis of a load balancer's health check (HAProxy ``fall``
and ``rise``, default 3 and 2).  A server seen for the first time is trusted
at once, so a node that starts beside it serves it on its first poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POLL_INTERVAL_S = 10.0
"""Seconds between two health polls."""
POLL_TIMEOUT_S = 5.0
"""A poll that takes longer failed."""
DOWN_AFTER = 3
"""Failed polls in a row that take an ``up`` endpoint down."""
UP_AFTER = 2
"""Good polls in a row that bring a ``down`` endpoint back up (the first of them: probation)."""
DISCOVERY_INTERVAL_S = 30.0
"""Seconds between two refreshes of per-model details (Ollama ``/api/ps``: what is loaded)."""
MAX_ERROR_CHARS = 300

UP = "up"
DOWN = "down"
PROBATION = "probation"
STATES = (UP, DOWN, PROBATION)


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """The endpoint moved from state ``old`` to state ``new``."""

    old: str
    new: str


class EndpointHealth:
    """Consecutive poll outcomes → ``up`` / ``probation`` / ``down``."""

    def __init__(self, *, down_after: int = DOWN_AFTER, up_after: int = UP_AFTER) -> None:
        if down_after < 1 or up_after < 1:
            raise ValueError("down_after and up_after must be at least 1")
        self.down_after = down_after
        self.up_after = up_after
        self.state = DOWN
        self.failures = 0
        """Failed polls in a row."""
        self.successes = 0
        """Good polls in a row."""
        self.ever_up = False
        self.last_error: str | None = None
        """Why the last failed poll failed (at most ``MAX_ERROR_CHARS``); kept after a good one."""
        self.latency_ms: float | None = None
        """How long the last poll took, good or failed."""
        self.last_ok: float | None = None
        """``now`` of the last good poll."""
        self.last_poll: float | None = None
        """``now`` of the last poll."""

    @property
    def routable(self) -> bool:
        """Whether requests may go to the endpoint: only when ``up``."""
        return self.state == UP

    def ok(self, now: float, latency_ms: float | None = None) -> HealthChanged | None:
        """A good poll at ``now``."""
        self.last_poll = self.last_ok = now
        self.latency_ms = latency_ms
        self.failures = 0
        self.successes += 1
        if self.state == UP:
            return None
        if not self.ever_up or self.successes >= self.up_after:
            self.ever_up = True
            return self._move(UP)
        return self._move(PROBATION)

    def failed(
        self, now: float, error: str, latency_ms: float | None = None
    ) -> HealthChanged | None:
        """A failed poll at ``now`` (refused, timed out, bad status or body)."""
        self.last_poll = now
        self.latency_ms = latency_ms
        self.last_error = _bounded(error)
        self.successes = 0
        self.failures += 1
        if self.state == PROBATION or (self.state == UP and self.failures >= self.down_after):
            return self._move(DOWN)
        return None

    def snapshot(self) -> dict[str, Any]:
        """The state, for a status API."""
        return {
            "state": self.state,
            "routable": self.routable,
            "latency_ms": self.latency_ms,
            "last_error": self.last_error,
            "last_ok": self.last_ok,
            "failures": self.failures,
        }

    def _move(self, new: str) -> HealthChanged | None:
        old, self.state = self.state, new
        return HealthChanged(old, new) if old != new else None


def _bounded(error: str) -> str:
    text = " ".join(str(error).split()) or "failed"
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text
