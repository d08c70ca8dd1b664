"""The fleet at a glance: which models are hot where, the memory there is, every node's
live resources (the seed's "3 hosts have llama3, 1 has codellama").

Pure: announcements, the resources this node has seen of each node and the time in;
plain data out, for ``/api/fleet``, ``meshllm fleet`` (its text is
:mod:`meshllm.election.fleet_text`) and the console.

A model is on a node (its state from :func:`meshllm.election.pool_view.node_state`)
or on an endpoint a node fronts (an external server, in the node's ``endpoints``).  A
model a node serves only through one of its endpoints is listed under the endpoint,
not the node too: it is one place that has it, counted once.  Live resources travel
apart from announcements (:mod:`meshllm.gossip.resource_book`) and may be ``stale``
(the last figures, old) or ``unknown`` (none heard); they are never guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from meshllm.election.pool_view import announcements_from_status, mesh_state, pool_view
from meshllm.gossip import PeerAnnouncement, PoolState, Role

RESOURCE_STATES = ("live", "stale", "unknown")
"""How fresh a node's resources are: just reported, the last ones (old), none."""

ROLES = tuple(str(r) for r in (Role.HOST, Role.WORKER, Role.CLIENT))
MEMORY_KINDS = ("vram", "ram")
"""GPU memory (from each GPU's figures), and RAM for a CPU-only node (memory_kind ram)."""

ENDPOINT_ORDER = ("warm", "cold", "probation", "draining", "down")
"""How an endpoint has a model, in the order ``meshllm fleet`` counts them."""

GIB = 1024**3
NOTHING_HOT = "no model is hot yet"

_HOT = frozenset({PoolState.HOT, PoolState.COOLING})  # both answer requests
# A model's state through an endpoint, for mesh_state: up and warm answers at once; an
# up endpoint loads a cold model on the first request (Ollama does), like a cold node.
_ENDPOINT_MODEL_STATE = {"down": PoolState.FAILED, "draining": PoolState.UNLOADING}
_GPU_NUMBERS = (
    "util_percent",
    "vram_total",
    "vram_used",
    "temperature_c",
    "power_w",
    "power_limit_w",
)


class ResourceSeen(NamedTuple):
    """A node's live resources as this node last heard them."""

    state: str
    """One of :data:`RESOURCE_STATES`."""
    resources: Mapping[str, Any] | None
    """``{cpu_count, cpu_percent, load_avg, ram_total, ram_used, gpus}``; None: unknown."""
    age_s: float | None
    """Seconds since the figures were reported; None: unknown."""


UNSEEN = ResourceSeen("unknown", None, None)
"""What is known of a node no resources were heard from."""


def resources_from_status(status: Mapping[str, Any]) -> dict[str, ResourceSeen]:
    """What an ``/api/status`` body says of each node's resources (this node's and its
    peers'), by node id.  A node that gives no ``resources_state`` (an older one) is
    ``live`` when it shows figures, else ``unknown``."""
    peers = status.get("peers")
    seen: dict[str, ResourceSeen] = {}
    for raw in [status, *(peers if isinstance(peers, list) else [])]:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("node_id"), str):
            continue
        resources = raw.get("resources")
        resources = resources if isinstance(resources, Mapping) and resources else None
        state = raw.get("resources_state")
        if state not in RESOURCE_STATES:
            state = "live" if resources is not None else "unknown"
        seen[raw["node_id"]] = ResourceSeen(state, resources, _number(raw.get("resources_age_s")))
    return seen


def without_resources(status: Mapping[str, Any]) -> dict[str, Any]:
    """An ``/api/status`` body with no ``resources`` anywhere, to read announcements from
    (:func:`meshllm.election.pool_view.announcements_from_status`): resources are live
    figures, apart from announcements, and a null one would fail the whole
    announcement's check (and cost it its endpoints and memory kind)."""
    peers = status.get("peers")
    return {k: v for k, v in status.items() if k not in ("resources", "peers")} | {
        "peers": [
            {k: v for k, v in p.items() if k != "resources"} if isinstance(p, Mapping) else p
            for p in (peers if isinstance(peers, list) else [])
        ]
    }


