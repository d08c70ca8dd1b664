"""Probe schedule: who to ping when, and who failed to answer (pure; ``now`` passed in).

Every peer is pinged every ``interval`` seconds; a ping unanswered after
``timeout`` seconds means the peer is dead (DESIGN.md §5).  First probes are
spread over the interval so a mesh of N nodes does not ping in bursts.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass


@dataclass
class _Peer:
    next_probe: float
    ping_id: int | None = None
    sent_at: float = 0.0
    rtt: float | None = None
    last_heard: float = 0.0


class ProbeSchedule:
    """Ping bookkeeping for every tracked peer."""

    def __init__(self, interval: float, timeout: float, rng: random.Random | None = None) -> None:
        self.interval = interval
        self.timeout = timeout
        self._peers: dict[str, _Peer] = {}
        self._ids = itertools.count(1)
        self._rng = rng or random.Random()

    def track(self, node_id: str, now: float) -> None:
        """Start probing ``node_id`` (no-op if tracked)."""
        if node_id not in self._peers:
            first = now + self._rng.uniform(0.5, 1.0) * self.interval
            self._peers[node_id] = _Peer(next_probe=first, last_heard=now)

    def relinked(self, node_id: str, now: float) -> None:
        """A new link to ``node_id`` (it restarted, or a duplicate was replaced): a probe
        still outstanding went out on a link that is gone and will never be answered, so
        start its schedule afresh instead of letting that probe declare it dead."""
        self._peers.pop(node_id, None)
        self.track(node_id, now)

    def untrack(self, node_id: str) -> None:
        """Stop probing ``node_id``."""
        self._peers.pop(node_id, None)

    def heard_from(self, node_id: str, now: float) -> None:
        """Any frame from the peer counts as a sign of life."""
        if (peer := self._peers.get(node_id)) is not None:
            peer.last_heard = now

    def due(self, now: float) -> list[tuple[str, int]]:
        """``(node id, ping id)`` for every probe due now; marks them sent."""
        pings = []
        for node_id, peer in self._peers.items():
            if peer.ping_id is None and peer.next_probe <= now:
                peer.ping_id, peer.sent_at = next(self._ids), now
                pings.append((node_id, peer.ping_id))
        return pings

    def pong(self, node_id: str, ping_id: object, now: float) -> float | None:
        """Record an answer; returns the round-trip time if it answers our ping."""
        peer = self._peers.get(node_id)
        if peer is None or peer.ping_id is None or ping_id != peer.ping_id:
            return None
        peer.rtt = now - peer.sent_at
        peer.ping_id = None
        peer.last_heard = now
        peer.next_probe = now + self.interval
        return peer.rtt

    def expired(self, now: float) -> list[str]:
        """Peers whose ping went unanswered past the timeout."""
        return [
            node_id
            for node_id, peer in self._peers.items()
            if peer.ping_id is not None and now - peer.sent_at >= self.timeout
        ]

    def rtt(self, node_id: str) -> float | None:
        """Last measured round-trip time, in seconds."""
        peer = self._peers.get(node_id)
        return peer.rtt if peer else None

    def last_heard(self, node_id: str) -> float | None:
        """When the peer was last heard from."""
        peer = self._peers.get(node_id)
        return peer.last_heard if peer else None
