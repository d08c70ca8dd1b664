"""MeshState merge rules, by table and by property (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshllm.gossip.announcement import PeerAnnouncement
from meshllm.gossip.state import (
    TOMBSTONE_TTL,
    MeshState,
    PeerJoined,
    PeerRemoved,
    PeerUpdated,
    SelfRefuted,
)

MESH = "m1"


def ann(node_id: str, incarnation: int = 1, seq: int = 0, **kw: object) -> PeerAnnouncement:
    return PeerAnnouncement(node_id=node_id, mesh_id=MESH, incarnation=incarnation, seq=seq, **kw)


def fresh() -> MeshState:
    return MeshState(ann("me", incarnation=10))


def test_apply_new_peer_joins() -> None:
    state = fresh()
    event = state.apply(ann("a"), now=0)
    assert event == PeerJoined(ann("a"))
    assert set(state.peers) == {"a"}


def test_apply_higher_seq_updates_lower_is_ignored() -> None:
    state = fresh()
    state.apply(ann("a", seq=2, load=2), now=0)
    assert state.apply(ann("a", seq=1, load=1), now=0) is None
    assert state.apply(ann("a", seq=2, load=9), now=0) is None
    event = state.apply(ann("a", seq=3, load=3), now=0)
    assert isinstance(event, PeerUpdated) and event.new.load == 3
    assert state.peers["a"].load == 3


def test_apply_higher_incarnation_beats_any_seq() -> None:
    state = fresh()
    state.apply(ann("a", incarnation=1, seq=100), now=0)
    assert isinstance(state.apply(ann("a", incarnation=2, seq=0), now=0), PeerUpdated)
    assert state.peers["a"].rank == (2, 0)


def test_apply_ignores_other_meshes_and_self() -> None:
    state = fresh()
    other = PeerAnnouncement(node_id="x", mesh_id="other", incarnation=1)
    assert state.apply(other, now=0) is None
    assert state.apply(ann("me", incarnation=99), now=0) is None
    assert state.peers == {} and state.me.incarnation == 10


def test_remove_dead_leaves_tombstone_blocking_stale_news() -> None:
    state = fresh()
    state.apply(ann("a", incarnation=5, seq=3), now=0)
    event = state.remove("a", now=1)
    assert isinstance(event, PeerRemoved) and event.reason == "dead"
    assert state.apply(ann("a", incarnation=5, seq=9), now=2) is None
    assert "a" not in state.peers
    assert state.tombstones(now=2) == {"a": 5}


def test_leaving_announcement_removes_and_restart_is_welcome() -> None:
    state = fresh()
    state.apply(ann("a", incarnation=5), now=0)
    event = state.apply(ann("a", incarnation=5, seq=1, leaving=True), now=1)
    assert isinstance(event, PeerRemoved) and event.reason == "left"
    assert state.apply(ann("a", incarnation=5, seq=2), now=1) is None
    assert isinstance(state.apply(ann("a", incarnation=6), now=2), PeerJoined)


def test_a_live_link_revives_a_tombstoned_peer() -> None:
    state = fresh()
    state.apply(ann("a", incarnation=5), now=0)
    state.remove("a", now=1)
    state.revive("a")
    assert isinstance(state.apply(ann("a", incarnation=5, seq=1), now=2), PeerJoined)


def test_table_is_capped() -> None:
    state = MeshState(ann("me", incarnation=10), max_peers=2)
    assert state.apply(ann("a"), now=0) and state.apply(ann("b"), now=0)
    assert state.apply(ann("c"), now=0) is None
    assert isinstance(state.apply(ann("a", seq=1), now=0), PeerUpdated)  # known: still merged


def test_tombstone_expires() -> None:
    state = fresh()
    state.apply(ann("a", incarnation=5), now=0)
    state.remove("a", now=0)
    state.expire(now=TOMBSTONE_TTL + 1)
    assert isinstance(
        state.apply(ann("a", incarnation=5, seq=1), now=TOMBSTONE_TTL + 1), PeerJoined
    )


def test_refute_raises_the_incarnation_never_past_the_clock_needlessly() -> None:
    state = fresh()
    event = state.refute(wall_ms=0)
    assert isinstance(event, SelfRefuted) and state.me.incarnation == 11
    state.refute(wall_ms=500)
    assert state.me.incarnation == 500


def test_compare_pushes_newer_and_pulls_unknown() -> None:
    state = fresh()
    state.apply(ann("a", seq=5), now=0)
    state.apply(ann("b", seq=1), now=0)
    push, pull = state.compare({"a": (1, 3), "b": (1, 4), "c": (1, 0), "me": (10, 0)}, now=0)
    assert push == ["a"]  # "me" is equal in theirs: nothing to push
    assert set(pull) == {"b", "c"}


def test_compare_does_not_pull_tombstoned_life() -> None:
    state = fresh()
    state.apply(ann("a", incarnation=3), now=0)
    state.remove("a", now=0)
    _, pull = state.compare({"a": (3, 9)}, now=0)
    assert pull == []


ranks = st.tuples(st.integers(0, 3), st.integers(0, 5))
updates = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), ranks, st.integers(0, 9)), max_size=30
)


@given(updates, st.randoms())
def test_merge_is_order_independent(items: list, rng) -> None:
    """Any delivery order of the same announcements ends in the same state."""
    anns = [ann(n, incarnation=i, seq=s, load=load) for n, (i, s), load in items]
    # Two announcements with one rank but different content can't both come from
    # a correct node: keep one per (node, rank).
    unique = list({(a.node_id, a.rank): a for a in anns}.values())
    shuffled = unique[:]
    rng.shuffle(shuffled)
    one, two = fresh(), fresh()
    for a in unique:
        one.apply(a, now=0)
    for a in shuffled:
        two.apply(a, now=0)
    assert one.peers == two.peers
    for node_id, peer in one.peers.items():
        assert peer.rank == max(a.rank for a in unique if a.node_id == node_id)


@given(updates)
def test_merge_never_goes_backwards(items: list) -> None:
    state = fresh()
    seen: dict[str, tuple[int, int]] = {}
    for n, (i, s), _ in items:
        state.apply(ann(n, incarnation=i, seq=s), now=0)
        seen[n] = max(seen.get(n, (-1, -1)), (i, s))
        assert state.peers[n].rank == seen[n]


@given(updates, st.sampled_from(["a", "b", "c"]))
def test_removed_peer_only_returns_with_higher_incarnation(items: list, victim: str) -> None:
    state = fresh()
    for n, (i, s), _ in items:
        state.apply(ann(n, incarnation=i, seq=s), now=0)
    if victim not in state.peers:
        return
    inc = state.peers[victim].incarnation
    state.remove(victim, now=0)
    for n, (i, s), _ in items:
        state.apply(ann(n, incarnation=i, seq=s), now=1)
    assert victim not in state.peers
    state.apply(ann(victim, incarnation=inc + 1), now=1)
    assert victim in state.peers
