"""SWIM probes with Lifeguard's refinements, one Health on a fake clock."""

from __future__ import annotations

import random

from meshllm.gossip.health import (
    Died,
    Health,
    HealthSettings,
    NeedLink,
    Ping,
    PingReq,
    RelayAnswer,
    Suspected,
)

SETTINGS = HealthSettings(probe_interval=15, probe_timeout=5, indirect_probes=3)


def health(*peers: str, linked: set[str] | None = None) -> Health:
    """A Health tracking ``peers``, linked to all of them unless ``linked`` says otherwise
    (the set is live: tests change it)."""
    h = Health(SETTINGS, random.Random(1), linked=set(peers) if linked is None else linked)
    for p in peers:
        h.track(p, now=0)
    return h


def of(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def test_first_probe_within_one_interval_then_every_interval() -> None:
    h = health("a")
    assert of(h.tick(0), Ping) == []
    (ping,) = of(h.tick(15), Ping)
    assert of(h.tick(15.5), Ping) == []  # one ping outstanding at a time
    h.pong("a", ping.ping_id, now=15.1)
    assert h.rtt("a") is not None and h.rtt("a") < 1
    assert of(h.tick(29), Ping) == []
    assert [p.node_id for p in of(h.tick(30.2), Ping)] == ["a"]


def test_missed_probe_suspects_and_asks_others_then_dies_without_answers() -> None:
    h = health("a", "b", "c", "x")
    for ping in of(h.tick(15), Ping):
        if ping.node_id != "x":
            h.pong(ping.node_id, ping.ping_id, now=15.1)
    actions = h.tick(20.01)  # x missed its probe
    assert {s.node_id for s in of(actions, Suspected)} == {"x"}
    reqs = [r for r in of(actions, PingReq) if r.target == "x"]
    assert len(reqs) == 3 and {r.via for r in reqs} == {"a", "b", "c"}
    assert h.is_suspect("x")
    dead: list[str] = []
    t = 20.0
    while not dead and t < 60:
        t += 0.5
        actions = h.tick(t)
        for ping in of(actions, Ping):
            if ping.node_id != "x":
                h.pong(ping.node_id, ping.ping_id, now=t)
        dead = [d.node_id for d in of(actions, Died)]
    assert "x" in dead
    # No nacks: at most the max suspicion timeout (3 x min) after the missed probe.
    assert t <= 20 + 3 * 5 * 1.0 + 0.5


def test_nacks_confirm_and_shorten_the_suspicion_to_its_minimum() -> None:
    h = health("a", "b", "c", "x")
    h.suspect("x", now=0)  # our own evidence (a broken data path)
    reqs = [r for r in of(h.pending(), PingReq) if r.target == "x"]
    for r in reqs:
        h.relayed_answer(r.via, "x", r.ping_id, ok=False, now=4)
    died = of(h.tick(5.0 + 0.01), Died)
    assert [d.node_id for d in died] == ["x"]  # min timeout (5 s), not max (15 s)
    assert h.awareness == 0  # everyone answered: we are not the slow one


def test_an_indirect_pong_ends_the_suspicion() -> None:
    h = health("a", "x")
    h.suspect("x", now=0)
    (req,) = of(h.pending(), PingReq)
    h.relayed_answer("a", "x", req.ping_id, ok=True, now=1)
    assert not h.is_suspect("x")
    assert of(h.tick(100), Died) == []


def test_second_hand_report_probes_at_once_and_is_never_a_verdict() -> None:
    h = health("a", "x")
    h.suspect("x", now=1, reporter="a")
    assert not h.is_suspect("x")
    (ping,) = of(h.tick(1), Ping)
    assert ping.node_id == "x"
    h.pong("x", ping.ping_id, now=1.01)
    assert of(h.tick(60), Died) == []


def test_unlinked_peer_due_a_probe_asks_for_a_link_and_is_suspected() -> None:
    h = health("a", "x", linked={"a"})
    actions = h.tick(15)
    assert NeedLink("x") in actions and h.is_suspect("x")


def test_relayed_probe_answers_pong_or_nack() -> None:
    h = health()
    h.ping_req("r", "t", 7, now=0, linked=True)
    (ping,) = of(h.pending(), Ping)
    h.pong("t", ping.ping_id, now=0.1)
    assert RelayAnswer("r", "t", 7, True) in h.pending()
    h.ping_req("r", "t", 8, now=1, linked=True)
    h.pending()
    assert RelayAnswer("r", "t", 8, False) in h.tick(1 + 0.8 * 5 + 0.01)
    h.ping_req("r", "u", 9, now=2, linked=False)
    assert h.pending() == [RelayAnswer("r", "u", 9, False)]


def test_missed_nacks_raise_local_awareness_and_stretch_timings() -> None:
    h = health("a", "b", "x")
    h.suspect("x", now=0)
    h.pending()
    h.tick(20)  # nobody answered anything: x died, we blame ourselves too
    assert h.awareness == 2
    h.track("y", now=20)
    first = [p for p in of(h.tick(20 + 15 * 1.01), Ping) if p.node_id == "y"]
    assert first == []  # the interval is stretched (x3), so y's first probe is later


def test_relayed_probes_are_bounded() -> None:
    h = health()
    for i in range(1000):
        h.ping_req("r", "t", i, now=0, linked=True)
    assert len(of(h.pending(), Ping)) == SETTINGS.max_relayed_probes


def test_only_the_intermediates_asked_may_answer_for_a_suspect() -> None:
    h = health("a", "b", "liar", "x", linked={"a", "b", "x"})  # liar: known, not linked
    h.suspect("x", now=0)
    reqs = of(h.pending(), PingReq)
    assert {r.via for r in reqs} == {"a", "b"}  # never an unlinked peer
    h.relayed_answer("liar", "x", reqs[0].ping_id, ok=True, now=1)  # not asked
    h.relayed_answer("a", "x", None, ok=True, now=1)  # no id
    h.relayed_answer("a", "x", reqs[0].ping_id + 1, ok=True, now=1)  # a guess
    assert h.is_suspect("x")
    h.relayed_answer("a", "x", reqs[0].ping_id, ok=True, now=1)
    assert not h.is_suspect("x")


def test_a_pong_from_another_than_the_target_cancels_no_relayed_probe() -> None:
    h = health()
    h.ping_req("r", "t", 7, now=0, linked=True)
    (ping,) = of(h.pending(), Ping)
    h.pong("liar", ping.ping_id, now=0.1)
    assert h.pending() == []
    h.pong("t", ping.ping_id, now=0.2)
    assert h.pending() == [RelayAnswer("r", "t", 7, True)]


def test_unlinked_fakes_do_not_make_a_node_distrust_itself() -> None:
    fakes = [f"fake{i}" for i in range(30)]
    h = health("a", "b", *fakes, linked={"a", "b"})
    died: list[str] = []
    for t in range(15, 200, 15):
        actions = h.tick(t)
        died += [d.node_id for d in of(actions, Died)]
        for ping in of(actions, Ping):
            if ping.node_id in ("a", "b"):
                h.pong(ping.node_id, ping.ping_id, now=t + 0.01)
        for req in of(actions, PingReq):  # a and b cannot reach the fakes either
            h.relayed_answer(req.via, req.target, req.ping_id, ok=False, now=t + 0.01)
    assert sorted(died) == sorted(fakes)
    assert h.awareness == 0


def test_repeated_suspicions_of_us_count_once_a_probe_interval() -> None:
    h = health("a")
    for i in range(12):
        h.self_refuted(now=i * 0.6)
    assert h.awareness == 1
