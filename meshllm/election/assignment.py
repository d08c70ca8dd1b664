"""Which model a node should serve: memory fit, startup choice, auto-assignment (DESIGN.md §6).

Pure functions over announcements and sizes; the node feeds them MeshState and acts on
the answer (start llama-server, or fetch the GGUF from ``Assignment.sources`` first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from meshllm.election.catalog import catalog_models
from meshllm.gossip import ModelState, PeerAnnouncement, Role

MIB = 1 << 20

# What llama-server needs beyond the GGUF's bytes, for the default context we run it with
# (4096 tokens, f16 KV cache, default 512-token micro-batch):
# - KV cache, which grows with the weights: 2 (K and V) x layers x context x KV width x 2 B.
#   Llama-3.1-8B Q4_K_M (4.9 GB, GQA, KV width 1024): 2 x 32 x 4096 x 1024 x 2 B = 512 MiB,
#   about 11 % of the file; 20 % leaves room for GGUF metadata and quantisations whose
#   files are smaller per parameter.  Old models without GQA need more (Llama-2-7B: 2 GiB
#   at 4096 tokens); the 512 MiB floor below covers part of that.
# - compute and output buffers, which grow with batch size and vocabulary more than with
#   weights: a few hundred MiB whatever the model (262k-entry vocabularies such as Gemma 3
#   are at the top of that range).  Hence a fixed allowance, which also dominates for tiny
#   models: Gemma 3 270M (253 MB file, 72 MiB of KV cache) is estimated at ~0.8 GB.
# Over-estimating only makes a node leave a model to a larger one; under-estimating makes
# it swap or be OOM-killed, so the allowance errs high.  With `-c 0` llama-server takes
# the model's training context (up to 128k tokens), whose KV cache can exceed the weights:
# the supervisor must pass an explicit context for this estimate to hold.
KV_CACHE_FRACTION = 0.2
COMPUTE_ALLOWANCE_BYTES = 512 * MIB


def estimate_model_memory(file_bytes: int) -> int:
    """Bytes llama-server needs to serve a GGUF of ``file_bytes`` (weights + KV + buffers)."""
    if file_bytes < 0:
        raise ValueError(f"negative model size {file_bytes}")
    return file_bytes + int(file_bytes * KV_CACHE_FRACTION) + COMPUTE_ALLOWANCE_BYTES


def estimate_loaded_memory(
    file_bytes: int, kv_bytes_per_token: int | None, context_tokens: int
) -> int:
    """Bytes llama-server needs for a GGUF whose header is read: its weights, its f16 KV
    cache at ``context_tokens``, and the compute allowance.  Without the header's shape
    (``kv_bytes_per_token`` None), :func:`estimate_model_memory`, which is what peers
    use, knowing only the file's size."""
    if kv_bytes_per_token is None:
        return estimate_model_memory(file_bytes)
    if file_bytes < 0 or kv_bytes_per_token < 0 or context_tokens < 0:
        raise ValueError("negative model size, KV width or context")
    return file_bytes + kv_bytes_per_token * context_tokens + COMPUTE_ALLOWANCE_BYTES


def fits(model_bytes: int, capacity_bytes: int) -> bool:
    """Whether a GGUF of ``model_bytes`` (file size) can be served within ``capacity_bytes``.

    ``capacity_bytes`` is a node's ``memory_bytes``, its memory for models: VRAM, or
    RAM on a CPU-only node.
    A negative size is not a model and fits nowhere.
    """
    return model_bytes >= 0 and estimate_model_memory(model_bytes) <= capacity_bytes


@dataclass(frozen=True, slots=True)
class StartupChoice:
    """What a node started with ``--model`` flags serves, and what it seeds the catalog with."""

    serve: str | None
    requested: tuple[str, ...]


def choose_startup_model(
    requested: Sequence[str], local_sizes: Mapping[str, int], capacity_bytes: int
) -> StartupChoice:
    """Serve the first requested model on local disk that fits; request all the others.

    ``local_sizes`` is the models dir (name -> file bytes).  A name that is not on disk
    cannot be served at startup (the mesh may fetch it later).  ``requested`` keeps the
    order of the flags, without duplicates and without the served model.
    """
    serve = next(
        (m for m in requested if m in local_sizes and fits(local_sizes[m], capacity_bytes)),
        None,
    )
    others = tuple(m for m in dict.fromkeys(requested) if m != serve)
    return StartupChoice(serve=serve, requested=others)


class AssignReason(StrEnum):
    """Why auto-assignment picked a model: the DESIGN §6 priority that matched."""

    UNSERVED_LOCAL = "unserved-local"  # 1. nobody serves it, and it is on my disk
    UNSERVED_FETCH = "unserved-fetch"  # 2. nobody serves it; a peer has it on disk
    LEAST_SERVED_LOCAL = "least-served-local"  # 3. the least-served model on my disk
    LEAST_SERVED_FETCH = "least-served-fetch"  # 4. the least-served model I can fetch


