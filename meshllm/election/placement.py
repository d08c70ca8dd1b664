"""Where a model that is hot nowhere gets loaded: the mesh-wide placement rule (DESIGN.md §6).

"Load on first request, mesh-wide": when a request names a model no node serves, one node
loads it and the others forward to it.  No node coordinates this.  Each one computes
:func:`place` over its own view of the mesh (the live announcements, as MeshState holds
them), and nodes with the same view name the same node.  Pure: no I/O, no clock, no
randomness beyond a hash of names.

The rule, in order:

1. **Claimed.** A non-client node that already has the model in ``serving`` in a state
   other than ``failed`` (fetching, starting or ready) keeps it.  Loading changes the
   inputs: the chosen node's free memory (``memory_bytes`` is free VRAM) drops by the
   model it is loading, so without this tier the next request, placed during the
   warm-up, could pick another node and load the model twice.  Ready nodes come first,
   then starting, then fetching (the nearest to answering); among equals, unweighted
   rendezvous order.  No fit check here: the memory a claimant has already spent on the
   model is no longer free.
2. **On disk.** Non-client nodes with the GGUF in ``available_models``, where it fits
   (:func:`~meshllm.election.assignment.fits`, the one memory rule) and has not failed,
   in weighted rendezvous order.
3. **Copy.** Every other non-client node where it fits and has not failed, when some
   live non-client node has the file to copy from; weighted rendezvous order.  Its
   :class:`Placement` names the nodes to fetch from.

A node on disk always comes before one that must copy: loading from disk takes seconds,
a copy takes minutes per GB while the first request waits (DESIGN §9 copies over
TLS/TCP), and a copy spends a second node's disk.  Weighting by free memory inside each
tier still spreads models over the holders, and the copy tier is only used when no
holder can take the model (too small, or failed there).  The order of tiers does not
depend on unrelated nodes, so the stability of rendezvous hashing holds across them.

**Weighted rendezvous hashing** (highest random weight; Thaler & Ravishankar, "Using
name-based mappings to increase hit rates", IEEE/ACM ToN 1998; the weighted form is
Schindelhauer & Schomaker, "Weighted distributed hash tables", SPAA 2005): each node
scores ``w / -ln(u)``, where ``u`` in (0, 1) is a hash of the model and node id and
``w`` the node's free memory; the highest score wins.  ``-ln(u)`` is an exponential
variable, so ``-ln(u) / w`` is exponential with rate ``w`` and the smallest of them (the
highest score) falls on a node with probability ``w / sum(w)``: models spread in
proportion to free memory.  A node's score depends only on the model, its own id and its
own memory, so a node joining or leaving moves only the models it wins or held, and two
nodes with the same view agree.  (Scores are floats from ``math.log``; two libms could
differ in the last bit, which changes an order only when two scores agree to ~1e-16.)

When no node can take the model, :func:`place` returns a :class:`Refusal` whose message
says why, for the 503 the proxy answers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from meshllm.election.assignment import estimate_model_memory, file_size, fits, gib
from meshllm.gossip import ModelState, PeerAnnouncement, Role

FreeMemory = Callable[[PeerAnnouncement], int]
"""A node's memory for models, in bytes, minus whatever the caller counts as taken."""


class PlacementTier(StrEnum):
    """Why a node is where it is in the placement order."""

    CLAIMED = "claimed"  # it already fetches, starts or serves the model
    ON_DISK = "on-disk"  # it has the GGUF and loads it from disk
    COPY = "copy"  # it fetches the GGUF from a peer first


class RefusalReason(StrEnum):
    """Why no node can take a model."""

    NO_NODES = "no-nodes"  # no live node serves models (only clients, or nobody)
    NO_COPY = "no-copy"  # no live node has the GGUF
    TOO_BIG = "too-big"  # it fits no node's budget
    ALL_FAILED = "all-failed"  # it failed on every node where it fits


