"""The pool view: each catalog model's state on every node, and in the mesh."""

from __future__ import annotations

from typing import Any

import pytest

from meshllm.election.pool_view import (
    announcements_from_status,
    format_duration,
    pool_state_counts,
    pool_view,
)
from meshllm.gossip.announcement import PeerAnnouncement, Role

NOW = 1_750_000_000_000


def node(node_id: str, **fields: Any) -> PeerAnnouncement:
    """A real announcement, checked as a peer would check it.  A model in its pool is on
    its disk too, unless ``available_models`` says otherwise (the catalog is disks,
    requests and ``serving``)."""
    disk = {m: 1 for m in fields.get("pool", {})}
    fields["available_models"] = fields.get("available_models", disk)
    ann = PeerAnnouncement(node_id=node_id, mesh_id="mesh", **fields)
    return PeerAnnouncement.from_wire(ann.to_wire())


def pool(state: str, **keys: Any) -> dict[str, Any]:
    return {"state": state, "since": NOW - 10_000, **keys}


def view_of(model: str, *nodes: PeerAnnouncement, now: int = NOW) -> dict[str, Any]:
    return next(v for v in pool_view(nodes, now) if v["model"] == model)


def states(entry: dict[str, Any]) -> dict[str, str]:
    return {n["node_id"]: n["state"] for n in entry["nodes"]}


def test_one_entry_per_catalog_model_by_name() -> None:
    nodes = [
        node("b", requested_models=["wanted"], serving={"endpoint-model": "ready"}),
        node("a", available_models={"on-disk": 10, "loaded": 20}, pool={"loaded": pool("hot")}),
    ]
    view = pool_view(nodes, NOW)
    assert [v["model"] for v in view] == ["endpoint-model", "loaded", "on-disk", "wanted"]
    wanted = view[-1]
    assert wanted == {"model": "wanted", "state": "cold", "size_bytes": None, "rpm": 0.0,
                      "nodes": []}  # fmt: skip
    assert pool_view([], NOW) == []


def test_a_node_entry_has_every_field() -> None:
    a = node("a", pool={"m": pool("hot")}, available_models={"m": 5})
    assert view_of("m", a)["nodes"] == [
        {
            "node_id": "a",
            "state": "hot",
            "since": NOW - 10_000,
            "eta": None,
            "progress": None,
            "seconds_left": None,
            "pinned": False,
            "cause": None,
            "rpm": 0.0,
        }
    ]


def test_node_state_pool_first_then_serving_then_disk_then_failures() -> None:
    nodes = [
        # The pool entry wins over what serving and the disk say.
        node("a", pool={"m": pool("cooling")}, serving={"m": "ready"}, available_models={"m": 1}),
        node("b", available_models={"m": 1}),  # on disk, not loaded: cold
        node("c", serving={"m": "ready"}),  # an external endpoint
        node("d", serving={"m": "starting"}),
        node("e", serving={"m": "fetching"}),
        node("f", serving={"m": "failed"}, failures={"m": "exit 1"}),
        node("g", failures={"m": "no copy"}),  # a failure listed only in failures
        node("h", available_models={"other": 1}),  # does not have it: no entry
    ]
    assert states(view_of("m", *nodes)) == {
        "a": "cooling",
        "b": "cold",
        "c": "hot",
        "d": "warming",
        "e": "fetching",
        "f": "failed",
        "g": "failed",
    }


def test_an_older_node_serving_its_own_copy_is_not_cold() -> None:
    """No pool announced: ``serving`` says more than the disk does."""
    a = node("a", serving={"m": "ready"}, available_models={"m": 1})
    assert states(view_of("m", a)) == {"a": "hot"}


def test_nodes_are_sorted_by_node_id() -> None:
    nodes = [node(n, available_models={"m": 1}) for n in ("c", "a", "b")]
    assert [n["node_id"] for n in view_of("m", *nodes)["nodes"]] == ["a", "b", "c"]


def test_clients_have_no_node_entry_but_their_demand_counts() -> None:
    client = node("c", role=Role.CLIENT, requested_models=["m"], demand={"m": {"rpm": 3.0}})
    host = node("h", pool={"m": pool("hot")}, demand={"m": {"rpm": 1.5, "last": NOW}})
    entry = view_of("m", client, host)
    assert states(entry) == {"h": "hot"}
    assert entry["rpm"] == 4.5
    assert entry["nodes"][0]["rpm"] == 1.5
    # Only a client asked for it: in the catalog, on no node.
    alone = view_of("m", client)
    assert alone["nodes"] == [] and alone["state"] == "cold" and alone["rpm"] == 3.0


@pytest.mark.parametrize(
    ("node_states", "expected"),
    [
        (["hot", "failed", "cold"], "hot"),
        (["cooling", "warming"], "hot"),  # a cooling model still serves
        (["warming", "fetching", "unloading"], "warming"),
        (["fetching", "unloading", "failed"], "fetching"),
        (["unloading", "cold"], "unloading"),
        (["failed", "failed"], "failed"),
        (["failed", "cold"], "cold"),  # a node could still load it
        (["cold"], "cold"),
        ([], "cold"),
    ],
)
def test_mesh_state(node_states: list[str], expected: str) -> None:
    nodes = []
    for i, state in enumerate(node_states):
        if state == "cold":
            nodes.append(node(f"n{i}", available_models={"m": 1}))
        else:
            nodes.append(node(f"n{i}", pool={"m": pool(state)}, failures={"m": "x"}))
    nodes.append(node("asker", requested_models=["m"]))
    assert view_of("m", *nodes)["state"] == expected


