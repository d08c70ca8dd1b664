"""MeshState: the merged announcements of every live peer (pure; no I/O, no clock).

Merge rules (DESIGN.md §5):

* the higher ``(incarnation, seq)`` wins; equal or lower is old news;
* a peer declared dead or gone leaves a *tombstone* of its incarnation, so
  stale announcements still in flight cannot bring it back; a restarted node
  (higher incarnation) or one refuting its death is welcome at once;
* news about this node itself never overwrites it: a death notice for our
  current incarnation is refuted by bumping the incarnation.

Every mutating call returns events describing what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from meshllm.gossip.announcement import PeerAnnouncement

TOMBSTONE_TTL = 120.0  # seconds a removed peer's incarnation is remembered

Digest = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class PeerJoined:
    """A peer unknown until now (or back after a restart)."""

    peer: PeerAnnouncement


@dataclass(frozen=True)
class PeerUpdated:
    """A known peer sent a newer announcement."""

    old: PeerAnnouncement
    new: PeerAnnouncement


@dataclass(frozen=True)
class PeerRemoved:
    """A peer was found dead or said it is leaving."""

    peer: PeerAnnouncement
    reason: Literal["dead", "left"]


@dataclass(frozen=True)
class SelfRefuted:
    """Someone declared this node dead; it raised its incarnation to refute."""

    me: PeerAnnouncement


StateEvent = PeerJoined | PeerUpdated | PeerRemoved | SelfRefuted


class MeshState:
    """This node's announcement plus the merged announcements of its live peers."""

    def __init__(self, me: PeerAnnouncement) -> None:
        self.me = me
        self.peers: dict[str, PeerAnnouncement] = {}
        self._tombstones: dict[str, tuple[int, float]] = {}  # node id -> (incarnation, expiry)

    @property
    def node_id(self) -> str:
        return self.me.node_id

    def all(self) -> list[PeerAnnouncement]:
        """This node and its live peers."""
        return [self.me, *self.peers.values()]

    def get(self, node_id: str) -> PeerAnnouncement | None:
        """The announcement of ``node_id`` (this node included)."""
        return self.me if node_id == self.me.node_id else self.peers.get(node_id)

    def update_me(self, **changes: object) -> PeerAnnouncement:
        """Change this node's announcement and bump its ``seq``."""
        self.me = self.me.bump(**changes)
        return self.me

    def apply(self, ann: PeerAnnouncement, now: float) -> StateEvent | None:
        """Merge one announcement; returns what changed, if anything."""
        if ann.mesh_id != self.me.mesh_id or ann.node_id == self.me.node_id:
            return None
        tomb = self._tombstones.get(ann.node_id)
        if tomb is not None:
            if tomb[1] > now and ann.incarnation <= tomb[0]:
                return None
            del self._tombstones[ann.node_id]
        old = self.peers.get(ann.node_id)
        if old is not None and ann.rank <= old.rank:
            return None
        self.peers[ann.node_id] = ann
        return PeerJoined(ann) if old is None else PeerUpdated(old, ann)

    def remove(
        self, node_id: str, incarnation: int, now: float, reason: Literal["dead", "left"]
    ) -> StateEvent | None:
        """Apply a death or leave notice about ``node_id`` at ``incarnation``."""
        if node_id == self.me.node_id:
            if reason == "dead" and incarnation >= self.me.incarnation:
                self.me = replace(self.me, incarnation=incarnation + 1, seq=self.me.seq + 1)
                return SelfRefuted(self.me)
            return None
        peer = self.peers.get(node_id)
        if peer is None or peer.incarnation > incarnation:
            return None  # unknown, or the notice is about an older life
        del self.peers[node_id]
        self._tombstones[node_id] = (incarnation, now + TOMBSTONE_TTL)
        return PeerRemoved(peer, reason)

    def expire(self, now: float) -> None:
        """Forget tombstones past their time."""
        for node_id in [n for n, (_, until) in self._tombstones.items() if until <= now]:
            del self._tombstones[node_id]

    def digest(self) -> Digest:
        """``node id -> (incarnation, seq)`` of everything known, for anti-entropy."""
        return {a.node_id: a.rank for a in self.all()}

    def compare(self, theirs: Digest) -> tuple[list[PeerAnnouncement], list[str]]:
        """Against a peer's digest: what we should push, and which ids we should pull."""
        push = [a for a in self.all() if tuple(theirs.get(a.node_id, (-1, -1))) < a.rank]
        pull = []
        for node_id, rank in theirs.items():
            mine = self.get(node_id)
            if node_id == self.me.node_id or (mine is not None and mine.rank >= tuple(rank)):
                continue
            tomb = self._tombstones.get(node_id)
            if tomb is not None and rank[0] <= tomb[0]:
                continue
            pull.append(node_id)
        return push, pull