@dataclass(frozen=True, slots=True)
class Placement:
    """The node that loads ``model``.

    ``fetch_from`` is empty when the node has the file (``tier`` claimed or on disk);
    for a copy it lists the live non-client nodes with the GGUF, least loaded first,
    then by node id (as :class:`~meshllm.election.assignment.Assignment.sources`).
    """

    model: str
    node_id: str
    tier: PlacementTier
    fetch_from: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """No node can take ``model``; ``message`` says why, in words for a 503."""

    model: str
    reason: RefusalReason
    message: str


def place(
    model: str,
    announcements: Iterable[PeerAnnouncement],
    *,
    size_bytes: int | None = None,
    free_memory: FreeMemory | None = None,
) -> Placement | Refusal:
    """The node that loads ``model``, or why none can (the rule is in the module docstring).

    ``announcements`` are the live nodes, one announcement each.  ``size_bytes`` is the
    GGUF's size; None: the largest positive size any live node announces (peers should
    agree, and planning for the largest errs on the side that fits).  When no size is
    known, the model is taken to fit the nodes that have the file and no other.
    ``free_memory`` gives each node's memory for models still free (default: its
    ``memory_bytes``); the caller may subtract what it knows to be loaded.  The answer
    does not depend on the order of ``announcements``.  A negative ``size_bytes`` raises
    ValueError.
    """
    plan = _plan(model, list(announcements), size_bytes, free_memory)
    if plan.ranked:
        node, tier = plan.ranked[0]
        fetch_from = plan.sources if tier == PlacementTier.COPY else ()
        return Placement(model=model, node_id=node.node_id, tier=tier, fetch_from=fetch_from)
    return _refusal(model, plan)


def rank(
    model: str,
    announcements: Iterable[PeerAnnouncement],
    *,
    size_bytes: int | None = None,
    free_memory: FreeMemory | None = None,
) -> list[str]:
    """Every node that could take ``model``, in placement order (arguments as :func:`place`).

    ``rank(...)[0]`` is :func:`place`'s node; the next is where the model goes if the
    first cannot take it (it fails there, or leaves).  Empty when :func:`place` refuses.
    """
    plan = _plan(model, list(announcements), size_bytes, free_memory)
    return [node.node_id for node, _ in plan.ranked]


def rendezvous_score(model: str, node_id: str, weight: float) -> float:
    """The weighted rendezvous score of ``node_id`` for ``model``: ``weight / -ln(u)``.

    ``u`` is :func:`rendezvous_hash`.  A weight at or below zero scores zero.
    """
    return max(weight, 0) / -math.log(rendezvous_hash(model, node_id))


