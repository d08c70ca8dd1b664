"""Dial plans: seeds, known peers, removed peers; back-off and rate (pure)."""

from __future__ import annotations

import random

from meshllm.gossip.dials import Dials


def dials(rate: float = 100.0) -> Dials:
    return Dials(
        rate=rate,
        reconnect_interval=30,
        reconnect_timeout=3600,
        max_plans=8,
        now=0,
        rng=random.Random(1),
    )


def test_seed_backs_off_to_the_reconnect_interval_and_is_checked_while_linked() -> None:
    d = dials()
    key = d.seed("10.0.0.1:9338", "abc", now=0)
    (order,) = d.due(0, linked=set())
    assert (order.key, order.addrs, order.node_id) == (key, ("10.0.0.1:9338",), "abc")
    assert d.due(0.1, set()) == []  # in flight
    gaps, now = [], 0.0
    for _ in range(8):
        d.done(key, ok=False, now=now)
        nxt = d.next_deadline()
        assert nxt is not None
        gaps.append(nxt - now)
        now = nxt
        assert d.due(now, set())
    assert gaps[0] < 2 and max(gaps) <= 30 * 1.2 and gaps[-1] >= 30 * 0.8
    d.done(key, ok=True, now=now)
    assert d.due(now + 31 * 1.2, linked={"abc"}) == []  # linked: just looked at, slowly


def test_removed_peer_is_redialled_until_the_reconnect_timeout() -> None:
    d = dials()
    d.removed("p", ("10.0.0.2:9338",), now=0)
    assert d.due(29, set()) == []
    (order,) = d.due(30, set())
    d.done(order.key, ok=False, now=30)
    assert d.due(3601, set()) == []
    assert d.next_deadline() is None  # given up


def test_rate_and_plan_count_are_bounded() -> None:
    d = dials(rate=2.0)
    for i in range(20):
        d.peer(f"p{i}", (f"10.0.1.{i}:9338",), now=0)
    assert d.dropped == 12  # max_plans = 8
    assert len(d.due(0, set())) == 4  # burst: twice the rate
    assert d.deferred == 1
    assert len(d.due(1, set())) == 2


def test_a_linked_peer_is_not_dialled_and_a_forgotten_one_is_gone() -> None:
    d = dials()
    d.peer("p", ("10.0.0.3:9338",), now=0)
    assert d.due(0, linked={"p"}) == []
    d.peer("q", ("10.0.0.4:9338",), now=0)
    d.forget("q")
    assert d.due(0, set()) == []
