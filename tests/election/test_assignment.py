"""Tests of meshllm.election.assignment: memory fit, startup choice, auto-assignment."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshllm.election import (
    Assignment,
    AssignReason,
    StartupChoice,
    assign,
    choose_startup_model,
    estimate_model_memory,
    fits,
    why_unassigned,
)
from meshllm.gossip.announcement import ModelState, PeerAnnouncement, Role

MIB = 1 << 20
GIB = 1 << 30
READY = ModelState.READY


def ann(
    node_id: str,
    *,
    memory: int = 16 * GIB,
    serving: dict[str, str] | None = None,
    disk: dict[str, int] | None = None,
    requested: list[str] | None = None,
    role: Role = Role.WORKER,
    load: int = 0,
    kind: str = "ram",
) -> PeerAnnouncement:
    return PeerAnnouncement(
        node_id=node_id,
        mesh_id="mesh",
        role=role,
        serving=serving or {},
        available_models=disk or {},
        requested_models=requested or [],
        memory_bytes=memory,
        memory_kind=kind,
        load=load,
    )


# --- memory fit --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_bytes", "expected"),
    [
        (0, 512 * MIB),
        (1 * GIB, 1 * GIB + 1 * GIB // 5 + 512 * MIB),
        (253_000_000, 253_000_000 + 50_600_000 + 512 * MIB),  # Gemma 3 270M Q4_K_M
        (5 * GIB, 6 * GIB + 512 * MIB),
    ],
)
def test_estimate_model_memory_table(file_bytes, expected):
    assert estimate_model_memory(file_bytes) == expected


def test_estimate_model_memory_negative_raises():
    with pytest.raises(ValueError):
        estimate_model_memory(-1)


@given(st.integers(0, 1 << 42), st.integers(0, 1 << 42))
def test_estimate_model_memory_monotonic_and_above_file(a, b):
    assert estimate_model_memory(a) > a
    if a <= b:
        assert estimate_model_memory(a) <= estimate_model_memory(b)


@pytest.mark.parametrize(
    ("model_bytes", "capacity", "expected"),
    [
        (1 * GIB, estimate_model_memory(1 * GIB), True),  # exactly enough
        (1 * GIB, estimate_model_memory(1 * GIB) - 1, False),  # one byte short
        (1 * GIB, 1 * GIB, False),  # the file alone is not enough
        (1 * GIB, 64 * GIB, True),
        (0, 0, False),  # even an empty model needs its buffers
        (253_000_000, 1 * GIB, True),  # default model on a 1 GiB node
        (-1, 64 * GIB, False),  # not a size
    ],
)
def test_fits_table(model_bytes, capacity, expected):
    assert fits(model_bytes, capacity) is expected


# --- startup choice ----------------------------------------------------------------------

BIG = 20 * GIB  # does not fit a 16 GiB node
SMALL = 1 * GIB


@pytest.mark.parametrize(
    ("requested", "local", "capacity", "expected"),
    [
        pytest.param([], {}, 16 * GIB, StartupChoice(None, ()), id="no-flags"),
        pytest.param(["a"], {"a": SMALL}, 16 * GIB, StartupChoice("a", ()), id="one-on-disk"),
        pytest.param(
            ["a", "b", "c"],
            {"a": SMALL, "b": SMALL},
            16 * GIB,
            StartupChoice("a", ("b", "c")),
            id="first-wins-rest-requested",
        ),
        pytest.param(
            ["x", "b"],
            {"b": SMALL},
            16 * GIB,
            StartupChoice("b", ("x",)),
            id="not-on-disk-skipped",
        ),
        pytest.param(
            ["big", "b"],
            {"big": BIG, "b": SMALL},
            16 * GIB,
            StartupChoice("b", ("big",)),
            id="too-big-skipped",
        ),
        pytest.param(
            ["big", "x"],
            {"big": BIG},
            16 * GIB,
            StartupChoice(None, ("big", "x")),
            id="nothing-servable",
        ),
        pytest.param(
            ["a", "b", "a", "b"],
            {"a": SMALL},
            16 * GIB,
            StartupChoice("a", ("b",)),
            id="duplicates-dropped",
        ),
        pytest.param(
            ["a"], {"a": SMALL}, 0, StartupChoice(None, ("a",)), id="zero-capacity-serves-none"
        ),
        pytest.param(
            ["a", "b"],
            {"a": SMALL, "b": SMALL, "c": SMALL},
            16 * GIB,
            StartupChoice("a", ("b",)),
            id="unrequested-disk-models-not-requested",
        ),
    ],
)
def test_choose_startup_model_table(requested, local, capacity, expected):
    assert choose_startup_model(requested, local, capacity) == expected


# --- auto-assignment: priorities -----------------------------------------------------------

PRIORITY_CASES = [
    pytest.param(
        ann("me", disk={"a": SMALL, "b": SMALL}),
        [ann("p1", serving={"a": READY}, disk={"a": SMALL, "c": SMALL})],
        Assignment("b", AssignReason.UNSERVED_LOCAL, False, ()),
        id="p1-unserved-local-beats-unserved-fetch",
    ),
    pytest.param(
        ann("me", disk={"a": SMALL}),
        [ann("p1", serving={"a": READY}, disk={"a": SMALL, "c": SMALL})],
        Assignment("c", AssignReason.UNSERVED_FETCH, True, ("p1",)),
        id="p2-unserved-fetch-beats-served-local",
    ),
    pytest.param(
        ann("me", disk={"a": SMALL, "b": SMALL}),
        [
            ann("p1", serving={"a": READY}, disk={"a": SMALL, "b": SMALL}),
            ann("p2", serving={"a": READY, "b": READY}, disk={"b": SMALL}),
            ann("p3", serving={"b": READY}, disk={"c": SMALL}),
            ann("p4", serving={"c": READY}),
        ],
        Assignment("a", AssignReason.LEAST_SERVED_LOCAL, False, ("p1",)),
        id="p3-least-served-local",
    ),
    pytest.param(
        ann("me", disk={"a": SMALL}),
        [
            ann("p1", serving={"a": READY}, disk={"a": SMALL}),
            ann("p2", serving={"a": READY}, disk={"c": SMALL}),
            ann("p3", serving={"c": READY}),
        ],
        Assignment("a", AssignReason.LEAST_SERVED_LOCAL, False, ("p1",)),
        id="p3-local-beats-less-served-fetch",
    ),
    pytest.param(
        ann("me"),
        [
            ann("p1", serving={"a": READY}, disk={"a": SMALL, "c": SMALL}),
            ann("p2", serving={"a": READY}, disk={"c": SMALL}),
            ann("p3", serving={"c": READY}),
            ann("p4", serving={"a": READY}),
        ],
        Assignment("c", AssignReason.LEAST_SERVED_FETCH, True, ("p1", "p2")),
        id="p4-least-served-fetch",
    ),
    pytest.param(ann("me"), [], None, id="empty-mesh"),
    pytest.param(
        ann("me"),
        [ann("p1", requested=["ghost"]), ann("p2", serving={"ghost": READY})],
        None,
        id="requested-nowhere-on-disk-unfetchable",
    ),
    pytest.param(
        ann("me", requested=["x"]),
        [ann("p1", requested=["y"], disk={"y": SMALL})],
        Assignment("y", AssignReason.UNSERVED_FETCH, True, ("p1",)),
        id="requested-with-source-fetchable",
    ),
]


@pytest.mark.parametrize(("me", "peers", "expected"), PRIORITY_CASES)
def test_assign_priorities(me, peers, expected):
    assert assign(me, peers) == expected


# --- auto-assignment: ties -------------------------------------------------------------------

TIE_CASES = [
    pytest.param(
        ann("me", disk={"big": 4 * GIB, "small": SMALL}),
        [],
        "big",
        id="larger-first",
    ),
    pytest.param(
        ann("me", disk={"big": 4 * GIB, "small": SMALL}),
        [ann("p1", requested=["small"])],
        "small",
        id="requested-beats-larger",
    ),
    pytest.param(
        ann("me", disk={"big": 4 * GIB, "small": SMALL}),
        [ann("c1", role=Role.CLIENT, requested=["small"])],
        "small",
        id="client-request-counts",
    ),
    pytest.param(
        ann("me", disk={"big": 4 * GIB, "small": SMALL}, requested=["small"]),
        [],
        "small",
        id="own-request-counts",
    ),
    pytest.param(
        ann("me", disk={"b": SMALL, "a": SMALL, "c": SMALL}),
        [],
        "a",
        id="name-last",
    ),
    pytest.param(
        ann("me", disk={"req": SMALL, "other": SMALL}),
        [
            ann("p1", serving={"req": READY, "other": READY}, requested=["req"]),
            ann("p2", serving={"req": READY}),
        ],
        "other",
        id="fewer-servers-beats-requested",
    ),
    pytest.param(
        ann("me", disk={"big": 4 * GIB, "small": SMALL}),
        [
            ann("p1", serving={"big": READY, "small": READY}),
            ann("p2", serving={"big": READY, "small": READY}),
        ],
        "big",
        id="equal-servers-larger-first",
    ),
    pytest.param(
        ann("me"),
        [ann("p1", disk={"x": SMALL, "y": 4 * GIB}), ann("p2", requested=["x"])],
        "x",
        id="fetch-requested-beats-larger",
    ),
]


@pytest.mark.parametrize(("me", "peers", "model"), TIE_CASES)
def test_assign_ties(me, peers, model):
    result = assign(me, peers)
    assert result is not None
    assert result.model == model


# --- auto-assignment: memory fit -------------------------------------------------------------


def test_assign_skips_local_model_too_big():
    me = ann("me", memory=4 * GIB, disk={"huge": 30 * GIB, "tiny": SMALL})
    assert assign(me, []) == Assignment("tiny", AssignReason.UNSERVED_LOCAL, False, ())


def test_assign_too_big_unserved_falls_to_served_that_fits():
    me = ann("me", memory=4 * GIB, disk={"tiny": SMALL})
    peers = [ann("p1", serving={"tiny": READY}, disk={"huge": 30 * GIB})]
    assert assign(me, peers) == Assignment("tiny", AssignReason.LEAST_SERVED_LOCAL, False, ())


def test_assign_nothing_fits_returns_none():
    me = ann("me", memory=2 * GIB, disk={"a": 8 * GIB})
    assert assign(me, [ann("p1", disk={"b": 8 * GIB})]) is None


def test_assign_zero_capacity_returns_none():
    me = ann("me", memory=0, disk={"a": 1})
    assert assign(me, []) is None


def test_assign_fit_boundary_exact():
    me = ann("me", memory=estimate_model_memory(SMALL), disk={"a": SMALL})
    assert assign(me, []) is not None
    me = ann("me", memory=estimate_model_memory(SMALL) - 1, disk={"a": SMALL})
    assert assign(me, []) is None


def test_assign_cpu_only_node_fits_models_in_ram():
    # A CPU-only node announces its usable RAM as memory for models: it gets models too.
    me = replace(ann("me", memory=4 * GIB, disk={"tiny": SMALL}), memory_kind="ram")
    assert assign(me, []) == Assignment("tiny", AssignReason.UNSERVED_LOCAL, False, ())


def test_assign_fetch_size_disagreement_uses_largest():
    # Two peers claim different sizes for "a": plan for the larger, which does not fit.
    me = ann("me", memory=4 * GIB)
    peers = [ann("p1", disk={"a": SMALL}), ann("p2", disk={"a": 30 * GIB})]
    assert assign(me, peers) is None


def test_assign_local_size_wins_over_peer_claims():
    me = ann("me", memory=4 * GIB, disk={"a": SMALL})
    peers = [ann("p1", disk={"a": 30 * GIB})]
    assert assign(me, peers) == Assignment("a", AssignReason.UNSERVED_LOCAL, False, ("p1",))


@pytest.mark.parametrize("bad_size", [0, -5])
def test_assign_ignores_non_positive_sizes(bad_size):
    me = ann("me", disk={"local-bad": bad_size})
    peers = [ann("p1", disk={"a": bad_size})]
    assert assign(me, peers) is None


# --- auto-assignment: clients, failed states, sources ----------------------------------------


def test_assign_client_gets_nothing():
    me = ann("me", role=Role.CLIENT, disk={"a": SMALL})
    assert assign(me, [ann("p1", disk={"b": SMALL})]) is None


def test_assign_client_serving_does_not_count():
    me = ann("me", disk={"a": SMALL, "b": SMALL})
    peers = [
        ann("c1", role=Role.CLIENT, serving={"a": READY}),
        ann("p1", serving={"b": READY}),
    ]
    assert assign(me, peers) == Assignment("a", AssignReason.UNSERVED_LOCAL, False, ())


def test_assign_client_disk_is_no_source():
    me = ann("me")
    peers = [ann("c1", role=Role.CLIENT, disk={"a": SMALL})]
    assert assign(me, peers) is None


def test_assign_failed_counts_as_unserved():
    me = ann("me", disk={"a": SMALL, "b": 4 * GIB})
    peers = [ann("p1", serving={"a": ModelState.FAILED, "b": READY})]
    assert assign(me, peers) == Assignment("a", AssignReason.UNSERVED_LOCAL, False, ())


@pytest.mark.parametrize("state", [ModelState.FETCHING, ModelState.STARTING, ModelState.READY])
def test_assign_claimed_states_count_as_served(state):
    me = ann("me", disk={"a": 4 * GIB, "b": SMALL})
    peers = [ann("p1", serving={"a": state})]
    assert assign(me, peers) == Assignment("b", AssignReason.UNSERVED_LOCAL, False, ())


def test_assign_failed_peers_count_in_least_served():
    me = ann("me", disk={"a": SMALL, "b": SMALL})
    peers = [
        ann("p1", serving={"a": READY, "b": READY}),
        ann("p2", serving={"a": READY, "b": ModelState.FAILED}),
    ]
    assert assign(me, peers) == Assignment("b", AssignReason.LEAST_SERVED_LOCAL, False, ())


def test_assign_sources_least_loaded_then_node_id():
    me = ann("me")
    peers = [
        ann("p3", disk={"a": SMALL}, load=0),
        ann("p1", disk={"a": SMALL}, load=5),
        ann("p2", disk={"a": SMALL}, load=0),
        ann("p0", disk={"b": SMALL}),
        ann("c0", disk={"a": SMALL}, role=Role.CLIENT),
    ]
    result = assign(me, peers)
    assert result is not None
    assert result.model == "a"
    assert result.sources == ("p2", "p3", "p1")


def test_assign_ignores_own_announcement_among_peers():
    me = ann("me", disk={"a": SMALL, "b": SMALL})
    stale_me = ann("me", serving={"a": READY}, disk={"a": SMALL})
    assert assign(me, [stale_me]) == Assignment("a", AssignReason.UNSERVED_LOCAL, False, ())


def test_assign_ignores_own_serving():
    # A node's own serving never makes a model look served: only peers count.
    me = ann("me", serving={"a": READY}, disk={"a": 4 * GIB, "b": SMALL})
    assert assign(me, []) == Assignment("a", AssignReason.UNSERVED_LOCAL, False, ())


def test_assign_host_role_me_still_assigned():
    me = ann("me", role=Role.HOST, disk={"a": SMALL})
    assert assign(me, []) is not None


def test_assign_every_permutation_same_result():
    me = ann("me", disk={"a": SMALL})
    peers = [
        ann("p1", serving={"a": READY}, disk={"b": SMALL, "c": SMALL}, load=2),
        ann("p2", serving={"b": READY}, disk={"c": SMALL}, load=1),
        ann("p3", serving={"a": READY}, disk={"c": SMALL}, load=1),
        ann("p4", serving={"c": READY, "b": READY}, requested=["b"]),
    ]
    expected = assign(me, peers)
    assert expected == Assignment("a", AssignReason.LEAST_SERVED_LOCAL, False, ())
    for perm in itertools.permutations(peers):
        assert assign(me, perm) == expected


def test_assign_accepts_generator():
    me = ann("me")
    result = assign(me, (p for p in [ann("p1", disk={"a": SMALL})]))
    assert result == Assignment("a", AssignReason.UNSERVED_FETCH, True, ("p1",))


# --- properties ------------------------------------------------------------------------------

MODELS = ["m0", "m1", "m2", "m3"]
SIZES = [0, 200 * MIB, SMALL, 3 * GIB, 7 * GIB, 30 * GIB]
CAPACITIES = [0, 1 * GIB, 4 * GIB, 8 * GIB, 40 * GIB]


def nodes(node_id: st.SearchStrategy[str], roles: list[Role]) -> st.SearchStrategy:
    return st.builds(
        ann,
        node_id,
        memory=st.sampled_from(CAPACITIES),
        serving=st.dictionaries(st.sampled_from(MODELS), st.sampled_from(list(ModelState))),
        disk=st.dictionaries(st.sampled_from(MODELS), st.sampled_from(SIZES)),
        requested=st.lists(st.sampled_from(MODELS), max_size=2),
        role=st.sampled_from(roles),
        load=st.integers(0, 3),
    )


@st.composite
def scenarios(draw):
    me = draw(nodes(st.just("me"), [Role.WORKER, Role.HOST]))
    ids = draw(st.lists(st.sampled_from("abcdefg"), unique=True, max_size=6))
    peers = [draw(nodes(st.just(i), list(Role))) for i in ids]
    return me, peers


def served_by(peers, model):
    return sum(
        1 for p in peers if p.role != Role.CLIENT and p.serving.get(model, "failed") != "failed"
    )


@given(scenarios())
def test_assign_never_picks_what_does_not_fit(scenario):
    me, peers = scenario
    result = assign(me, peers)
    if result is None:
        return
    if result.needs_fetch:
        sizes = [p.available_models[result.model] for p in peers if p.node_id in result.sources]
        assert fits(max(sizes), me.memory_bytes)
    else:
        assert fits(me.available_models[result.model], me.memory_bytes)


@given(scenarios())
def test_assign_result_can_be_had(scenario):
    me, peers = scenario
    result = assign(me, peers)
    if result is None:
        return
    # A copy on my disk counts only with a known size: a 0-byte entry is no model.
    assert result.needs_fetch == (me.available_models.get(result.model, 0) <= 0)
    if result.needs_fetch:
        assert result.sources
    by_id = {p.node_id: p for p in peers}
    for source in result.sources:
        assert by_id[source].role != Role.CLIENT
        assert by_id[source].available_models[result.model] > 0


@given(scenarios())
def test_assign_priority_one_when_available(scenario):
    me, peers = scenario
    unserved_local = [
        m
        for m, size in me.available_models.items()
        if size > 0 and fits(size, me.memory_bytes) and served_by(peers, m) == 0
    ]
    result = assign(me, peers)
    if unserved_local:
        assert result is not None
        assert result.reason == AssignReason.UNSERVED_LOCAL
        assert result.model in unserved_local
    elif result is not None:
        assert result.reason != AssignReason.UNSERVED_LOCAL


@given(scenarios())
def test_assign_reason_matches_served_count(scenario):
    me, peers = scenario
    result = assign(me, peers)
    if result is None:
        return
    unserved = served_by(peers, result.model) == 0
    assert unserved == (result.reason in (AssignReason.UNSERVED_LOCAL, AssignReason.UNSERVED_FETCH))


@given(scenarios(), st.randoms(use_true_random=False))
def test_assign_independent_of_peer_order(scenario, rnd):
    me, peers = scenario
    shuffled = list(peers)
    rnd.shuffle(shuffled)
    assert assign(me, shuffled) == assign(me, peers)


# --- why nothing is assigned --------------------------------------------------------------


@pytest.mark.parametrize(
    ("me", "peers", "expected"),
    [
        (ann("me"), [], "the mesh has no models yet (start a node with --model NAME)"),
        (ann("me"), [ann("p", requested=["ghost"])], "no node has a copy of ghost"),
        (
            ann("me", memory=1 * GIB),
            [ann("p", disk={"big": 4 * GIB, "huge": 9 * GIB})],
            "no model fits this node's 1.0 GiB of RAM for models "
            "(the smallest, big, needs 5.3 GiB)",
        ),
        (
            ann("me", memory=2 * GIB, kind="vram"),
            [ann("p", disk={"big": 4 * GIB}, requested=["ghost"])],
            "no node has a copy of ghost; no model fits this node's 2.0 GiB of VRAM for models "
            "(the smallest, big, needs 5.3 GiB)",
        ),
        (ann("me", role=Role.CLIENT), [ann("p", disk={"m": GIB})], "a lite client serves nothing"),
        # A client's disk is no source, as for assign().
        (
            ann("me"),
            [ann("c", role=Role.CLIENT, disk={"m": GIB})],
            "the mesh has no models yet (start a node with --model NAME)",
        ),
    ],
)
def test_why_unassigned_table(me, peers, expected):
    assert assign(me, peers) is None
    assert why_unassigned(me, peers) == expected


def test_the_loaded_memory_estimate_reads_the_kv_cache_from_the_header() -> None:
    from meshllm.election import estimate_loaded_memory, estimate_model_memory
    from meshllm.election.assignment import COMPUTE_ALLOWANCE_BYTES

    # Gemma 3 270M: 18 layers x 1 KV head x (256 + 256) x 2 B = 18432 B a token.
    assert estimate_loaded_memory(253_113_024, 18432, 8192) == (
        253_113_024 + 18432 * 8192 + COMPUTE_ALLOWANCE_BYTES
    )
    assert estimate_loaded_memory(10**9, None, 8192) == estimate_model_memory(10**9)
    with pytest.raises(ValueError):
        estimate_loaded_memory(1, -1, 10)