def fleet_from_status(status: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """:func:`fleet_view` of what an ``/api/status`` body says."""
    announcements = announcements_from_status(without_resources(status))
    return fleet_view(announcements, resources_from_status(status), now_ms)


def fleet_view(
    announcements: Iterable[PeerAnnouncement],
    resources: Mapping[str, ResourceSeen],
    now_ms: int,
) -> dict[str, Any]:
    """The fleet: ``{summary, models, memory, hosts, nodes}``.

    ``models``: one entry per model a node or an endpoint has, those hot in the most
    places first, then by name: ``{model, state, hot, nodes, endpoints}``, where
    ``state`` is the mesh-wide one (:func:`meshllm.election.pool_view.mesh_state`),
    ``hot`` how many nodes and endpoints answer for it right now, ``nodes`` ``[{node_id,
    state}]`` (clients never have a model) and ``endpoints`` ``[{node_id, endpoint_id,
    name, state, warm}]`` (``state`` the endpoint's).  ``summary`` says it in a line.

    ``memory``: ``{"vram": {total, used, free, nodes}, "ram": {...}, "unknown_nodes",
    "stale_nodes"}`` in bytes, over the nodes that lend memory to models (not clients):
    VRAM from the GPUs of nodes whose memory is ``vram``, RAM from CPU-only nodes.  A
    node without figures is only counted in ``unknown_nodes``; stale figures are summed
    and their nodes counted in ``stale_nodes`` too.  ``hosts``: nodes by role.

    ``nodes``: by id, ``{node_id, role, memory_kind, resources_state, age_s, cpu_count,
    cpu_percent, load_avg, ram_used, ram_total, gpus, endpoints}``; figures are None
    when unknown (``gpus`` too; ``[]`` is a node known to have none), ``endpoints`` the
    ids of those it fronts.
    """
    anns = sorted(announcements, key=lambda a: a.node_id)
    nodes = [_node(ann, resources.get(ann.node_id, UNSEEN)) for ann in anns]
    models = _models(anns, now_ms)
    roles = Counter(str(a.role) for a in anns)
    return {
        "summary": fleet_summary(models),
        "models": models,
        "memory": _memory(nodes),
        "hosts": {role: roles.get(role, 0) for role in ROLES},
        "nodes": nodes,
    }


def summary_parts(models: Iterable[Mapping[str, Any]]) -> list[tuple[int, str, str]]:
    """``(count, words, model)`` of each model hot somewhere, most places first, then by
    name: ``(3, " hosts have ", "llama3"), (1, " has ", "codellama")`` (the console
    styles each part of :func:`fleet_summary`)."""
    hot = sorted((m for m in models if m["hot"]), key=lambda m: (-m["hot"], m["model"]))
    parts = []
    for i, entry in enumerate(hot):
        n = entry["hot"]
        noun = (" host" if n == 1 else " hosts") if i == 0 else ""
        parts.append((n, f"{noun} {'has' if n == 1 else 'have'} ", entry["model"]))
    return parts


def fleet_summary(models: Iterable[Mapping[str, Any]]) -> str:
    """'3 hosts have llama3, 1 has codellama': how many places (nodes and endpoints) have
    each model hot, most first, then by name; 'no model is hot yet' when none is."""
    parts = summary_parts(models)
    return ", ".join(f"{n}{words}{model}" for n, words, model in parts) or NOTHING_HOT


def endpoint_label(entry: Mapping[str, Any]) -> str:
    """How an endpoint has a model, one of :data:`ENDPOINT_ORDER`: 'warm' (up and
    loaded), 'cold' (up, loads on the first request), else the endpoint's state."""
    if entry["state"] == "up":
        return "warm" if entry["warm"] else "cold"
    return str(entry["state"])


def _models(anns: list[PeerAnnouncement], now_ms: int) -> list[dict[str, Any]]:
    by_id = {a.node_id: a for a in anns}
    on_nodes = {v["model"]: v["nodes"] for v in pool_view(anns, now_ms)}
    on_endpoints: dict[str, list[dict[str, Any]]] = {}
    for ann in anns:
        for endpoint_id, endpoint in sorted(ann.endpoints.items()):
            for model, about in sorted((endpoint.get("models") or {}).items()):
                on_endpoints.setdefault(model, []).append(
                    {
                        "node_id": ann.node_id,
                        "endpoint_id": endpoint_id,
                        "name": str(endpoint.get("name") or endpoint_id),
                        "state": str(endpoint.get("state", "down")),
                        "warm": bool(about.get("warm", False)),
                    }
                )
    entries = []
    for model in set(on_nodes) | set(on_endpoints):
        nodes = [
            {"node_id": n["node_id"], "state": n["state"]}
            for n in on_nodes.get(model, [])
            if not _through_endpoint(by_id[n["node_id"]], model)
        ]
        endpoints = on_endpoints.get(model, [])
        states = [n["state"] for n in nodes] + [_endpoint_state(e) for e in endpoints]
        hot = sum(1 for n in nodes if n["state"] in _HOT)
        hot += sum(1 for e in endpoints if endpoint_label(e) == "warm")
        entries.append(
            {
                "model": model,
                "state": mesh_state(states),
                "hot": hot,
                "nodes": nodes,
                "endpoints": endpoints,
            }
        )
    entries.sort(key=lambda e: (-e["hot"], e["model"]))
    return entries


def _through_endpoint(ann: PeerAnnouncement, model: str) -> bool:
    """Whether the node has ``model`` only as one of its endpoints' (in ``serving``, not
    in its pool nor on its disk)."""
    if model in ann.pool or model in ann.available_models:
        return False
    return any(model in (e.get("models") or {}) for e in ann.endpoints.values())


def _endpoint_state(entry: Mapping[str, Any]) -> str:
    label = endpoint_label(entry)
    if label == "warm":
        return str(PoolState.HOT)
    return str(_ENDPOINT_MODEL_STATE.get(label, PoolState.COLD))


def _number(value: Any) -> float | None:
    """A finite, non-negative number, else None (figures come from peers: never trusted)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _gpu(raw: Mapping[str, Any], position: int) -> dict[str, Any]:
    index = raw.get("index")
    uuid = raw.get("uuid")
    return {
        "index": index if isinstance(index, int) and not isinstance(index, bool) else position,
        "name": str(raw.get("name") or f"GPU {position}"),
        "uuid": uuid if isinstance(uuid, str) else None,
        **{key: _number(raw.get(key)) for key in _GPU_NUMBERS},
    }


def _node(ann: PeerAnnouncement, seen: ResourceSeen) -> dict[str, Any]:
    res = seen.resources if isinstance(seen.resources, Mapping) and seen.resources else None
    state = seen.state if res is not None and seen.state in ("live", "stale") else "unknown"
    res = res if state != "unknown" else None
    load = res.get("load_avg") if res is not None else None
    load = [_number(x) for x in load] if isinstance(load, list | tuple) and len(load) == 3 else None
    gpus = res.get("gpus") if res is not None else None
    return {
        "node_id": ann.node_id,
        "role": str(ann.role),
        "memory_kind": ann.memory_kind,
        "resources_state": state,
        "age_s": _number(seen.age_s),
        "cpu_count": _number(res.get("cpu_count")) if res is not None else None,
        "cpu_percent": _number(res.get("cpu_percent")) if res is not None else None,
        "load_avg": load if load is None or None not in load else None,
        "ram_used": _number(res.get("ram_used")) if res is not None else None,
        "ram_total": _number(res.get("ram_total")) if res is not None else None,
        "gpus": None
        if res is None
        else [_gpu(g, i) for i, g in enumerate(gpus or ()) if isinstance(g, Mapping)],
        "endpoints": sorted(ann.endpoints),
    }


def _held(node: Mapping[str, Any]) -> tuple[str, float, float] | None:
    """``(kind, total, used)`` of the memory a node lends to models; None: unknown."""
    if node["resources_state"] == "unknown":
        return None
    if node["memory_kind"] == "vram":
        gpus = [g for g in node["gpus"] or () if g["vram_total"]]
        if not gpus:
            return None
        total = sum(g["vram_total"] for g in gpus)
        used = sum(min(g["vram_used"] or 0, g["vram_total"]) for g in gpus)
        return "vram", total, used
    if not node["ram_total"]:
        return None
    return "ram", node["ram_total"], min(node["ram_used"] or 0, node["ram_total"])


def _memory(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    memory: dict[str, Any] = {
        kind: {"total": 0, "used": 0, "free": 0, "nodes": 0} for kind in MEMORY_KINDS
    }
    unknown = stale = 0
    for node in nodes:
        if node["role"] == Role.CLIENT:
            continue  # a client lends no memory to models
        held = _held(node)
        if held is None:
            unknown += 1
            continue
        kind, total, used = held
        sums = memory[kind]
        sums["total"] += int(total)
        sums["used"] += int(used)
        sums["free"] += int(total - used)
        sums["nodes"] += 1
        stale += node["resources_state"] == "stale"
    return memory | {"unknown_nodes": unknown, "stale_nodes": stale}
