"""Tests of meshllm.election.placement: where a model that is hot nowhere gets loaded."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshllm.election import (
    Placement,
    PlacementTier,
    Refusal,
    RefusalReason,
    estimate_model_memory,
    place,
    rank,
    rendezvous_hash,
    rendezvous_score,
)
from meshllm.gossip.announcement import ModelState, PeerAnnouncement, Role

MIB = 1 << 20
GIB = 1 << 30
M = "llama-8b"
SIZE = 4 * GIB  # needs estimate_model_memory(4 GiB) = 5.3 GiB
NEED = estimate_model_memory(SIZE)
FAILED, READY, STARTING, FETCHING = (
    ModelState.FAILED,
    ModelState.READY,
    ModelState.STARTING,
    ModelState.FETCHING,
)
ON_DISK, COPY, CLAIMED = PlacementTier.ON_DISK, PlacementTier.COPY, PlacementTier.CLAIMED


def ann(
    node_id: str,
    *,
    memory: int = 16 * GIB,
    disk: dict[str, int] | None = None,
    serving: dict[str, str] | None = None,
    failures: dict[str, str] | None = None,
    role: Role = Role.WORKER,
    load: int = 0,
) -> PeerAnnouncement:
    return PeerAnnouncement(
        node_id=node_id,
        mesh_id="mesh",
        role=role,
        available_models=disk or {},
        serving=serving or {},
        failures=failures or {},
        memory_bytes=memory,
        load=load,
    )


def holder(node_id: str, memory: int = 16 * GIB, **kw) -> PeerAnnouncement:
    return ann(node_id, memory=memory, disk={M: SIZE}, **kw)


def winner(model: str, nodes: list[PeerAnnouncement], **kw) -> str:
    result = place(model, nodes, **kw)
    assert isinstance(result, Placement), result
    return result.node_id


# --- the hash and the score ---------------------------------------------------------------


def test_rendezvous_hash_is_sha256_of_model_nul_node():
    # Pinned: every node of a mesh, whatever its version, must compute the same fraction.
    digest = hashlib.sha256(b"gemma-3-270m\0node-a").digest()
    h = int.from_bytes(digest[:8], "big") >> 12
    assert rendezvous_hash("gemma-3-270m", "node-a") == (2 * h + 1) / 2**53
    assert rendezvous_hash("gemma-3-270m", "node-a") == 0.12382514847433745
    assert rendezvous_hash("gemma-3-270m", "node-b") == 0.703629149071559


def test_rendezvous_hash_separates_model_from_node():
    assert rendezvous_hash("ab", "c") != rendezvous_hash("a", "bc")


@given(st.text(max_size=40), st.text(max_size=40))
def test_rendezvous_hash_strictly_inside_unit_interval(model, node_id):
    u = rendezvous_hash(model, node_id)
    assert 0 < u < 1
    assert math.isfinite(rendezvous_score(model, node_id, 1))


@pytest.mark.parametrize("weight", [0, -5])
def test_rendezvous_score_non_positive_weight_is_zero(weight):
    assert rendezvous_score(M, "a", weight) == 0


@given(st.integers(1, 1 << 40), st.integers(1, 1 << 40))
def test_rendezvous_score_grows_with_weight(a, b):
    if a < b:
        assert rendezvous_score(M, "n", a) < rendezvous_score(M, "n", b)


# --- table of small meshes -----------------------------------------------------------------

CASES = [
    # (name, nodes, expected node, tier, fetch_from)
    ("the only holder", [holder("a")], "a", ON_DISK, ()),
    ("a copier when no holder fits", [holder("a", 4 * GIB), ann("b")], "b", COPY, ("a",)),
    (
        "the holder before a much larger copier",
        [holder("a", 6 * GIB), ann("b", memory=1024 * GIB)],
        "a",
        ON_DISK,
        (),
    ),
    (
        "the fitting holder, not the small one",
        [holder("a", 4 * GIB), holder("b", 8 * GIB), ann("c")],
        "b",
        ON_DISK,
        (),
    ),
    (
        "the client is skipped",
        [holder("a", role=Role.CLIENT, memory=1024 * GIB), holder("b")],
        "b",
        ON_DISK,
        (),
    ),
    (
        "the failed holder is skipped for a copier",
        [holder("a", serving={M: FAILED}, failures={M: "exit 1"}), ann("b")],
        "b",
        COPY,
        ("a",),
    ),
    (
        "sources least loaded first",
        [
            holder("a", 4 * GIB, load=3),
            holder("b", 4 * GIB, load=1),
            holder("c", 4 * GIB, load=3),
            ann("d"),
        ],
        "d",
        COPY,
        ("b", "a", "c"),
    ),
    (
        "a starting claimant keeps it though its memory is spent",
        [holder("a", memory=0, serving={M: STARTING}), holder("b", memory=1024 * GIB)],
        "a",
        CLAIMED,
        (),
    ),
    (
        "a fetching claimant keeps it",
        [holder("a"), ann("b", memory=0, serving={M: FETCHING})],
        "b",
        CLAIMED,
        (),
    ),
    (
        "a claimant with no file (an external endpoint) keeps it",
        [ann("a", serving={M: READY})],
        "a",
        CLAIMED,
        (),
    ),
]


@pytest.mark.parametrize(
    ("nodes", "node_id", "tier", "fetch_from"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_place_table(nodes, node_id, tier, fetch_from):
    assert place(M, nodes) == Placement(M, node_id, tier, fetch_from)


def test_ready_claimant_before_starting_before_fetching():
    # Many names, so the rendezvous order of the three would put each first somewhere.
    for i in range(50):
        model = f"m{i}"
        nodes = [
            ann("f", serving={model: FETCHING}),
            ann("s", serving={model: STARTING}),
            ann("r", serving={model: READY}),
        ]
        assert rank(model, nodes) == ["r", "s", "f"]


def test_claimants_then_holders_then_copiers():
    nodes = [
        ann("copier", memory=1024 * GIB),
        holder("holder"),
        holder("claimant", memory=0, serving={M: STARTING}),
    ]
    assert rank(M, nodes) == ["claimant", "holder", "copier"]


# --- refusals ------------------------------------------------------------------------------


def test_refusal_too_big_names_the_largest_budget():
    nodes = [holder("a", 3 * GIB), ann("b", memory=5 * GIB), ann("c", memory=2 * GIB)]
    assert place(M, nodes) == Refusal(
        M,
        RefusalReason.TOO_BIG,
        f"no node can hold {M} ({SIZE} bytes, about 5.3 GiB to serve): "
        f"the largest budget is {5 * GIB} bytes (5.0 GiB) on node b",
    )
    assert rank(M, nodes) == []


def test_refusal_too_big_budget_ties_name_the_lowest_id():
    result = place(M, [holder("z", 2 * GIB), ann("y", memory=2 * GIB)])
    assert isinstance(result, Refusal)
    assert result.message.endswith("on node y")


def test_refusal_too_big_counts_the_callers_free_memory():
    nodes = [holder("a", 8 * GIB), ann("b", memory=8 * GIB)]
    result = place(M, nodes, free_memory=lambda a: a.memory_bytes - 7 * GIB)
    assert isinstance(result, Refusal) and result.reason == RefusalReason.TOO_BIG
    assert f"the largest budget is {GIB} bytes (1.0 GiB) on node a" in result.message


def test_refusal_negative_free_memory_reads_as_zero():
    result = place(M, [holder("a")], free_memory=lambda a: -GIB)
    assert isinstance(result, Refusal)
    assert result.message.endswith("the largest budget is 0 bytes (0.0 GiB) on node a")


def test_refusal_no_copy():
    nodes = [ann("a"), ann("b", disk={"other": GIB})]
    assert place(M, nodes) == Refusal(
        M, RefusalReason.NO_COPY, f"no copy of {M}'s GGUF on any live node"
    )


def test_refusal_no_copy_even_with_a_size_given():
    result = place(M, [ann("a")], size_bytes=GIB)
    assert isinstance(result, Refusal) and result.reason == RefusalReason.NO_COPY


def test_client_disk_is_no_source():
    nodes = [holder("c", role=Role.CLIENT), ann("a")]
    result = place(M, nodes)
    assert isinstance(result, Refusal) and result.reason == RefusalReason.NO_COPY


@pytest.mark.parametrize(
    "nodes", [[], [holder("c", role=Role.CLIENT, serving={M: READY})]], ids=["empty", "clients"]
)
def test_refusal_no_nodes(nodes):
    assert place(M, nodes) == Refusal(
        M,
        RefusalReason.NO_NODES,
        f"no live node can serve {M}: the mesh has no nodes that serve models",
    )


def test_refusal_all_failed_lists_causes_by_node():
    nodes = [
        holder("b", serving={M: FAILED}, failures={M: "exit code 1: out of memory"}),
        ann("a", serving={M: FAILED}),
        ann("small", memory=GIB),  # too small: not among those that could hold it
    ]
    assert place(M, nodes) == Refusal(
        M,
        RefusalReason.ALL_FAILED,
        f"{M} failed on every node that could hold it: "
        "a: no cause given; b: exit code 1: out of memory",
    )


def test_failed_elsewhere_does_not_block_a_fresh_node():
    nodes = [holder("a", serving={M: FAILED}, failures={M: "signal 9"}), holder("b")]
    assert place(M, nodes) == Placement(M, "b", ON_DISK)


def test_negative_size_raises():
    with pytest.raises(ValueError):
        place(M, [holder("a")], size_bytes=-1)


# --- size ----------------------------------------------------------------------------------


def test_size_is_the_largest_announced():
    # b announces a larger file: plan for it, so the copier c (6 GiB) cannot take it.
    nodes = [
        ann("a", memory=GIB, disk={M: SIZE}),
        ann("b", memory=GIB, disk={M: 8 * GIB}),
        ann("c", memory=6 * GIB),
    ]
    result = place(M, nodes)
    assert isinstance(result, Refusal) and result.reason == RefusalReason.TOO_BIG
    assert f"({8 * GIB} bytes" in result.message


def test_size_given_overrides_announced():
    nodes = [holder("a", memory=512 * MIB), ann("b", memory=2 * GIB)]
    assert isinstance(place(M, nodes), Refusal)  # 4 GiB as announced fits neither
    assert place(M, nodes, size_bytes=100 * MIB) == Placement(M, "b", COPY, ("a",))


@pytest.mark.parametrize("bogus", [0, -7])
def test_size_unknown_fits_only_holders(bogus):
    nodes = [ann("h", memory=0, disk={M: bogus}), ann("big", memory=1024 * GIB)]
    assert place(M, nodes) == Placement(M, "h", ON_DISK)
    assert rank(M, nodes) == ["h"]


def test_fit_uses_the_one_memory_rule():
    # Exactly the estimate fits; a byte less does not.
    assert winner(M, [ann("a", memory=GIB), ann("b", memory=NEED, disk={M: SIZE})]) == "b"
    result = place(M, [ann("b", memory=NEED - 1, disk={M: SIZE})])
    assert isinstance(result, Refusal) and result.reason == RefusalReason.TOO_BIG


def test_free_memory_callable_moves_the_choice():
    nodes = [holder("a"), holder("b")]
    first = winner(M, nodes)
    other = "b" if first == "a" else "a"
    loaded = {first: 12 * GIB}  # what the caller knows the first has loaded
    assert winner(M, nodes, free_memory=lambda a: a.memory_bytes - loaded.get(a.node_id, 0)) == (
        other
    )


# --- ties ----------------------------------------------------------------------------------


def test_equal_weights_order_by_hash():
    nodes = [holder(n) for n in "abcd"]
    expected = sorted("abcd", key=lambda n: -rendezvous_hash(M, n))
    assert rank(M, nodes) == expected


def test_zero_weights_order_by_unweighted_hash():
    # Unknown size: the holders fit whatever their memory; all weigh zero.
    nodes = [ann(n, memory=0, disk={M: 0}) for n in "abcd"]
    assert rank(M, nodes) == sorted("abcd", key=lambda n: -rendezvous_hash(M, n))


# --- properties ----------------------------------------------------------------------------

node_ids = st.text("0123456789abcdef", min_size=4, max_size=8)


@st.composite
def meshes(draw):
    ids = draw(st.lists(node_ids, min_size=1, max_size=8, unique=True))
    nodes = []
    for node_id in ids:
        nodes.append(
            ann(
                node_id,
                memory=draw(st.sampled_from([0, 2 * GIB, NEED, 8 * GIB, 24 * GIB, 80 * GIB])),
                disk={M: SIZE} if draw(st.booleans()) else {},
                serving=draw(st.sampled_from([{}, {}, {}, {}, {M: FAILED}, {M: STARTING}])),
                role=draw(st.sampled_from([Role.WORKER, Role.WORKER, Role.HOST, Role.CLIENT])),
                load=draw(st.integers(0, 3)),
            )
        )
    return nodes


@given(meshes(), st.randoms(use_true_random=False))
def test_same_view_same_answer_in_any_order(nodes, rnd):
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert place(M, shuffled) == place(M, nodes)
    assert rank(M, shuffled) == rank(M, nodes)


@given(meshes())
def test_place_is_the_head_of_rank(nodes):
    result = place(M, nodes)
    order = rank(M, nodes)
    if isinstance(result, Placement):
        assert order[0] == result.node_id
        assert len(order) == len(set(order))
    else:
        assert order == []


@given(meshes())
def test_placed_node_is_never_a_client_nor_failed(nodes):
    by_id = {a.node_id: a for a in nodes}
    for node_id in rank(M, nodes):
        node = by_id[node_id]
        assert node.role != Role.CLIENT
        assert node.serving.get(M) != FAILED


@given(meshes())
def test_copier_has_sources_and_holder_has_none(nodes):
    result = place(M, nodes)
    if isinstance(result, Placement):
        by_id = {a.node_id: a for a in nodes}
        has_file = M in by_id[result.node_id].available_models
        if result.tier == COPY:
            assert not has_file and result.fetch_from
            assert all(M in by_id[s].available_models for s in result.fetch_from)
            assert all(by_id[s].role != Role.CLIENT for s in result.fetch_from)
        else:
            assert result.fetch_from == ()


@given(meshes())
def test_failing_the_first_moves_to_the_second(nodes):
    order = rank(M, nodes)
    if not order:
        return
    first = order[0]
    after = [
        replace(a, serving={M: FAILED}, failures={M: "exit 1"}) if a.node_id == first else a
        for a in nodes
    ]
    assert rank(M, after) == order[1:]


@given(meshes(), st.integers(0, 7))
def test_removing_an_unrelated_node_keeps_the_choice(nodes, k):
    result = place(M, nodes)
    if not isinstance(result, Placement) or len(nodes) < 2:
        return
    gone = nodes[k % len(nodes)]
    if gone.node_id == result.node_id or result.fetch_from == (gone.node_id,):
        return  # related: the chosen node, or the only one it can copy from
    rest = [a for a in nodes if a is not gone]
    after = place(M, rest)
    assert isinstance(after, Placement)
    assert after.node_id == result.node_id
    assert after.fetch_from == tuple(s for s in result.fetch_from if s != gone.node_id)


@given(meshes(), node_ids, st.sampled_from([GIB, NEED, 8 * GIB, 100 * GIB]), st.booleans())
def test_a_joining_node_takes_the_model_or_changes_nothing(nodes, new_id, memory, has_file):
    if any(a.node_id == new_id for a in nodes):
        return
    before = place(M, nodes)
    joined = place(M, [*nodes, ann(new_id, memory=memory, disk={M: SIZE} if has_file else {})])
    if isinstance(before, Placement):
        assert isinstance(joined, Placement)
        assert joined.node_id in (before.node_id, new_id)


@given(meshes(), st.integers(0, 7), st.integers(1, 64))
def test_more_memory_never_loses_the_model(nodes, k, factor):
    result = place(M, nodes)
    if not isinstance(result, Placement) or result.tier == CLAIMED:
        return
    richer = [
        replace(a, memory_bytes=a.memory_bytes * factor) if a.node_id == result.node_id else a
        for a in nodes
    ]
    assert place(M, richer).node_id == result.node_id


# --- spread --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "memories",
    [
        {"a": 8 * GIB, "b": 16 * GIB, "c": 40 * GIB},
        {"a": 24 * GIB, "b": 24 * GIB, "c": 24 * GIB, "d": 24 * GIB},
        {"gpu": 80 * GIB, "laptop": 10 * GIB},
    ],
    ids=["1:2:5", "equal", "8:1"],
)
def test_models_spread_in_proportion_to_free_memory(memories):
    n = 4000
    nodes = [
        ann(i, memory=m, disk={f"model-{k}": GIB for k in range(n)}) for i, m in memories.items()
    ]
    wins = Counter(winner(f"model-{k}", nodes) for k in range(n))
    total = sum(memories.values())
    for node_id, memory in memories.items():
        # Binomial sd at n=4000 is at most 0.008: 0.04 is five of them.
        assert abs(wins[node_id] / n - memory / total) < 0.04, (node_id, wins)


def test_spread_over_copiers_too():
    n = 3000
    source = ann("src", memory=GIB, disk={f"model-{k}": GIB for k in range(n)})
    nodes = [source, ann("a", memory=10 * GIB), ann("b", memory=30 * GIB)]
    wins = Counter(winner(f"model-{k}", nodes) for k in range(n))
    assert wins["src"] == 0
    assert abs(wins["a"] / n - 0.25) < 0.04, wins
