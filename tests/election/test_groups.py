"""Tests of meshllm.election.groups: election groups and host choice."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshllm.election import ElectionGroup, elect
from meshllm.gossip.announcement import ModelState, PeerAnnouncement, Role

GIB = 1 << 30


def ann(
    node_id: str,
    memory: int = 8 * GIB,
    serving: dict[str, str] | None = None,
    role: Role = Role.HOST,
) -> PeerAnnouncement:
    return PeerAnnouncement(
        node_id=node_id, mesh_id="mesh", role=role, serving=serving or {}, memory_bytes=memory
    )


READY = ModelState.READY

CASES = [
    pytest.param([], {}, id="empty"),
    pytest.param([ann("a")], {}, id="serving-nothing"),
    pytest.param(
        [ann("a", serving={"m": READY})],
        {"m": ElectionGroup("m", "a", ("a",))},
        id="single-node",
    ),
    pytest.param(
        [ann("a", 4 * GIB, {"m": READY}), ann("b", 16 * GIB, {"m": READY})],
        {"m": ElectionGroup("m", "b", ("b", "a"))},
        id="most-memory-hosts",
    ),
    pytest.param(
        [ann("c", 8 * GIB, {"m": READY}), ann("b", 8 * GIB, {"m": READY})],
        {"m": ElectionGroup("m", "b", ("b", "c"))},
        id="memory-tie-lowest-id",
    ),
    pytest.param(
        [ann("n9", 8 * GIB, {"m": READY}), ann("n10", 8 * GIB, {"m": READY})],
        {"m": ElectionGroup("m", "n10", ("n10", "n9"))},
        id="memory-tie-is-string-order",
    ),
    pytest.param(
        [ann("a", 4 * GIB, {"m": READY}), ann("b", 16 * GIB, {"m": ModelState.FAILED})],
        {"m": ElectionGroup("m", "a", ("a",))},
        id="failed-not-member",
    ),
    pytest.param(
        [ann("a", serving={"m": ModelState.FAILED})],
        {},
        id="only-failed-no-group",
    ),
    pytest.param(
        [
            ann("a", 1 * GIB, {"m": ModelState.FETCHING}),
            ann("b", 2 * GIB, {"m": ModelState.STARTING}),
        ],
        {"m": ElectionGroup("m", "b", ("b", "a"))},
        id="fetching-and-starting-are-members",
    ),
    pytest.param(
        [ann("a", 4 * GIB, {"m": READY}), ann("z", 64 * GIB, {"m": READY}, role=Role.CLIENT)],
        {"m": ElectionGroup("m", "a", ("a",))},
        id="client-never-member",
    ),
    pytest.param(
        [ann("a", 4 * GIB, {"m": READY}), ann("b", 2 * GIB, {"m": READY}, role=Role.WORKER)],
        {"m": ElectionGroup("m", "a", ("a", "b"))},
        id="worker-is-member",
    ),
    pytest.param(
        [
            ann("a", 16 * GIB, {"x": READY, "y": READY}),
            ann("b", 32 * GIB, {"y": READY}),
            ann("c", 8 * GIB, {"x": READY}),
        ],
        {
            "x": ElectionGroup("x", "a", ("a", "c")),
            "y": ElectionGroup("y", "b", ("b", "a")),
        },
        id="groups-independent",
    ),
]


@pytest.mark.parametrize(("announcements", "expected"), CASES)
def test_elect_table(announcements, expected):
    assert elect(announcements) == expected


def test_elect_keys_sorted_by_model():
    groups = elect([ann("a", serving={"zeta": READY, "alpha": READY, "mu": READY})])
    assert list(groups) == ["alpha", "mu", "zeta"]


def test_elect_every_permutation_same_result():
    nodes = [
        ann("a", 8 * GIB, {"m": READY, "n": READY}),
        ann("b", 8 * GIB, {"m": READY}),
        ann("c", 16 * GIB, {"n": READY, "m": ModelState.FAILED}),
        ann("d", 99 * GIB, {"m": READY}, role=Role.CLIENT),
    ]
    expected = {
        "m": ElectionGroup("m", "a", ("a", "b")),
        "n": ElectionGroup("n", "c", ("c", "a")),
    }
    for perm in itertools.permutations(nodes):
        assert elect(perm) == expected


def test_elect_accepts_generator():
    groups = elect(a for a in [ann("a", serving={"m": READY})])
    assert groups["m"].host == "a"


def test_elect_recomputes_when_host_leaves():
    nodes = [ann("a", 4 * GIB, {"m": READY}), ann("b", 16 * GIB, {"m": READY})]
    assert elect(nodes)["m"].host == "b"
    assert elect(nodes[:1])["m"] == ElectionGroup("m", "a", ("a",))


# --- properties ------------------------------------------------------------------------

MODELS = ["m0", "m1", "m2"]
STATES = list(ModelState)


@st.composite
def meshes(draw) -> list[PeerAnnouncement]:
    ids = draw(st.lists(st.text("abcdefghij", min_size=1, max_size=3), unique=True, max_size=8))
    return [
        ann(
            node_id,
            memory=draw(st.sampled_from([0, 4 * GIB, 8 * GIB, 16 * GIB])),
            serving=draw(st.dictionaries(st.sampled_from(MODELS), st.sampled_from(STATES))),
            role=draw(st.sampled_from(list(Role))),
        )
        for node_id in ids
    ]


@given(meshes(), st.randoms(use_true_random=False))
def test_elect_independent_of_input_order(nodes, rnd):
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert elect(shuffled) == elect(nodes)


@given(meshes())
def test_elect_groups_match_definition(nodes):
    groups = elect(nodes)
    by_id = {n.node_id: n for n in nodes}
    for model in MODELS:
        expected_members = {
            n.node_id
            for n in nodes
            if n.role != Role.CLIENT and n.serving.get(model, ModelState.FAILED) != "failed"
        }
        if not expected_members:
            assert model not in groups
            continue
        group = groups[model]
        assert set(group.members) == expected_members
        assert len(group.members) == len(expected_members)
        assert group.host == group.members[0]
        best = max(by_id[m].memory_bytes for m in expected_members)
        assert group.host == min(m for m in expected_members if by_id[m].memory_bytes == best)
