"""The fleet view: models hot on nodes and endpoints, memory, roles, live resources."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshllm.election.fleet import (
    ResourceSeen,
    fleet_from_status,
    fleet_summary,
    fleet_view,
    resources_from_status,
    summary_parts,
    without_resources,
)
from meshllm.election.fleet_text import format_fleet, resource_text
from meshllm.gossip.announcement import PeerAnnouncement, Role

NOW = 1_750_000_000_000
GIB = 1024**3


def node(node_id: str, **fields: Any) -> PeerAnnouncement:
    """A real announcement, checked as a peer would check it."""
    disk = {m: 1 for m in fields.get("pool", {})}
    fields["available_models"] = fields.get("available_models", disk)
    ann = PeerAnnouncement(node_id=node_id, mesh_id="mesh", **fields)
    return PeerAnnouncement.from_wire(ann.to_wire())


def hot(**keys: Any) -> dict[str, Any]:
    return {"state": "hot", "since": NOW - 10_000, **keys}


def endpoint(state: str = "up", name: str = "box", **models: bool) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "ollama",
        "state": state,
        "models": {m: {"warm": warm} for m, warm in models.items()},
    }


def gpu(name: str = "RTX 4090", used: float = 9.0, total: float = 24.0, **more: Any) -> dict:
    return {
        "index": 0,
        "name": name,
        "uuid": "GPU-1",
        "util_percent": 12,
        "vram_total": int(total * GIB),
        "vram_used": int(used * GIB),
        "temperature_c": 61,
        "power_w": 180.5,
        "power_limit_w": 450.0,
        **more,
    }


def res(ram_used: float = 8.0, ram_total: float = 32.0, gpus: list | None = None, **more: Any):
    return {
        "cpu_count": 8,
        "cpu_percent": 23.0,
        "load_avg": [1.2, 0.9, 0.8],
        "ram_total": int(ram_total * GIB),
        "ram_used": int(ram_used * GIB),
        "gpus": gpus or [],
        **more,
    }


def live(resources: dict[str, Any], age: float = 1.0) -> ResourceSeen:
    return ResourceSeen("live", resources, age)


def model_entry(fleet: dict[str, Any], model: str) -> dict[str, Any]:
    return next(m for m in fleet["models"] if m["model"] == model)


def test_summary_counts_hot_places_most_first_then_by_name() -> None:
    nodes = [
        node("a", pool={"llama3": hot(), "codellama": hot()}),
        node("b", pool={"llama3": hot()}),
        node("c", pool={"llama3": {"state": "cooling", "since": NOW, "until": NOW + 5}}),
        node("d", pool={"alpha": hot()}),
        node("e", available_models={"cold-one": 1}),
    ]
    fleet = fleet_view(nodes, {}, NOW)
    assert fleet["summary"] == "3 hosts have llama3, 1 has alpha, 1 has codellama"
    assert [m["model"] for m in fleet["models"]] == ["llama3", "alpha", "codellama", "cold-one"]
    assert [m["hot"] for m in fleet["models"]] == [3, 1, 1, 0]


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, "no model is hot yet"),
        ({"m": 0}, "no model is hot yet"),
        ({"m": 1}, "1 host has m"),
        ({"m": 2, "z": 2, "a": 1}, "2 hosts have m, 2 have z, 1 has a"),
    ],
)
def test_summary_wording(counts: dict[str, int], expected: str) -> None:
    models = [{"model": m, "hot": n} for m, n in counts.items()]
    assert fleet_summary(models) == expected
    # The parts the console styles say the same.
    parts = summary_parts(models)
    assert ", ".join(f"{n}{words}{m}" for n, words, m in parts) == (expected if parts else "")


def test_models_list_nodes_and_endpoints() -> None:
    nodes = [
        node("a", pool={"llama3": hot()}),
        node("b", available_models={"llama3": 1}),
        # b fronts an Ollama box that has llama3 loaded and qwen on disk.
        node(
            "c",
            role=Role.HOST,
            serving={"llama3": "ready", "qwen": "ready"},
            endpoints={"ep1": endpoint("up", "gpu-box", llama3=True, qwen=False)},
        ),
    ]
    fleet = fleet_view(nodes, {}, NOW)
    llama = model_entry(fleet, "llama3")
    # c has llama3 only through its endpoint: listed there, not as a node too.
    assert llama["nodes"] == [
        {"node_id": "a", "state": "hot"},
        {"node_id": "b", "state": "cold"},
    ]
    assert llama["endpoints"] == [
        {"node_id": "c", "endpoint_id": "ep1", "name": "gpu-box", "state": "up", "warm": True}
    ]
    assert llama["state"] == "hot" and llama["hot"] == 2
    qwen = model_entry(fleet, "qwen")
    assert qwen["nodes"] == [] and qwen["state"] == "cold" and qwen["hot"] == 0
    assert fleet["summary"] == "2 hosts have llama3"


def test_a_node_with_its_own_copy_and_an_endpoint_counts_twice() -> None:
    a = node("a", pool={"m": hot()}, endpoints={"e": endpoint("up", m=True)})
    entry = model_entry(fleet_view([a], {}, NOW), "m")
    assert entry["nodes"] == [{"node_id": "a", "state": "hot"}]
    assert len(entry["endpoints"]) == 1 and entry["hot"] == 2


@pytest.mark.parametrize(
    ("state", "warm", "mesh", "hot_count"),
    [
        ("up", True, "hot", 1),
        ("up", False, "cold", 0),  # an up endpoint loads it on the first request
        ("probation", True, "cold", 0),  # probed back to health, no traffic yet
        ("draining", True, "unloading", 0),
        ("down", True, "failed", 0),
    ],
)
def test_model_state_through_an_endpoint(state: str, warm: bool, mesh: str, hot_count: int) -> None:
    a = node("a", endpoints={"e": endpoint(state, m=warm)})
    entry = model_entry(fleet_view([a], {}, NOW), "m")
    assert (entry["state"], entry["hot"]) == (mesh, hot_count)


def test_an_endpoint_without_a_name_is_named_by_its_id() -> None:
    a = node("a", endpoints={"ep7": endpoint(name="", m=True)})
    assert model_entry(fleet_view([a], {}, NOW), "m")["endpoints"][0]["name"] == "ep7"


def test_clients_have_no_model_but_are_counted_by_role() -> None:
    nodes = [
        node("h", role=Role.HOST, pool={"m": hot()}),
        node("w1"),
        node("w2"),
        node("c", role=Role.CLIENT, requested_models=["m"]),
    ]
    fleet = fleet_view(nodes, {}, NOW)
    assert fleet["hosts"] == {"host": 1, "worker": 2, "client": 1}
    assert [n["node_id"] for n in model_entry(fleet, "m")["nodes"]] == ["h"]
    assert fleet_view([], {}, NOW)["hosts"] == {"host": 0, "worker": 0, "client": 0}


def test_memory_vram_from_gpus_ram_from_cpu_only_nodes() -> None:
    nodes = [
        node("g1", memory_kind="vram"),
        node("g2", memory_kind="vram"),
        node("cpu", memory_kind="ram"),
        node("unheard", memory_kind="vram"),
        node("client", role=Role.CLIENT, memory_kind="ram"),  # lends nothing
    ]
    seen = {
        "g1": live(res(gpus=[gpu(used=10, total=24), gpu(used=2, total=24)])),
        "g2": ResourceSeen("stale", res(gpus=[gpu(used=24, total=24)]), 20.0),
        "cpu": live(res(ram_used=10.9, ram_total=31.0)),
        "client": live(res(ram_used=1, ram_total=8)),
    }
    memory = fleet_view(nodes, seen, NOW)["memory"]
    assert memory["vram"] == {
        "total": 72 * GIB,
        "used": 36 * GIB,
        "free": 36 * GIB,
        "nodes": 2,
    }
    assert memory["ram"]["nodes"] == 1
    assert memory["ram"]["total"] == int(31.0 * GIB)
    assert memory["ram"]["free"] == int(31.0 * GIB) - int(10.9 * GIB)
    assert memory["unknown_nodes"] == 1  # "unheard"; the client is not counted at all
    assert memory["stale_nodes"] == 1


def test_memory_of_a_gpu_node_without_gpu_figures_is_unknown() -> None:
    """A node whose memory is VRAM but whose report lists no GPU: not guessed from RAM."""
    a = node("a", memory_kind="vram")
    memory = fleet_view([a], {"a": live(res())}, NOW)["memory"]
    assert memory["vram"]["nodes"] == memory["ram"]["nodes"] == 0
    assert memory["unknown_nodes"] == 1


def test_used_memory_never_exceeds_total() -> None:
    a = node("a", memory_kind="ram")
    memory = fleet_view([a], {"a": live(res(ram_used=40, ram_total=32))}, NOW)["memory"]
    assert memory["ram"]["free"] == 0 and memory["ram"]["used"] == memory["ram"]["total"]


def test_node_entries_live_stale_unknown() -> None:
    nodes = [
        node(
            "a", role=Role.HOST, memory_kind="vram", endpoints={"e2": endpoint(), "e1": endpoint()}
        ),
        node("b"),
        node("c"),
        node("d"),
    ]
    seen = {
        "a": live(res(gpus=[gpu()]), age=2.0),
        "b": ResourceSeen("stale", res(), 12.4),
        "c": ResourceSeen("unknown", None, None),
        "d": ResourceSeen("live", None, 1.0),  # live, but no figures: unknown
    }
    a, b, c, d = fleet_view(nodes, seen, NOW)["nodes"]
    assert a == {
        "node_id": "a",
        "role": "host",
        "memory_kind": "vram",
        "resources_state": "live",
        "age_s": 2.0,
        "cpu_count": 8,
        "cpu_percent": 23.0,
        "load_avg": [1.2, 0.9, 0.8],
        "ram_used": 8 * GIB,
        "ram_total": 32 * GIB,
        "gpus": [gpu()],
        "endpoints": ["e1", "e2"],
    }
    assert b["resources_state"] == "stale" and b["age_s"] == 12.4 and b["gpus"] == []
    for unknown in (c, d):
        assert unknown["resources_state"] == "unknown"
        assert unknown["gpus"] is None and unknown["cpu_percent"] is None
    # A node absent from the resources seen is unknown too.
    assert fleet_view([node("z")], {}, NOW)["nodes"][0]["resources_state"] == "unknown"


def test_figures_from_peers_are_checked() -> None:
    """Resources come from peers: a reading that is no number is unknown, never a crash."""
    bad = res(
        cpu_percent="lots",
        load_avg=[1.0, float("nan"), 2.0],
        ram_total=-5,
        gpus=[
            {"name": "odd", "vram_total": True, "util_percent": None, "index": "x"},
            "not a gpu",
        ],
    )
    (entry,) = fleet_view([node("a")], {"a": live(bad)}, NOW)["nodes"]
    assert entry["cpu_percent"] is None and entry["load_avg"] is None
    assert entry["ram_total"] is None
    assert entry["gpus"] == [
        {
            "index": 0,
            "name": "odd",
            "uuid": None,
            "util_percent": None,
            "vram_total": None,
            "vram_used": None,
            "temperature_c": None,
            "power_w": None,
            "power_limit_w": None,
        }
    ]


def test_resources_from_status() -> None:
    status = {
        "node_id": "self",
        "resources": res(),
        "resources_state": "live",
        "resources_age_s": 0.5,
        "peers": [
            {
                "node_id": "p1",
                "resources": res(),
                "resources_state": "stale",
                "resources_age_s": 20,
            },
            {"node_id": "p2", "resources": None, "resources_state": "unknown"},
            {"node_id": "old", "resources": res()},  # an older node: no state given
            {"node_id": "old-empty", "resources": {}},
            {"node_id": "odd", "resources": res(), "resources_state": "fresh?"},
            "not a peer",
        ],
    }
    seen = resources_from_status(status)
    assert seen["self"] == ResourceSeen("live", res(), 0.5)
    assert seen["p1"] == ResourceSeen("stale", res(), 20)
    assert seen["p2"] == ResourceSeen("unknown", None, None)
    assert seen["old"].state == "live" and seen["old-empty"].state == "unknown"
    assert seen["odd"].state == "live"
    assert set(seen) == {"self", "p1", "p2", "old", "old-empty", "odd"}


def test_fleet_from_status_with_null_resources() -> None:
    """A node with no figures heard shows ``resources: null`` in /api/status: its
    announcement (endpoints, memory kind) still counts."""
    ann = node("a", role=Role.HOST, memory_kind="vram", endpoints={"e": endpoint(m=True)})
    raw = ann.to_json() | {"resources": None, "resources_state": "unknown"}
    status = raw | {"peers": [node("b").to_json() | {"resources": res(), "rtt_ms": 1.0}]}
    stripped = without_resources(status)
    assert "resources" not in stripped and "resources" not in stripped["peers"][0]
    assert status["resources"] is None  # the status itself is left as it was
    fleet = fleet_from_status(status, NOW)
    assert fleet["summary"] == "1 host has m"
    a, b = fleet["nodes"]
    assert (a["resources_state"], a["memory_kind"], a["endpoints"]) == ("unknown", "vram", ["e"])
    assert b["resources_state"] == "live" and b["ram_total"] == 32 * GIB
    assert fleet["memory"]["unknown_nodes"] == 1


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"resources_state": "unknown"}, "unknown"),
        (
            {
                "resources_state": "stale",
                "age_s": 12.4,
                "cpu_percent": 61.0,
                "load_avg": None,
                "ram_used": 5 * GIB,
                "ram_total": 16 * GIB,
                "gpus": [],
            },
            "stale (12 s) · cpu 61% · ram 5.0/16.0 GiB · no GPU",
        ),
        (
            {
                "resources_state": "live",
                "cpu_percent": 23.0,
                "load_avg": [1.2, 0.9, 0.8],
                "ram_used": 8 * GIB,
                "ram_total": 32 * GIB,
                "gpus": [
                    gpu(),
                    gpu("A10", util_percent=None, temperature_c=None, power_limit_w=None),
                    gpu("T4", power_w=None),
                ],
            },
            "cpu 23% · load 1.20 0.90 0.80 · ram 8.0/32.0 GiB · "
            "RTX 4090 12% 9.0/24.0 GiB 61°C 180/450 W · A10 9.0/24.0 GiB 180 W · "
            "T4 12% 9.0/24.0 GiB 61°C",
        ),
    ],
)
def test_resource_text(entry: dict[str, Any], expected: str) -> None:
    assert resource_text(entry) == expected


def sample_fleet() -> dict[str, Any]:
    nodes = [
        node("aaaa", role=Role.HOST, memory_kind="vram", pool={"llama3": hot()}),
        node(
            "bbbb", role=Role.HOST, memory_kind="vram", pool={"llama3": hot(), "codellama": hot()}
        ),
        node(
            "cccc",
            role=Role.HOST,
            memory_kind="ram",
            serving={"llama3": "ready"},
            endpoints={
                "ollama1": endpoint("up", llama3=True),
                "vllm": endpoint("down", llama3=True),
            },
        ),
        node("dddd"),
        node("eeee", role=Role.CLIENT),
    ]
    seen = {
        "aaaa": live(res(gpus=[gpu(used=18, total=24)])),
        "bbbb": live(res(gpus=[gpu("A10", used=18, total=24, temperature_c=None)])),
        "cccc": ResourceSeen("stale", res(ram_used=10.9, ram_total=31.0), 12.0),
    }
    return fleet_view(nodes, seen, NOW)


def test_format_fleet() -> None:
    assert format_fleet(sample_fleet()).splitlines() == [
        "3 hosts have llama3, 1 has codellama",
        "",
        "MODEL      STATE  NODES  ENDPOINTS",
        "llama3     hot    2 hot  1 warm, 1 down",
        "codellama  hot    1 hot  -",
        "",
        "VRAM 12.0 of 48.0 GiB free on 2 nodes; RAM 20.1 of 31.0 GiB free on 1 node; "
        "1 node stale; 1 node unknown",
        "3 hosts, 1 worker, 1 client",
        "",
        "aaaa  host    cpu 23% · load 1.20 0.90 0.80 · ram 8.0/32.0 GiB · "
        "RTX 4090 12% 18.0/24.0 GiB 61°C 180/450 W",
        "bbbb  host    cpu 23% · load 1.20 0.90 0.80 · ram 8.0/32.0 GiB · "
        "A10 12% 18.0/24.0 GiB 180/450 W",
        "cccc  host    stale (12 s) · cpu 23% · load 1.20 0.90 0.80 · ram 10.9/31.0 GiB · "
        "no GPU · endpoints ollama1, vllm",
        "dddd  worker  unknown",
        "eeee  client  unknown",
    ]


def test_format_fleet_of_an_empty_mesh() -> None:
    assert format_fleet(fleet_view([], {}, NOW)).splitlines() == [
        "no model is hot yet",
        "",
        "no node lends memory to models",
        "no nodes",
    ]


def test_fleet_view_is_json_and_format_reads_it_back() -> None:
    """``meshllm fleet`` formats the JSON of ``/api/fleet``: the same text."""
    fleet = sample_fleet()
    assert format_fleet(json.loads(json.dumps(fleet))) == format_fleet(fleet)
