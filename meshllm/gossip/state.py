"""MeshState: the merged announcements of every live peer (pure; no I/O, no clock).

Merge rules (DESIGN.md §5):

* the higher ``(incarnation, seq)`` wins; equal or lower is old news;
* a peer found dead, or whose signed ``leaving`` announcement arrived, leaves a
  *tombstone* of its incarnation, so stale announcements still in flight cannot
  bring it back; a restarted node (higher incarnation), one refuting a suspicion,
  or one we hold a live link to again is welcome at once;
* news about this node itself never overwrites it;
* the table holds at most ``max_peers`` peers: a new one beyond that is refused
  (and counted by the caller).

Every mutating call returns the event describing what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from meshllm.gossip.announcement import MAX_COUNTER, PeerAnnouncement, SignedAnnouncement

TOMBSTONE_TTL = 120.0  # seconds a removed peer's incarnation is remembered
DEFAULT_MAX_PEERS = 256  # peers one node tracks (config: max_peers)

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
    """This node was suspected; it raised its incarnation to refute."""

    me: PeerAnnouncement


StateEvent = PeerJoined | PeerUpdated | PeerRemoved | SelfRefuted


class MeshState:
    """This node's announcement plus the merged announcements of its live peers."""

    def __init__(self, me: PeerAnnouncement, max_peers: int = DEFAULT_MAX_PEERS) -> None:
        self.me = me
        self.max_peers = max_peers
        self.peers: dict[str, PeerAnnouncement] = {}
        self.signed: dict[str, SignedAnnouncement] = {}  # the bytes each peer signed
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

    def refute(self, wall_ms: int, past: int = -1) -> SelfRefuted:
        """Raise this node's incarnation past any suspicion of its current one, and past
        ``past`` (an incarnation of ours the mesh still holds, from a run whose clock was
        ahead); to the wall clock in ms when that is further, so incarnations never run
        ahead of it needlessly."""
        incarnation = min(max(self.me.incarnation + 1, past + 1, wall_ms), MAX_COUNTER)
        self.me = replace(self.me, incarnation=incarnation, seq=self.me.seq + 1)
        return SelfRefuted(self.me)

    def is_new(self, node_id: str, rank: tuple[int, int], now: float) -> bool:
        """Whether an announcement of ``node_id`` at ``rank`` would change anything:
        asked before paying for its signature check."""
        if node_id == self.me.node_id:
            return False
        tomb = self._tombstones.get(node_id)
        if tomb is not None and tomb[1] > now and rank[0] <= tomb[0]:
            return False
        old = self.peers.get(node_id)
        if old is None:
            return len(self.peers) < self.max_peers
        return rank > old.rank

    def apply(
        self, ann: PeerAnnouncement, now: float, signed: SignedAnnouncement | None = None
    ) -> StateEvent | None:
        """Merge one announcement (with the bytes it was signed as, to relay them);
        returns what changed, if anything."""
        if ann.mesh_id != self.me.mesh_id or not self.is_new(ann.node_id, ann.rank, now):
            return None
        self._tombstones.pop(ann.node_id, None)
        old = self.peers.get(ann.node_id)
        if ann.leaving:
            self._bury(ann.node_id, ann.incarnation, now)
            return PeerRemoved(old, "left") if old is not None else None
        self.peers[ann.node_id] = ann
        if signed is not None:
            self.signed[ann.node_id] = signed
        return PeerJoined(ann) if old is None else PeerUpdated(old, ann)

    def remove(self, node_id: str, now: float) -> PeerRemoved | None:
        """This node's verdict: ``node_id`` is dead (its current incarnation)."""
        peer = self.peers.get(node_id)
        if peer is None:
            return None
        self._bury(node_id, peer.incarnation, now)
        return PeerRemoved(peer, "dead")

    def revive(self, node_id: str) -> None:
        """We hold a live, authenticated link to ``node_id``: no stale tombstone may
        keep its announcements out."""
        self._tombstones.pop(node_id, None)

    def tombstones(self, now: float) -> dict[str, int]:
        """``node id -> incarnation`` of the peers removed lately (still remembered)."""
        return {n: inc for n, (inc, until) in self._tombstones.items() if until > now}

    def expire(self, now: float) -> None:
        """Forget tombstones past their time."""
        for node_id in [n for n, (_, until) in self._tombstones.items() if until <= now]:
            del self._tombstones[node_id]

    def digest(self) -> Digest:
        """``node id -> (incarnation, seq)`` of everything known, for anti-entropy."""
        return {a.node_id: a.rank for a in self.all()}

    def compare(self, theirs: Digest, now: float) -> tuple[list[str], list[str]]:
        """Against a peer's digest: the ids whose announcements we should push (ours
        newer or theirs missing), and the ids we should pull (theirs newer)."""
        push = [a.node_id for a in self.all() if theirs.get(a.node_id, (-1, -1)) < a.rank]
        pull = [node_id for node_id, rank in theirs.items() if self.is_new(node_id, rank, now)]
        return push, pull

    def _bury(self, node_id: str, incarnation: int, now: float) -> None:
        self.peers.pop(node_id, None)
        self.signed.pop(node_id, None)
        self._tombstones[node_id] = (incarnation, now + TOMBSTONE_TTL)
        if len(self._tombstones) > 2 * self.max_peers:  # bounded: drop the oldest
            oldest = min(self._tombstones, key=lambda n: self._tombstones[n][1])
            del self._tombstones[oldest]