def rendezvous_hash(model: str, node_id: str) -> float:
    """A uniform fraction in (0, 1) from sha256 of ``model + "\\0" + node_id``.

    The NUL keeps ``("ab", "c")`` and ``("a", "bc")`` apart (a model name has none).  The
    top 52 bits of the digest make ``(2h + 1) / 2**53``: an odd integer over a power of
    two is exact in a double and never 0 or 1, so ``ln(u)`` is finite and negative.
    """
    digest = hashlib.sha256(f"{model}\0{node_id}".encode()).digest()
    h = int.from_bytes(digest[:8], "big") >> 12
    return (2 * h + 1) / (1 << 53)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What :func:`place` and :func:`rank` share, and what a refusal explains."""

    ranked: list[tuple[PeerAnnouncement, PlacementTier]]
    nodes: list[PeerAnnouncement]  # the non-client nodes
    sources: tuple[str, ...]  # non-client nodes with the file, least loaded first
    size: int | None
    fitting: list[PeerAnnouncement]  # where it fits, failed or not
    free: dict[str, int]


# Nearest to answering first: a ready claimant answers now.
_CLAIM_ORDER = {ModelState.READY: 0, ModelState.STARTING: 1, ModelState.FETCHING: 2}


def _plan(
    model: str,
    announcements: list[PeerAnnouncement],
    size_bytes: int | None,
    free_memory: FreeMemory | None,
) -> _Plan:
    if size_bytes is not None and size_bytes < 0:
        raise ValueError(f"negative model size {size_bytes}")
    # DESIGN §3: a client serves nothing and is never elected; nor is its disk a source
    # (as in assignment: only nodes that serve run the copy's file server).
    nodes = [a for a in announcements if a.role != Role.CLIENT]
    measure = free_memory or (lambda a: a.memory_bytes)
    free = {a.node_id: measure(a) for a in nodes}
    size = size_bytes
    if size is None:
        # Peers should agree on a file's size; if they don't, plan for the largest.
        size = max((s for a in nodes if (s := file_size(a, model)) is not None), default=None)
    holders = {a.node_id for a in nodes if model in a.available_models}
    sources = tuple(
        a.node_id for a in sorted(nodes, key=lambda a: (a.load, a.node_id)) if a.node_id in holders
    )

    def can_hold(a: PeerAnnouncement) -> bool:
        if size is None:
            return a.node_id in holders  # it knows its own file; its loader finds out
        return fits(size, free[a.node_id])

    claimed = [a for a in nodes if a.serving.get(model) in _CLAIM_ORDER]
    fitting = [a for a in nodes if can_hold(a)]
    # Any state in ``serving`` is a claim or a failure: neither is placed anew.
    fresh = [a for a in fitting if model not in a.serving]
    on_disk = [a for a in fresh if a.node_id in holders]
    copy = [a for a in fresh if a.node_id not in holders] if sources else []

    def hrw(
        group: list[PeerAnnouncement], weigh: Callable[[PeerAnnouncement], float]
    ) -> list[PeerAnnouncement]:
        # Ties (weights of zero, say) fall to the unweighted hash, then to the node id.
        return sorted(
            group,
            key=lambda a: (
                -rendezvous_score(model, a.node_id, weigh(a)),
                -rendezvous_hash(model, a.node_id),
                a.node_id,
            ),
        )

    # sorted() is stable: rendezvous order within each state.
    claimed = sorted(hrw(claimed, lambda a: 1), key=lambda a: _CLAIM_ORDER[a.serving[model]])
    ranked = [(a, PlacementTier.CLAIMED) for a in claimed]
    ranked += [(a, PlacementTier.ON_DISK) for a in hrw(on_disk, lambda a: free[a.node_id])]
    ranked += [(a, PlacementTier.COPY) for a in hrw(copy, lambda a: free[a.node_id])]
    return _Plan(ranked, nodes, sources, size, fitting, free)


def _refusal(model: str, plan: _Plan) -> Refusal:
    if not plan.nodes:
        return Refusal(
            model,
            RefusalReason.NO_NODES,
            f"no live node can serve {model}: the mesh has no nodes that serve models",
        )
    if not plan.sources:
        return Refusal(model, RefusalReason.NO_COPY, f"no copy of {model}'s GGUF on any live node")
    if not plan.fitting:
        assert plan.size is not None  # with no size, every holder fits
        largest = min(plan.nodes, key=lambda a: (-plan.free[a.node_id], a.node_id))
        budget = max(plan.free[largest.node_id], 0)
        return Refusal(
            model,
            RefusalReason.TOO_BIG,
            f"no node can hold {model} ({plan.size} bytes, about "
            f"{gib(estimate_model_memory(plan.size))} to serve): the largest budget is "
            f"{budget} bytes ({gib(budget)}) on node {largest.node_id}",
        )
    causes = "; ".join(
        f"{a.node_id}: {a.failures.get(model) or 'no cause given'}"
        for a in sorted(plan.fitting, key=lambda a: a.node_id)
    )
    return Refusal(
        model,
        RefusalReason.ALL_FAILED,
        f"{model} failed on every node that could hold it: {causes}",
    )
