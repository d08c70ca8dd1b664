"""The mesh's model pool at a glance: each catalog model's state on every node.

Pure: announcements (and the time) in, plain data out, for ``meshllm models``, the
console's Models tab and ``/api/models``.  A node's state for a model is its
``pool`` entry's; absent from ``pool``, the state its ``serving`` implies (an
external endpoint, or a node that announces no pool), else ``cold`` if it has the
GGUF on disk, else ``failed`` if it lists a failure for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshllm.election.catalog import catalog_models
from meshllm.errors import FrameError
from meshllm.gossip import ModelState, PeerAnnouncement, PoolState, Role

MAX_CAUSE_CHARS = 300
"""A failure's cause in the view: its first characters (the first line sums it up)."""

PROGRESS_CAP = 0.99
"""Progress never shows done while a fetch or warm-up is not: its eta is an estimate."""

STATE_ORDER = (
    PoolState.HOT,
    PoolState.COOLING,
    PoolState.WARMING,
    PoolState.FETCHING,
    PoolState.UNLOADING,
    PoolState.COLD,
    PoolState.FAILED,
)
"""The order of :func:`pool_state_counts` (failed last: its cause may follow)."""

_FROM_SERVING: dict[str, PoolState] = {
    ModelState.READY: PoolState.HOT,
    ModelState.STARTING: PoolState.WARMING,
    ModelState.FETCHING: PoolState.FETCHING,
    ModelState.FAILED: PoolState.FAILED,
}
_PROGRESSING = (PoolState.FETCHING, PoolState.WARMING)
_VIEW_FIELDS = (
    "role",
    "serving",
    "failures",
    "available_models",
    "requested_models",
    "pool",
    "demand",
)


def node_state(ann: PeerAnnouncement, model: str) -> str | None:
    """``model``'s state on the node of ``ann``; None when the node does not have it."""
    if model in ann.pool:
        return str(ann.pool[model]["state"])
    if model in ann.serving:
        return str(_FROM_SERVING.get(ann.serving[model], PoolState.FETCHING))
    if model in ann.available_models:
        return str(PoolState.COLD)
    if model in ann.failures:
        return str(PoolState.FAILED)
    return None


def mesh_state(states: Iterable[str]) -> str:
    """A model's state in the mesh from its states on the nodes that have it: hot if
    any node serves it (hot or cooling), else the furthest along of warming, fetching,
    unloading; failed if every node failed it; else cold."""
    found = set(states)
    if found & {PoolState.HOT, PoolState.COOLING}:
        return str(PoolState.HOT)
    for state in (PoolState.WARMING, PoolState.FETCHING, PoolState.UNLOADING):
        if state in found:
            return str(state)
    if found == {PoolState.FAILED}:
        return str(PoolState.FAILED)
    return str(PoolState.COLD)


def _node_entry(ann: PeerAnnouncement, model: str, state: str, now_ms: int) -> dict[str, Any]:
    pool = ann.pool.get(model, {})
    since, eta, until = pool.get("since"), pool.get("eta"), pool.get("until")
    progress = None
    if state in _PROGRESSING and since is not None and eta:
        done = (now_ms - since) / 1000 / eta
        progress = round(min(max(done, 0.0), PROGRESS_CAP), 3)
    seconds_left = None
    if state == PoolState.COOLING and until is not None:
        seconds_left = max(until - now_ms, 0) // 1000
    cause = None
    if state == PoolState.FAILED and model in ann.failures:
        cause = ann.failures[model][:MAX_CAUSE_CHARS]
    return {
        "node_id": ann.node_id,
        "state": state,
        "since": since,
        "eta": eta,
        "progress": progress,
        "seconds_left": seconds_left,
        "pinned": bool(pool.get("pinned", False)),
        "cause": cause,
        "rpm": float(ann.demand.get(model, {}).get("rpm", 0.0)),
    }


