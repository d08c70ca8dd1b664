"""Demand on a fake clock: the requests-a-minute meter, self-healing, replicas under demand."""

from __future__ import annotations

from typing import Any

import pytest

from meshllm.election.demand import (
    DEMAND_WINDOW_S,
    HEAL_WINDOW_S,
    MAX_TRACKED,
    REPLICA_IMBALANCE,
    REPLICA_MIN_RPM,
    DemandMeter,
    Orphan,
    orphaned,
    wanting_replicas,
)
from meshllm.gossip import PeerAnnouncement, Role

NOW = 1_750_000_000.0  # wall seconds
NOW_MS = int(NOW * 1000)


def node(node_id: str, **fields: Any) -> PeerAnnouncement:
    """A real announcement, checked as a peer would check it."""
    ann = PeerAnnouncement(node_id=node_id, mesh_id="mesh", **fields)
    return PeerAnnouncement.from_wire(ann.to_wire())


def client(node_id: str, **fields: Any) -> PeerAnnouncement:
    return node(node_id, role=Role.CLIENT, **fields)


def used(rpm: float = 0.0, ago_s: float = 0.0) -> dict[str, Any]:
    """A ``demand`` entry: ``rpm``, the last request ``ago_s`` before NOW."""
    return {"rpm": rpm, "last": int((NOW - ago_s) * 1000)}


# DemandMeter


def test_meter_starts_empty() -> None:
    meter = DemandMeter()
    assert meter.rpm("m", NOW) == 0.0
    assert meter.fields(NOW) == {}


def test_meter_counts_requests_a_minute() -> None:
    meter = DemandMeter()
    for _ in range(3):
        meter.record("m", NOW)
    meter.record("other", NOW)
    assert meter.rpm("m", NOW) == 3.0
    assert meter.rpm("other", NOW) == 1.0
    assert meter.rpm("unknown", NOW) == 0.0


def test_meter_scales_a_shorter_window_to_a_minute() -> None:
    meter = DemandMeter(window_s=30.0, buckets=6)
    for t in (0.0, 10.0, 20.0):
        meter.record("m", t)
    assert meter.rpm("m", 20.0) == 6.0  # 3 requests in 30 s


@pytest.mark.parametrize(("at", "rpm"), [(0.0, 1.0), (59.999, 1.0), (60.0, 0.0), (1000.0, 0.0)])
def test_meter_request_expires_with_its_bucket(at: float, rpm: float) -> None:
    meter = DemandMeter()
    meter.record("m", 0.0)  # bucket [0, 5)
    assert meter.rpm("m", at) == rpm


def test_meter_window_slides_bucket_by_bucket() -> None:
    meter = DemandMeter()
    meter.record("m", 4.9)  # bucket [0, 5)
    meter.record("m", 5.0)  # bucket [5, 10)
    meter.record("m", 30.0)
    meter.record("m", 30.0)
    assert meter.rpm("m", 30.0) == 4.0
    assert meter.rpm("m", 59.9) == 4.0
    assert meter.rpm("m", 60.0) == 3.0  # [0, 5) is out
    assert meter.rpm("m", 64.9) == 3.0
    assert meter.rpm("m", 65.0) == 2.0  # [5, 10) is out
    assert meter.rpm("m", 89.9) == 2.0
    assert meter.rpm("m", 90.0) == 0.0


def test_meter_old_requests_do_not_count_after_new_ones() -> None:
    meter = DemandMeter()
    for _ in range(50):
        meter.record("m", 0.0)
    meter.record("m", 1000.0)
    assert meter.rpm("m", 1000.0) == 1.0
    assert meter.fields(1000.0) == {"m": {"rpm": 1.0, "last": 1_000_000}}


