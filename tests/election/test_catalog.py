"""The one catalog rule: every model on a disk, asked for, or served; warm where ready."""

from __future__ import annotations

from meshllm.election import catalog, catalog_models
from meshllm.gossip.announcement import PeerAnnouncement


def node(node_id: str, **fields: object) -> PeerAnnouncement:
    return PeerAnnouncement(node_id=node_id, mesh_id="mesh", **fields)  # type: ignore[arg-type]


def test_catalog_is_disks_requests_and_served_models() -> None:
    nodes = [
        node("a", available_models={"on-disk": 10}, serving={"on-disk": "ready"}),
        node("b", requested_models=["wanted"], serving={"from-endpoint": "ready"}),
        node("c", available_models={"on-disk": 12}, serving={"on-disk": "starting"}),
    ]
    assert catalog_models(nodes) == {"on-disk", "wanted", "from-endpoint"}
    assert catalog(nodes) == [
        {"model": "from-endpoint", "warm": True, "nodes": ["b"], "size_bytes": None},
        {"model": "on-disk", "warm": True, "nodes": ["a"], "size_bytes": 12},  # largest size
        {"model": "wanted", "warm": False, "nodes": [], "size_bytes": None},
    ]


def test_failed_and_starting_models_are_cold() -> None:
    nodes = [node("a", serving={"m": "failed"}), node("b", serving={"m": "starting"})]
    assert catalog(nodes) == [{"model": "m", "warm": False, "nodes": [], "size_bytes": None}]


def test_empty_mesh_has_an_empty_catalog() -> None:
    assert catalog([]) == [] and catalog_models([]) == set()
