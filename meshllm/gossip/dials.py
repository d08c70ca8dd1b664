"""Who to dial, when (pure; ``now`` passed in): memberlist's reconnect, bounded.

Three kinds of plans, one per key: a *seed* (an address from the join token, with
the node id it names), redialled whenever no link to it is up; a *known peer* we
learnt of from a signed announcement but hold no link to, redialled on a back-off
up to ``reconnect_interval``; a *removed peer* we once held a link to, redialled
every ``reconnect_interval`` until ``reconnect_timeout``, so a split mesh heals
once the network does.  All of it at most ``rate`` dials a second, and at most
``max_plans`` plans.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SEED_FIRST_BACKOFF = 0.5  # seconds before a seed that did not answer is tried again
PEER_FIRST_BACKOFF = 1.0


class TokenBucket:
    """``rate`` per second, with a burst of twice that."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate, self.capacity = rate, 2 * rate
        self.tokens, self.at = self.capacity, now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True)
class Dial:
    """Connect to ``node_id`` at the first of ``addrs`` that answers (``node_id`` None:
    whoever answers); report with :meth:`Dials.done`."""

    key: str
    addrs: tuple[str, ...]
    node_id: str | None


@dataclass
class _Plan:
    addrs: tuple[str, ...]
    node_id: str | None
    next_at: float
    backoff: float
    until: float
    seed: bool
    in_flight: bool = False


class Dials:
    """The dial plans of one node."""

    def __init__(
        self,
        *,
        rate: float,
        reconnect_interval: float,
        reconnect_timeout: float,
        max_plans: int,
        now: float,
        rng: random.Random,
    ) -> None:
        self.reconnect_interval = reconnect_interval
        self.reconnect_timeout = reconnect_timeout
        self.max_plans = max_plans
        self.deferred = 0  # dials the rate put off
        self.dropped = 0  # plans refused: too many
        self._bucket = TokenBucket(rate, now)
        self._plans: dict[str, _Plan] = {}  # key: node id, or "seed:" + addr
        self._rng = rng

    def seed(self, addr: str, node_id: str | None, now: float) -> str:
        """Join through ``addr``; returns the plan's key."""
        key = f"seed:{addr}"
        self._plan(key, _Plan((addr,), node_id, now, SEED_FIRST_BACKOFF, math.inf, True))
        return key

    def peer(self, node_id: str, addrs: tuple[str, ...], now: float) -> None:
        """A known peer without a link: dial it soon (no-op if planned already)."""
        if node_id not in self._plans and addrs:
            self._plan(node_id, _Plan(addrs, node_id, now, PEER_FIRST_BACKOFF, math.inf, False))

    def removed(self, node_id: str, addrs: tuple[str, ...], now: float) -> None:
        """A peer we held a link to was found dead: redial its last addresses."""
        interval, until = self.reconnect_interval, now + self.reconnect_timeout
        if addrs:
            self._plans.pop(node_id, None)
            self._plan(node_id, _Plan(addrs, node_id, now + interval, interval, until, False))

    def forget(self, node_id: str) -> None:
        """No more dials to ``node_id`` (it is linked, or it left); seeds stay."""
        self._plans.pop(node_id, None)

    def refused(self, key: str) -> None:
        """The other end is not of this mesh, or not the node its token names."""
        self._plans.pop(key, None)

    def done(self, key: str, ok: bool, now: float) -> None:
        """The result of a :class:`Dial`."""
        plan = self._plans.get(key)
        if plan is None:
            return
        plan.in_flight = False
        if ok and plan.seed:
            plan.backoff = self.reconnect_interval  # keep checking, slowly
        elif not ok:
            plan.backoff = min(plan.backoff * 2, self.reconnect_interval)
        plan.next_at = now + plan.backoff * self._rng.uniform(0.8, 1.2)

    def due(self, now: float, linked: set[str]) -> list[Dial]:
        """The dials to make now."""
        orders = []
        for key, plan in list(self._plans.items()):
            if plan.in_flight or plan.next_at > now:
                continue
            if plan.until <= now:
                del self._plans[key]
                continue
            if plan.node_id is not None and plan.node_id in linked:
                if plan.seed:
                    plan.next_at = now + self.reconnect_interval
                else:
                    del self._plans[key]
                continue
            if not self._bucket.take(now):
                self.deferred += 1
                break
            plan.in_flight = True
            orders.append(Dial(key, plan.addrs, plan.node_id))
        return orders

    def next_deadline(self) -> float | None:
        return min((p.next_at for p in self._plans.values() if not p.in_flight), default=None)

    def clear(self) -> None:
        """The node is stopping."""
        self._plans.clear()

    def _plan(self, key: str, plan: _Plan) -> None:
        if key not in self._plans and len(self._plans) >= self.max_plans:
            self.dropped += 1
            return
        self._plans[key] = plan