@pytest.mark.parametrize(("window_s", "buckets"), [(0.0, 12), (-60.0, 12), (60.0, 0), (60.0, -1)])
def test_meter_rejects_an_empty_window(window_s: float, buckets: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        DemandMeter(window_s=window_s, buckets=buckets)


def test_meter_fields_give_rpm_and_last_in_wall_ms() -> None:
    meter = DemandMeter()
    meter.record("m", NOW - 10.5)
    meter.record("m", NOW - 0.25)
    assert meter.fields(NOW) == {"m": {"rpm": 2.0, "last": NOW_MS - 250}}


@pytest.mark.parametrize(("count", "rpm"), [(1, 1.3), (2, 2.7), (3, 4.0)])
def test_meter_fields_round_rpm_to_a_tenth(count: int, rpm: float) -> None:
    meter = DemandMeter(window_s=45.0, buckets=9)  # 1 request in 45 s: 1.333... a minute
    for _ in range(count):
        meter.record("m", 100.0)
    assert meter.rpm("m", 100.0) == pytest.approx(count * 60 / 45)
    assert meter.fields(100.0)["m"]["rpm"] == rpm


def test_meter_fields_are_by_name_and_valid_in_an_announcement() -> None:
    meter = DemandMeter()
    for name in ("zeta", "alpha", "mid"):
        meter.record(name, NOW)
    demand = meter.fields(NOW)
    assert list(demand) == ["alpha", "mid", "zeta"]
    ann = node("a", demand=demand)  # the announcement's checks take it as it is
    assert ann.demand == demand


def test_meter_keeps_last_of_a_model_idle_past_the_window() -> None:
    meter = DemandMeter()
    meter.record("m", NOW - 300.0)
    assert meter.fields(NOW) == {"m": {"rpm": 0.0, "last": NOW_MS - 300_000}}


def test_meter_last_is_the_latest_request_even_out_of_order() -> None:
    meter = DemandMeter()
    meter.record("m", NOW)
    meter.record("m", NOW - 20.0)  # a late report of an earlier request
    assert meter.fields(NOW) == {"m": {"rpm": 2.0, "last": NOW_MS}}


def test_meter_forgets_models_idle_longer_than_keep_s() -> None:
    meter = DemandMeter()
    meter.record("old", 0.0)
    meter.record("new", 500.0)
    assert set(meter.fields(100.0, keep_s=100.0)) == {"old", "new"}  # exactly keep_s: kept
    assert set(meter.fields(100.001, keep_s=100.0)) == {"new"}
    meter.record("old", 200.0)  # forgotten, then routed again: a fresh start
    assert meter.fields(200.0, keep_s=100.0)["old"] == {"rpm": 1.0, "last": 200_000}


def test_meter_default_keep_is_the_heal_window() -> None:
    meter = DemandMeter()
    meter.record("m", 0.0)
    assert "m" in meter.fields(HEAL_WINDOW_S)
    assert meter.fields(HEAL_WINDOW_S + 1.0) == {}
    assert meter.rpm("m", HEAL_WINDOW_S + 1.0) == 0.0


def test_meter_tracks_at_most_max_tracked_evicting_the_least_recent() -> None:
    meter = DemandMeter()
    for i in range(MAX_TRACKED):
        meter.record(f"m{i}", float(i))
    meter.record("m0", 200.0)  # m0 is recent again; m1 is now the least recent
    meter.record("m5", 201.0)  # a model already tracked never evicts another
    assert len(meter.fields(201.0)) == MAX_TRACKED
    meter.record("new", 202.0)
    demand = meter.fields(202.0)
    assert len(demand) == MAX_TRACKED
    assert "new" in demand and "m0" in demand and "m5" in demand
    assert "m1" not in demand
    meter.record("newer", 203.0)
    assert "m2" not in meter.fields(203.0)


def test_meter_default_window_is_a_minute() -> None:
    assert DemandMeter().window_s == DEMAND_WINDOW_S == 60.0


# orphaned: self-healing


def departed(models: dict[str, str], **fields: Any) -> PeerAnnouncement:
    return node("dead", serving=models, **fields)


def test_pinned_hot_model_of_a_departed_node_is_orphaned() -> None:
    dead = departed({"a": "ready"}, pool={"a": {"state": "hot", "pinned": True}})
    assert orphaned(dead, [], NOW) == [Orphan("a", "dead", True)]


def test_model_in_use_on_the_departed_node_is_orphaned() -> None:
    dead = departed({"a": "ready"}, demand={"a": used(5.0, ago_s=60.0)})
    assert orphaned(dead, [node("b")], NOW) == [Orphan("a", "dead", False)]


def test_model_in_use_through_another_node_is_orphaned() -> None:
    dead = departed({"a": "ready"})
    router = client("c", demand={"a": used(0.0, ago_s=600.0)})  # a client's routing counts
    assert orphaned(dead, [router], NOW) == [Orphan("a", "dead", False)]


@pytest.mark.parametrize(
    ("ago_s", "in_use"),
    [(0.0, True), (HEAL_WINDOW_S - 1, True), (HEAL_WINDOW_S, True), (HEAL_WINDOW_S + 1, False)],
)
def test_in_use_means_routed_within_the_window(ago_s: float, in_use: bool) -> None:
    dead = departed({"a": "ready"}, demand={"a": used(0.0, ago_s=ago_s)})
    assert bool(orphaned(dead, [], NOW)) is in_use


def test_window_is_a_parameter() -> None:
    dead = departed({"a": "ready"}, demand={"a": used(1.0, ago_s=61.0)})
    assert orphaned(dead, [], NOW, window_s=60.0) == []
    assert orphaned(dead, [], NOW, window_s=62.0) == [Orphan("a", "dead", False)]


def test_most_recent_use_anywhere_decides() -> None:
    dead = departed({"a": "ready"}, demand={"a": used(0.0, ago_s=HEAL_WINDOW_S * 3)})
    stale = node("b", demand={"a": used(0.0, ago_s=HEAL_WINDOW_S * 2)})
    assert orphaned(dead, [stale], NOW) == []
    fresh = node("c", demand={"a": used(0.0, ago_s=10.0)})
    assert orphaned(dead, [stale, fresh], NOW) == [Orphan("a", "dead", False)]


def test_idle_unpinned_model_is_not_orphaned() -> None:
    dead = departed({"a": "ready"}, pool={"a": {"state": "cooling", "pinned": False}})
    assert orphaned(dead, [node("b", demand={"other": used(9.0)})], NOW) == []


@pytest.mark.parametrize(
    "pool", [{}, {"a": {"state": "hot"}}, {"a": {"state": "hot", "pinned": False}}]
)
def test_not_pinned_unless_its_pool_entry_says_so(pool: dict[str, Any]) -> None:
    dead = departed({"a": "ready"}, pool=pool, demand={"a": used(1.0)})
    assert orphaned(dead, [], NOW) == [Orphan("a", "dead", False)]


@pytest.mark.parametrize("state", ["ready", "starting", "fetching"])
def test_live_node_serving_or_loading_it_claims_it(state: str) -> None:
    dead = departed({"a": "ready"}, pool={"a": {"state": "hot", "pinned": True}})
    assert orphaned(dead, [node("b", serving={"a": state})], NOW) == []


def test_failed_copy_elsewhere_is_no_claim() -> None:
    dead = departed({"a": "ready"}, pool={"a": {"state": "hot", "pinned": True}})
    live = [node("b", serving={"a": "failed"}, failures={"a": "signal 9"})]
    assert orphaned(dead, live, NOW) == [Orphan("a", "dead", True)]


def test_claim_is_per_model() -> None:
    dead = departed(
        {"a": "ready", "b": "ready"},
        pool={"a": {"state": "hot", "pinned": True}, "b": {"state": "hot", "pinned": True}},
    )
    assert orphaned(dead, [node("x", serving={"b": "ready"})], NOW) == [Orphan("a", "dead", True)]


def test_client_node_is_no_claim() -> None:
    dead = departed({"a": "ready"}, pool={"a": {"state": "hot", "pinned": True}})
    assert orphaned(dead, [client("c", serving={"a": "ready"})], NOW) == [Orphan("a", "dead", True)]


def test_departed_nodes_own_announcement_among_the_live_is_no_claim() -> None:
    dead = departed({"a": "ready"}, pool={"a": {"state": "hot", "pinned": True}})
    same = node("dead", serving={"a": "ready"}, seq=7)  # a stale copy of the departed
    assert orphaned(dead, [same], NOW) == [Orphan("a", "dead", True)]


@pytest.mark.parametrize("state", ["starting", "fetching", "failed"])
def test_only_hot_models_of_the_departed_are_orphaned(state: str) -> None:
    dead = departed(
        {"a": state},
        pool={"a": {"state": "warming", "pinned": True}},
        demand={"a": used(20.0)},
        failures={"a": "boom"} if state == "failed" else {},
    )
    assert orphaned(dead, [], NOW) == []


def test_orphans_are_by_name_and_live_may_be_any_iterable() -> None:
    dead = departed(
        {"z": "ready", "a": "ready", "m": "ready", "idle": "ready"},
        pool={"z": {"state": "hot", "pinned": True}},
        demand={"a": used(1.0), "m": used(1.0)},
    )
    live = (a for a in [node("b"), client("c")])
    assert orphaned(dead, live, NOW) == [
        Orphan("a", "dead", False),
        Orphan("m", "dead", False),
        Orphan("z", "dead", True),
    ]


# wanting_replicas: replicas under demand


def test_single_hot_model_needs_only_min_rpm() -> None:
    assert wanting_replicas([node("a", serving={"m": "ready"}, demand={"m": used(10.0)})]) == ["m"]
    assert wanting_replicas([node("a", serving={"m": "ready"}, demand={"m": used(9.9)})]) == []


def test_defaults_are_mesh_llms_rule() -> None:
    assert (REPLICA_MIN_RPM, REPLICA_IMBALANCE) == (10.0, 3.0)


def test_demand_is_summed_over_every_node_clients_too() -> None:
    nodes = [
        node("a", serving={"m": "ready"}, demand={"m": used(4.0)}),
        node("b", demand={"m": used(3.0)}),  # a worker serving nothing routes too
        client("c", demand={"m": used(3.0)}),
    ]
    assert wanting_replicas(nodes) == ["m"]
    assert wanting_replicas(nodes[:2]) == []  # 7 without the client's 3


@pytest.mark.parametrize(
    ("replicas", "rpm", "wanted"),
    [(2, 20.0, True), (2, 19.9, False), (3, 30.0, True), (3, 27.0, False)],
)
def test_demand_is_per_replica(replicas: int, rpm: float, wanted: bool) -> None:
    nodes = [node(f"n{i}", serving={"m": "ready"}) for i in range(replicas)]
    nodes.append(client("c", demand={"m": used(rpm)}))
    assert wanting_replicas(nodes) == (["m"] if wanted else [])


def test_replica_needs_imbalance_against_the_coldest_other_hot_model() -> None:
    def mesh(hot_rpm: float, other_rpm: float) -> list[PeerAnnouncement]:
        return [
            node("a", serving={"hot": "ready"}),
            node("b", serving={"other": "ready"}),
            client("c", demand={"hot": used(hot_rpm), "other": used(other_rpm)}),
        ]

    assert wanting_replicas(mesh(30.0, 10.0)) == ["hot"]  # 3x: only the hot one
    assert wanting_replicas(mesh(29.9, 10.0)) == []
    assert wanting_replicas(mesh(60.0, 30.0)) == []  # busy, but no busier than the rest


def test_coldest_other_model_is_the_measure() -> None:
    nodes = [
        node("a", serving={"x": "ready", "y": "ready"}),
        node("b", serving={"idle": "ready"}),  # no demand entry at all: 0 rpm
        client("c", demand={"x": used(50.0), "y": used(12.0)}),
    ]
    assert wanting_replicas(nodes) == ["x", "y"]  # both >= 3x idle's 0


def test_other_models_demand_per_replica_decides_the_imbalance() -> None:
    nodes = [
        node("a", serving={"hot": "ready", "wide": "ready"}),
        node("b", serving={"wide": "ready"}),
        node("d", serving={"wide": "ready"}),
        client("c", demand={"hot": used(30.0), "wide": used(30.0)}),  # wide: 10 per replica
    ]
    assert wanting_replicas(nodes) == ["hot"]


@pytest.mark.parametrize("loading", ["starting", "fetching"])
def test_one_replica_at_a_time(loading: str) -> None:
    nodes = [
        node("a", serving={"m": "ready"}, demand={"m": used(100.0)}),
        node("b", serving={"m": loading}),
    ]
    assert wanting_replicas(nodes) == []


def test_loading_one_model_does_not_block_another() -> None:
    hot = {"m": "ready", "n": "ready", "idle": "ready"}
    nodes = [node("a", serving=hot, demand={"m": used(50.0), "n": used(50.0)})]
    assert wanting_replicas(nodes) == ["m", "n"]
    assert wanting_replicas([*nodes, node("b", serving={"n": "starting"})]) == ["m"]


def test_client_nodes_never_count_as_replicas() -> None:
    nodes = [
        node("a", serving={"m": "ready"}),
        client("c", serving={"m": "ready"}, demand={"m": used(15.0)}),
    ]
    assert wanting_replicas(nodes) == ["m"]  # 15 per replica, not 7.5
    assert wanting_replicas(nodes[1:]) == []  # hot only on a client: hot nowhere
    loading_client = client("d", serving={"m": "starting"})
    assert wanting_replicas([*nodes, loading_client]) == ["m"]


def test_demand_for_a_model_hot_nowhere_wants_nothing() -> None:
    nodes = [node("a", serving={"m": "starting"}), client("c", demand={"cold": used(500.0)})]
    assert wanting_replicas(nodes) == []
    assert wanting_replicas([]) == []


def test_thresholds_are_parameters() -> None:
    nodes = [
        node("a", serving={"x": "ready", "y": "ready"}),
        client("c", demand={"x": used(5.0), "y": used(2.0)}),
    ]
    assert wanting_replicas(nodes) == []
    assert wanting_replicas(nodes, min_rpm=5.0, imbalance=2.5) == ["x"]
    assert wanting_replicas(nodes, min_rpm=2.0, imbalance=0.4) == ["x", "y"]


def test_wanted_models_are_by_name() -> None:
    nodes = [
        node("a", serving={"zz": "ready", "aa": "ready", "mm": "ready"}),
        client("c", demand={"zz": used(20.0), "aa": used(20.0), "mm": used(20.0)}),
    ]
    assert wanting_replicas(nodes, imbalance=1.0) == ["aa", "mm", "zz"]


def test_wanting_replicas_takes_any_iterable() -> None:
    nodes = [node("a", serving={"m": "ready"}, demand={"m": used(50.0)})]
    assert wanting_replicas(iter(nodes)) == ["m"]
