"""The mesh catalog: the one rule for which models the mesh knows (DESIGN.md §6).

A model is in the catalog when any node has it on disk (``available_models``),
asked for it (``requested_models``) or serves it (``serving``: external
endpoints' models appear only there).  It is warm when at least one node has it
``ready``.  Pure: announcements in, plain data out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshllm.gossip import ModelState, PeerAnnouncement


def catalog_models(announcements: Iterable[PeerAnnouncement]) -> set[str]:
    """The names of every model in the catalog."""
    names: set[str] = set()
    for ann in announcements:
        names.update(ann.available_models, ann.requested_models, ann.serving)
    return names


def catalog(announcements: Iterable[PeerAnnouncement]) -> list[dict[str, Any]]:
    """One entry per catalog model, by name: ``{model, warm, nodes, size_bytes}``, where
    ``nodes`` serve it ready and ``size_bytes`` is the largest size any node announces."""
    announcements = list(announcements)
    sizes: dict[str, int] = {}
    for ann in announcements:
        for name, size in ann.available_models.items():
            sizes[name] = max(size, sizes.get(name, 0))
    entries = []
    for name in sorted(catalog_models(announcements)):
        nodes = sorted(a.node_id for a in announcements if a.serving.get(name) == ModelState.READY)
        entries.append(
            {"model": name, "warm": bool(nodes), "nodes": nodes, "size_bytes": sizes.get(name)}
        )
    return entries