def test_size_is_the_largest_announced() -> None:
    nodes = [node("a", available_models={"m": 10}), node("b", available_models={"m": 12})]
    assert view_of("m", *nodes)["size_bytes"] == 12
    assert view_of("m", node("a", serving={"m": "ready"}))["size_bytes"] is None


def test_progress_of_a_fetch_or_warm_up() -> None:
    a = node(
        "a",
        pool={
            "f": pool("fetching", since=NOW - 4_000, eta=10.0),
            "w": pool("warming", since=NOW - 30_000, eta=20),  # past its eta: not done yet
            "x": pool("warming"),  # no eta: unknown
            "y": pool("fetching", since=NOW + 5_000, eta=10.0),  # since ahead of our clock
            "z": pool("warming", eta=0.0),
            "h": pool("hot", eta=10.0),  # done: no progress shown
        },
    )
    progress = {v["model"]: v["nodes"][0]["progress"] for v in pool_view([a], NOW)}
    assert progress == {"f": 0.4, "w": 0.99, "x": None, "y": 0.0, "z": None, "h": None}


def test_seconds_left_of_a_cooling_model() -> None:
    a = node(
        "a",
        pool={
            "c": pool("cooling", until=NOW + 42_500),
            "late": pool("cooling", until=NOW - 1_000),  # overdue: 0, never negative
            "open": pool("cooling"),  # no until: unknown
            "h": pool("hot", until=NOW + 5_000),  # only cooling models count down
        },
    )
    left = {v["model"]: v["nodes"][0]["seconds_left"] for v in pool_view([a], NOW)}
    assert left == {"c": 42, "late": 0, "open": None, "h": None}


def test_pinned_cause_and_rpm_of_a_node() -> None:
    cause = "SIGILL while loading\n" + "x" * 500
    nodes = [
        node("a", pool={"m": pool("hot", pinned=True)}, demand={"m": {"rpm": 2.0, "last": NOW}}),
        node("b", pool={"m": pool("failed")}, failures={"m": cause}),
        node("c", pool={"m": pool("hot")}, failures={"m": "an old failure"}),
        node("d", pool={"m": pool("failed")}),  # no cause given
    ]
    a, b, c, d = view_of("m", *nodes)["nodes"]
    assert a["pinned"] is True and a["rpm"] == 2.0 and a["cause"] is None
    assert b["cause"] == cause[:300] and b["pinned"] is False and b["rpm"] == 0.0
    assert c["cause"] is None  # causes only for failed nodes
    assert d["cause"] is None


def test_pool_state_counts() -> None:
    nodes = [
        node("a", pool={"m": pool("hot")}),
        node("b", available_models={"m": 1}),
        node("c", available_models={"m": 1}),
    ]
    assert pool_state_counts(view_of("m", *nodes)) == "1 hot, 2 cold"
    assert pool_state_counts(view_of("m", node("x", requested_models=["m"]))) == ""


def test_pool_state_counts_order_and_details() -> None:
    nodes = [
        node("a", pool={"m": pool("failed")}),
        node("b", available_models={"m": 1}),
        node("c", pool={"m": pool("warming", since=NOW - 4_000, eta=10.0)}),
        node("d", pool={"m": pool("warming", since=NOW - 1_000, eta=10.0)}),
        node("e", pool={"m": pool("cooling", until=NOW + 42_000)}),
        node("f", pool={"m": pool("cooling", until=NOW + 300_000)}),
        node("g", pool={"m": pool("fetching")}),
        node("h", pool={"m": pool("unloading")}),
        node("i", pool={"m": pool("hot")}),
    ]
    # The soonest to unload, the furthest along; a fetch of unknown progress shows none.
    assert pool_state_counts(view_of("m", *nodes)) == (
        "1 hot, 2 cooling 42s, 2 warming 40%, 1 fetching, 1 unloading, 1 cold, 1 failed"
    )


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42, 60, 245, 3900)] == [
        "0s",
        "42s",
        "1m00s",
        "4m05s",
        "1h05m",
    ]


def test_announcements_from_status_json() -> None:
    key = bytes(range(32))
    me = node("a", pool={"m": pool("hot")}, available_models={"m": 5})
    peer = node("b", demand={"m": {"rpm": 1.0}}, serving={"m": "starting"})
    peer = PeerAnnouncement(**{**peer.to_wire(), "role": Role.HOST, "public_key": key})
    status = {
        **me.to_json(),
        "uptime_s": 3.0,
        "idle_reason": None,
        "peers": [{**peer.to_json(), "rtt_ms": 1.5, "suspect": False}],
        "catalog": [],
    }
    assert announcements_from_status(status) == [me, peer]


def test_announcements_from_status_leave_bad_fields_out() -> None:
    status = {
        "node_id": "a",
        # no mesh_id, a public key that is not hex, a malformed map, an unknown role
        "public_key": "zz",
        "serving": {"m": "ready"},
        "failures": ["not", "a", "map"],
        "pool": {"m": {"state": "sizzling"}},
        "role": "emperor",
        "peers": [{"role": "host"}, "not a node", {"node_id": "b", "serving": {"m": "ready"}}],
    }
    a, b = announcements_from_status(status)
    assert (a.node_id, a.serving, a.failures, a.pool, a.role) == ("a", {"m": "ready"}, {}, {},
                                                                   Role.WORKER)  # fmt: skip
    assert b.node_id == "b" and b.serving == {"m": "ready"}
    assert [v["state"] for v in pool_view([a, b], NOW)] == ["hot"]
