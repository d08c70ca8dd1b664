"""The model-state event stream's pure half: announcement diffs, snapshots, the hub."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshllm.events import (
    MAX_QUEUED_EVENTS,
    MAX_SUBSCRIBERS,
    EventHub,
    SubscriptionEnded,
    model_events,
    snapshot_events,
)
from meshllm.gossip import PeerAnnouncement

NOW = 1_700_000_000_000


def ann(node_id: str, **fields: Any) -> PeerAnnouncement:
    return PeerAnnouncement(node_id=node_id, mesh_id="mesh", **fields)


def hot(since: int = 1, **extra: Any) -> dict[str, Any]:
    return {"state": "hot", "since": since, **extra}


def test_unchanged_mesh_gives_no_events() -> None:
    mesh = {"a": ann("a", pool={"m": hot()}, available_models={"m": 10, "c": 5})}
    assert model_events(mesh, dict(mesh), NOW) == []
    assert model_events({}, {}, NOW) == []


def test_a_state_change_is_one_model_state_event() -> None:
    before = {"a": ann("a", pool={"m": {"state": "warming", "since": 1, "eta": 4.5}})}
    after = {"a": ann("a", pool={"m": {"state": "cooling", "since": 9, "until": 99}})}
    assert model_events(before, after, NOW) == [
        {
            "type": "model_state",
            "node_id": "a",
            "model": "m",
            "state": "cooling",
            "previous": "warming",
            "since": 9,
            "eta": None,
            "until": 99,
            "pinned": False,
            "cause": None,
            "at": NOW,
        }
    ]


def test_pinning_alone_is_a_change() -> None:
    before = {"a": ann("a", pool={"m": hot()})}
    after = {"a": ann("a", pool={"m": hot(pinned=True)})}
    [event] = model_events(before, after, NOW)
    assert (event["state"], event["previous"], event["pinned"]) == ("hot", "hot", True)


def test_cold_and_gone_models() -> None:
    before = {"a": ann("a", pool={"m": hot()}, available_models={"m": 1, "old": 1})}
    after = {"a": ann("a", available_models={"m": 1, "new": 1})}
    events = model_events(before, after, NOW)
    assert [(e["model"], e["previous"], e["state"]) for e in events] == [
        ("m", "hot", "cold"),
        ("new", None, "cold"),
        ("old", "cold", None),
    ]


def test_failed_carries_its_cause() -> None:
    before = {"a": ann("a", pool={"m": {"state": "warming", "since": 1}})}
    failed = {"m": {"state": "failed", "since": 2}}
    after = {"a": ann("a", pool=failed, failures={"m": "exit 1: out of memory"})}
    [event] = model_events(before, after, NOW)
    assert (event["state"], event["cause"]) == ("failed", "exit 1: out of memory")
    # a cause listed for a model that is not failed is not carried
    later = {"a": ann("a", pool={"m": hot(3)}, failures={"m": "exit 1: out of memory"})}
    assert model_events(after, later, NOW)[0]["cause"] is None


def test_a_new_node_joins_with_its_non_cold_models() -> None:
    before = {"a": ann("a")}
    joined = ann(
        "b",
        pool={"z": hot(), "f": {"state": "fetching", "since": 5, "eta": 30.0}},
        available_models={"z": 1, "cold": 1},
    )
    after = before | {"b": joined}
    events = model_events(before, after, NOW)
    assert [(e["type"], e.get("model"), e.get("previous")) for e in events] == [
        ("node_joined", None, None),
        ("model_state", "f", None),
        ("model_state", "z", None),
    ]
    assert events[0] == {"type": "node_joined", "node_id": "b", "at": NOW}
    assert events[1]["eta"] == 30.0


def test_a_node_that_leaves_is_one_node_left() -> None:
    before = {"a": ann("a", pool={"m": hot()}), "b": ann("b", pool={"m": hot()})}
    after = {"a": before["a"]}
    assert model_events(before, after, NOW) == [{"type": "node_left", "node_id": "b", "at": NOW}]


def test_events_are_sorted_by_node_then_model() -> None:
    before = {"b": ann("b", pool={"y": hot(), "x": hot()}), "c": ann("c")}
    after = {
        "a": ann("a", pool={"q": hot()}),
        "b": ann("b", pool={"y": hot(2), "x": hot(2)}),
    }
    keys = [(e["node_id"], e.get("model"), e["type"]) for e in model_events(before, after, NOW)]
    assert keys == [
        ("a", None, "node_joined"),
        ("a", "q", "model_state"),
        ("b", "x", "model_state"),
        ("b", "y", "model_state"),
        ("c", None, "node_left"),
    ]


def test_snapshot_lists_every_model_cold_ones_too() -> None:
    anns = {
        "b": ann("b", available_models={"c": 1}),
        "a": ann("a", pool={"m": {"state": "failed", "since": 3}}, failures={"m": "boom"}),
    }
    [snap] = snapshot_events(anns, NOW)
    assert snap["type"] == "snapshot" and snap["at"] == NOW
    assert snap["models"] == [
        {"node_id": "a", "model": "m", "state": "failed", "since": 3, "eta": None}
        | {"until": None, "pinned": False, "cause": "boom"},
        {"node_id": "b", "model": "c", "state": "cold", "since": None, "eta": None}
        | {"until": None, "pinned": False, "cause": None},
    ]
    assert snapshot_events({}, NOW) == [{"type": "snapshot", "at": NOW, "models": []}]


async def test_hub_fans_out_to_every_subscriber() -> None:
    hub = EventHub()
    with hub.subscribe() as one, hub.subscribe() as two:  # type: ignore[union-attr]
        assert len(hub) == 2
        hub.publish([{"type": "x", "n": 1}, {"type": "x", "n": 2}])
        for sub in (one, two):
            assert [(await sub.next(1.0))["n"], (await sub.next(1.0))["n"]] == [1, 2]
            assert await sub.next(0.01) is None  # timeout: nothing waiting
    assert len(hub) == 0


async def test_a_waiting_next_wakes_on_publish() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    assert sub is not None
    waiter = asyncio.create_task(sub.next(5.0))
    await asyncio.sleep(0)
    hub.publish([{"type": "x"}])
    assert await waiter == {"type": "x"}


async def test_full_hub_refuses_and_a_closed_slot_frees() -> None:
    hub = EventHub()
    subs = [hub.subscribe() for _ in range(MAX_SUBSCRIBERS)]
    assert all(s is not None for s in subs)
    assert hub.subscribe() is None
    subs[0].close()  # type: ignore[union-attr]
    subs[0].close()  # type: ignore[union-attr]  # idempotent
    assert hub.subscribe() is not None
    with pytest.raises(SubscriptionEnded):
        await subs[0].next(0.01)  # type: ignore[union-attr]


async def test_a_closed_hub_ends_its_subscriptions_and_takes_no_more() -> None:
    """The node stops: a stream waiting for its next event ends at once."""
    hub = EventHub()
    sub = hub.subscribe()
    assert sub is not None
    waiting = asyncio.create_task(sub.next(30))
    await asyncio.sleep(0)
    hub.close()
    with pytest.raises(SubscriptionEnded):
        await asyncio.wait_for(waiting, 5)
    assert hub.subscribe() is None and len(hub) == 0


async def test_overflow_drops_the_subscriber_after_one_overflow_event() -> None:
    hub = EventHub()
    slow, fast = hub.subscribe(), hub.subscribe()
    assert slow is not None and fast is not None
    hub.publish([{"type": "x"}] * MAX_QUEUED_EVENTS)  # exactly full: still fine
    for _ in range(MAX_QUEUED_EVENTS):
        await fast.next(1.0)
    assert not slow.overflowed
    hub.publish([{"type": "y"}])  # one past the budget for slow only
    assert slow.overflowed and not fast.overflowed
    assert len(hub) == 1 and slow.closed
    assert await slow.next(1.0) == {"type": "overflow"}
    with pytest.raises(EOFError):
        await slow.next(1.0)
    assert await fast.next(1.0) == {"type": "y"}
    hub.publish([{"type": "z"}])  # the dropped one gets nothing more
    assert await fast.next(1.0) == {"type": "z"}