def pool_view(announcements: Iterable[PeerAnnouncement], now_ms: int) -> list[dict[str, Any]]:
    """One entry per catalog model, by name: ``{model, state, size_bytes, rpm, nodes}``.

    ``state`` is the mesh-wide one (:func:`mesh_state`), ``size_bytes`` the largest any
    node announces (None: unknown), ``rpm`` the requests a minute all nodes' proxies
    route for it (clients' too), ``nodes`` one entry per node that has it (clients
    never do), by node id: ``{node_id, state, since, eta, progress, seconds_left,
    pinned, cause, rpm}``.  ``progress`` (0..1) is a fetch or warm-up's share done by
    ``now_ms`` (None: unknown), ``seconds_left`` a cooling model's time before it
    unloads, ``cause`` a failed model's cause (its first characters).
    """
    announcements = sorted(announcements, key=lambda a: a.node_id)
    entries = []
    for model in sorted(catalog_models(announcements)):
        nodes = []
        for ann in announcements:
            state = None if ann.role == Role.CLIENT else node_state(ann, model)
            if state is not None:
                nodes.append(_node_entry(ann, model, state, now_ms))
        sizes = [a.available_models[model] for a in announcements if model in a.available_models]
        rpm = sum(
            float(a.demand[model].get("rpm", 0.0)) for a in announcements if model in a.demand
        )
        entries.append(
            {
                "model": model,
                "state": mesh_state(n["state"] for n in nodes),
                "size_bytes": max(sizes) if sizes else None,
                "rpm": round(rpm, 3),
                "nodes": nodes,
            }
        )
    return entries


def format_duration(seconds: int) -> str:
    """42 → '42s', 245 → '4m05s', 3900 → '1h05m'."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def node_detail(node: Mapping[str, Any]) -> str:
    """What follows a node's state: a cooling model's time left ('42s'), a fetch or
    warm-up's progress ('40%'); '' when there is nothing to add."""
    if node.get("seconds_left") is not None:
        return format_duration(int(node["seconds_left"]))
    if node.get("progress") is not None:
        return f"{int(node['progress'] * 100)}%"
    return ""


def pool_state_parts(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(state, text)`` of each state the model's nodes are in, in :data:`STATE_ORDER`:
    ``("cooling", "2 cooling 12s")`` (the soonest to unload), ``("warming", "1 warming
    40%")`` (the furthest along)."""
    by_state: dict[str, list[Mapping[str, Any]]] = {}
    for node in entry["nodes"]:
        by_state.setdefault(node["state"], []).append(node)
    order = {str(s): i for i, s in enumerate(STATE_ORDER)}
    parts = []
    for state in sorted(by_state, key=lambda s: order.get(s, len(order))):
        nodes = by_state[state]
        text = f"{len(nodes)} {state}"
        if state == PoolState.COOLING:
            left = [n["seconds_left"] for n in nodes if n.get("seconds_left") is not None]
            text += f" {format_duration(int(min(left)))}" if left else ""
        elif state in _PROGRESSING:
            done = [n["progress"] for n in nodes if n.get("progress") is not None]
            text += f" {int(max(done) * 100)}%" if done else ""
        parts.append((state, text))
    return parts


def pool_state_counts(entry: Mapping[str, Any]) -> str:
    """How many of the model's nodes are in each state: '1 hot, 1 cooling 42s, 2 cold'
    ('' when no node has it)."""
    return ", ".join(text for _, text in pool_state_parts(entry))


def announcement_from_json(raw: Any, mesh_id: str = "") -> PeerAnnouncement | None:
    """A node's announcement from its ``/api/status`` JSON (``to_json`` plus extra keys,
    which are ignored).  A field that does not validate is left at its default; None
    when even the node id does not."""
    if not isinstance(raw, Mapping):
        return None
    data = {"mesh_id": mesh_id, **raw}
    try:
        key = data.get("public_key")
        data["public_key"] = bytes.fromhex(key) if isinstance(key, str) else b""
    except ValueError:
        data["public_key"] = b""
    try:
        return PeerAnnouncement.from_wire(data)
    except FrameError:
        pass
    base = {"node_id": raw.get("node_id"), "mesh_id": ""}
    good = {}
    for name in _VIEW_FIELDS:
        if name in raw:
            try:
                PeerAnnouncement.from_wire(base | {name: raw[name]})
            except FrameError:
                continue
            good[name] = raw[name]
    try:
        return PeerAnnouncement.from_wire(base | good)
    except FrameError:
        return None


def announcements_from_status(status: Mapping[str, Any]) -> list[PeerAnnouncement]:
    """This node's and its peers' announcements from an ``/api/status`` body."""
    mesh_id = status.get("mesh_id")
    mesh_id = mesh_id if isinstance(mesh_id, str) else ""
    peers = status.get("peers")
    raws = [status, *(peers if isinstance(peers, list) else [])]
    found = (announcement_from_json(raw, mesh_id) for raw in raws)
    return [ann for ann in found if ann is not None]