@dataclass(frozen=True, slots=True)
class Assignment:
    """The model a joining node should serve.

    ``sources`` are the live peers with the GGUF on disk, best first (least loaded, then
    node id); the node fetches from them when ``needs_fetch``.
    """

    model: str
    reason: AssignReason
    needs_fetch: bool
    sources: tuple[str, ...]


def assign(me: PeerAnnouncement, peers: Iterable[PeerAnnouncement]) -> Assignment | None:
    """Pick the model for a node that joined without ``--model``; None if nothing fits.

    ``peers`` are the live peers (an announcement of ``me`` among them is ignored).
    Candidates are the catalog models (every node's ``available_models`` and
    ``requested_models``) that are on my disk or on a non-client peer's disk, and whose
    size fits ``me.memory_bytes``.  Priorities, first match wins (DESIGN §6):

    1. unserved and on my disk;  2. unserved, to fetch;
    3. least served on my disk;  4. least served, to fetch.

    A model counts as served by each live non-client peer that has it in ``serving`` in
    a state other than ``failed`` (fetching and starting count: that node has claimed it).
    Ties within a priority: fewest servers, then a model someone requested, then the
    largest, then the model name.  A client is never assigned anything.
    """
    if me.role == Role.CLIENT:
        return None
    others = [p for p in peers if p.node_id != me.node_id]
    servers = [p for p in others if p.role != Role.CLIENT]
    requested = {m for node in [me, *others] for m in node.requested_models}
    catalog = catalog_models([me, *others])

    best: tuple[tuple[int, int, bool, int, str], Assignment] | None = None
    for model in catalog:
        holders = [p for p in servers if file_size(p, model) is not None]
        size = file_size(me, model)
        local = size is not None
        if size is None and holders:
            # Peers should agree on a file's size; if they don't, plan for the largest.
            size = max(p.available_models[model] for p in holders)
        if size is None:
            continue  # known only by name, or only to clients: it cannot be had
        if not fits(size, me.memory_bytes):
            continue
        served = sum(1 for p in servers if _serves(p, model))
        if served == 0:
            reason = AssignReason.UNSERVED_LOCAL if local else AssignReason.UNSERVED_FETCH
        else:
            reason = AssignReason.LEAST_SERVED_LOCAL if local else AssignReason.LEAST_SERVED_FETCH
        # Ties: someone asked for a requested model by name, so it answers known demand.
        # Larger first because it is the harder model to place: a small one still fits the
        # smaller nodes that join later, a large one only nodes like this (first-fit
        # decreasing bin packing).  The name makes the choice total.
        key = (_PRIORITY[reason], served, model not in requested, -size, model)
        if best is None or key < best[0]:
            sources = tuple(p.node_id for p in sorted(holders, key=lambda p: (p.load, p.node_id)))
            best = (key, Assignment(model, reason, needs_fetch=not local, sources=sources))
    return best[1] if best else None


_PRIORITY = {reason: rank for rank, reason in enumerate(AssignReason)}


def file_size(node: PeerAnnouncement, model: str) -> int | None:
    """The size of ``model`` on ``node``'s disk; None if absent or not a plausible size."""
    size = node.available_models.get(model)
    # Announcements are a peer's word: a non-positive size is no file we could fetch.
    return size if isinstance(size, int) and size > 0 else None


def _serves(node: PeerAnnouncement, model: str) -> bool:
    state = node.serving.get(model)
    return state is not None and state != ModelState.FAILED


def why_unassigned(me: PeerAnnouncement, peers: Iterable[PeerAnnouncement]) -> str:
    """Why :func:`assign` finds nothing for ``me``, in words for the log and ``/api/status``.

    Only meaningful when ``assign(me, peers)`` is None: then every catalog model is
    either known only by name (nobody has its file) or too large for ``me``.
    """
    if me.role == Role.CLIENT:
        return "a lite client serves nothing"
    others = [p for p in peers if p.node_id != me.node_id and p.role != Role.CLIENT]
    nodes = [me, *others]
    catalog = catalog_models(nodes)
    if not catalog:
        return "the mesh has no models yet (start a node with --model NAME)"
    sizes = {
        m: max(s for node in nodes if (s := file_size(node, m)) is not None)
        for m in catalog
        if any(file_size(node, m) is not None for node in nodes)
    }
    reasons = []
    if nameless := sorted(catalog - sizes.keys()):
        reasons.append(f"no node has a copy of {', '.join(nameless)}")
    if sizes:
        smallest = min(sizes, key=lambda m: (sizes[m], m))
        kind = "VRAM" if me.memory_kind == "vram" else "RAM"
        reasons.append(
            f"no model fits this node's {gib(me.memory_bytes)} of {kind} for models "
            f"(the smallest, {smallest}, needs {gib(estimate_model_memory(sizes[smallest]))})"
        )
    return "; ".join(reasons)


def gib(n: int) -> str:
    """``n`` bytes in GiB, for messages."""
    return f"{n / (1 << 30):.1f} GiB"
