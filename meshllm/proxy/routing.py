"""The routing decision (DESIGN.md §7): which node answers a request for a model.

Pure: plain data in, a :class:`RoutePlan` out; no I/O, no clock, no randomness.

Order of the attempts for a model:

1. least load first, where ``load`` is this node's requests in flight to the
   target plus the load the target announces (the caller adds them up);
2. on equal load the local replica first: it costs no network hop, and the
   load it reports is exact rather than a gossiped snapshot;
3. remaining ties in rendezvous order of the model and node id (the placement
   rule's hash, DESIGN.md §6), the same on every node: "pack idle, spread busy".
   Requests one at a time all go to the same replica, so replicas beyond need go
   idle and cool off by their TTL; concurrent ones spread by rule 1, since each
   request in flight raises its replica's load.

An unknown or missing model falls back, as mesh-llm does, to "the first
available target": the model with the most ready replicas (ties: the lowest
name), deterministic so a client sees one answer model, and reported in the
plan's ``model_used`` (the proxy's ``x-meshllm-model`` header).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshllm.election.placement import rendezvous_hash


@dataclass(frozen=True, slots=True)
class Target:
    """One ready replica of a model."""

    node_id: str
    model: str
    local: bool  # served by this node's own backend: no tunnel
    load: int = 0  # outstanding requests: ours in flight to it plus its announced load


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """Where to send a request: try ``attempts`` in order until one answers."""

    model_used: str  # the model the attempts serve ("" when nothing is served)
    attempts: tuple[Target, ...]


def order_targets(targets: Sequence[Target]) -> tuple[Target, ...]:
    """``targets`` least loaded first, local first on equal load, other ties in
    rendezvous order (then by node id)."""
    return tuple(
        sorted(
            targets,
            key=lambda t: (t.load, not t.local, -rendezvous_hash(t.model, t.node_id), t.node_id),
        )
    )


def fallback_model(targets_by_model: Mapping[str, Sequence[Target]]) -> str | None:
    """The model with the most ready replicas (ties: the lowest name); ``None`` if none."""
    best: tuple[int, str] | None = None
    for model, targets in targets_by_model.items():
        if not targets:
            continue
        key = (-len(targets), model)
        if best is None or key < best:
            best = key
    return None if best is None else best[1]


def plan_route(
    model: str | None,
    targets_by_model: Mapping[str, Sequence[Target]],
    *,
    fallback: bool = True,
) -> RoutePlan:
    """The attempts for a request naming ``model`` (``None``: the body named none).

    ``targets_by_model`` maps each model to its ready replicas.  A model with
    no replica falls back to :func:`fallback_model` when ``fallback`` is true
    (the proxy passes false for models in the catalog that are cold: a client
    that names a known model must not silently get another one).  Nothing to
    route to gives empty ``attempts`` (the caller answers 503).
    """
    if model is not None:
        targets = targets_by_model.get(model)
        if targets:
            return RoutePlan(model, order_targets(targets))
        if not fallback:
            return RoutePlan(model, ())
    chosen = fallback_model(targets_by_model)
    if chosen is None:
        return RoutePlan(model or "", ())
    return RoutePlan(chosen, order_targets(targets_by_model[chosen]))
