"""Demand: requests a minute per model, and the rules that act on it (DESIGN.md §6).

Pure: ``now`` (wall seconds) is passed in.  Each node's proxy counts the requests it
routes (:class:`DemandMeter`) and gossips them in ``demand``; summed over the mesh they
are the model's demand, counted once per request wherever it entered.  Two rules read
them, and every node computes both the same way from the same announcements, so only
the node that placement names acts:

- **Self-healing** (:func:`orphaned`): a node that died or left had models hot that
  no live node has hot or is loading; those that were pinned there, or in use (a
  request routed for them within ``window_s``), are placed again.
- **Replicas under demand** (:func:`wanting_replicas`): a model hot on ``R`` nodes
  whose demand per replica is at least ``min_rpm`` and ``imbalance`` times that of the
  coldest other hot model (mesh-llm's rule: 10 requests a minute, 3x) gets one more
  replica, one at a time (not while a replica of it is loading).  Replicas beyond
  need cool off by their TTL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshllm.gossip import ModelState, PeerAnnouncement, Role

DEMAND_WINDOW_S = 60.0  # requests a minute are counted over this sliding window
DEMAND_BUCKETS = 12  # the window's resolution: 5 s buckets
MAX_TRACKED = 128  # models one meter tracks (an announcement's map bound)
HEAL_WINDOW_S = 15 * 60.0  # a model routed within this (the default TTL) is in use
REPLICA_MIN_RPM = 10.0  # demand per replica that may add one (mesh-llm: 10 req/min)
REPLICA_IMBALANCE = 3.0  # ... when this many times the coldest other hot model's


@dataclass(slots=True)
class _Track:
    last: float
    counts: dict[int, int] = field(default_factory=dict)  # bucket index -> requests


class DemandMeter:
    """Requests a minute per model, over a sliding window."""

    def __init__(self, window_s: float = DEMAND_WINDOW_S, buckets: int = DEMAND_BUCKETS) -> None:
        if window_s <= 0 or buckets <= 0:
            raise ValueError("window and buckets must be positive")
        self.window_s = window_s
        self._width = window_s / buckets
        self._buckets = buckets
        self._tracks: dict[str, _Track] = {}

    def record(self, model: str, now: float) -> None:
        """One request for ``model`` routed at ``now``."""
        track = self._tracks.get(model)
        if track is None:
            if len(self._tracks) >= MAX_TRACKED:
                oldest = min(self._tracks, key=lambda m: self._tracks[m].last)
                del self._tracks[oldest]
            track = self._tracks[model] = _Track(now)
        track.last = max(track.last, now)
        index = math.floor(now / self._width)
        track.counts[index] = track.counts.get(index, 0) + 1
        for old in [i for i in track.counts if i <= index - self._buckets]:
            del track.counts[old]

    def rpm(self, model: str, now: float) -> float:
        """Requests a minute for ``model`` over the window ending at ``now``."""
        track = self._tracks.get(model)
        if track is None:
            return 0.0
        first = math.floor(now / self._width) - self._buckets + 1
        count = sum(n for i, n in track.counts.items() if i >= first)
        return count * 60.0 / self.window_s

    def fields(self, now: float, keep_s: float = HEAL_WINDOW_S) -> dict[str, dict[str, Any]]:
        """``demand`` for the announcement: ``{model: {rpm, last}}`` (``last`` in wall
        ms) for models routed within ``keep_s``; older ones are forgotten."""
        for model in [m for m, t in self._tracks.items() if now - t.last > keep_s]:
            del self._tracks[model]
        return {
            model: {"rpm": round(self.rpm(model, now), 1), "last": int(track.last * 1000)}
            for model, track in sorted(self._tracks.items())
        }


@dataclass(frozen=True, slots=True)
class Orphan:
    """A model whose last hot copy went with ``node_id``; ``pinned`` there."""

    model: str
    node_id: str
    pinned: bool


_CLAIMS = (ModelState.READY, ModelState.STARTING, ModelState.FETCHING)


def orphaned(
    departed: PeerAnnouncement,
    live: Iterable[PeerAnnouncement],
    now: float,
    window_s: float = HEAL_WINDOW_S,
) -> list[Orphan]:
    """The models ``departed`` (a node that died or left; its last announcement) had
    hot that no ``live`` node has hot or is loading, and that were pinned there or in
    use (any node, the departed one too, routed a request for it within ``window_s``
    of ``now``), by name."""
    live = [a for a in live if a.node_id != departed.node_id]
    hot = [m for m, s in departed.serving.items() if s == ModelState.READY]
    found = []
    for model in sorted(hot):
        if any(a.serving.get(model) in _CLAIMS for a in live if a.role != Role.CLIENT):
            continue
        pinned = bool(departed.pool.get(model, {}).get("pinned"))
        if pinned or _last_used(model, [departed, *live]) >= (now - window_s) * 1000:
            found.append(Orphan(model, departed.node_id, pinned))
    return found


def wanting_replicas(
    announcements: Iterable[PeerAnnouncement],
    min_rpm: float = REPLICA_MIN_RPM,
    imbalance: float = REPLICA_IMBALANCE,
) -> list[str]:
    """The models that should get one more replica now, by name (rule: module doc)."""
    everyone = list(announcements)
    anns = [a for a in everyone if a.role != Role.CLIENT]
    per_replica: dict[str, float] = {}
    loading: set[str] = set()
    for a in anns:
        for model, state in a.serving.items():
            if state in (ModelState.STARTING, ModelState.FETCHING):
                loading.add(model)
    for model in {m for a in anns for m in a.ready_models}:
        replicas = sum(1 for a in anns if a.serving.get(model) == ModelState.READY)
        rpm = sum(float(a.demand.get(model, {}).get("rpm", 0.0)) for a in everyone)
        per_replica[model] = rpm / replicas
    wanted = []
    for model, rpm in sorted(per_replica.items()):
        if model in loading or rpm < min_rpm:
            continue
        others = [r for m, r in per_replica.items() if m != model]
        if not others or rpm >= imbalance * min(others):
            wanted.append(model)
    return wanted


def _last_used(model: str, announcements: Iterable[PeerAnnouncement]) -> float:
    return max(
        (float(a.demand[model].get("last", 0)) for a in announcements if model in a.demand),
        default=-math.inf,
    )
