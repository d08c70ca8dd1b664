"""The pure routing decision: tables for each rule, hypothesis for the invariants."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshllm.proxy import RoutePlan, Target, fallback_model, order_targets, plan_route


def t(node: str, model: str = "m", load: int = 0, local: bool = False) -> Target:
    return Target(node_id=node, model=model, local=local, load=load)


def nodes(plan: RoutePlan) -> list[str]:
    return [a.node_id for a in plan.attempts]


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ([t("a", load=3), t("b", load=1), t("c", load=2)], ["b", "c", "a"]),
        ([t("a", load=0), t("b", load=0, local=True)], ["b", "a"]),  # local wins a tie
        ([t("a", load=0), t("b", load=1, local=True)], ["a", "b"]),  # but not against less load
        ([t("a", load=5, local=True)], ["a"]),
        ([t("x", load=2), t("y", load=2, local=True), t("z", load=1)], ["z", "y", "x"]),
    ],
)
def test_plan_route_known_model_orders_by_load_then_local(
    targets: list[Target], expected: list[str]
) -> None:
    plan = plan_route("m", {"m": targets}, random.Random(0))
    assert plan.model_used == "m"
    assert nodes(plan) == expected


def test_plan_route_only_the_requested_models_replicas() -> None:
    table = {"m": [t("a")], "other": [t("b", "other"), t("c", "other")]}
    plan = plan_route("m", table, random.Random(1))
    assert plan == RoutePlan("m", (t("a"),))


@pytest.mark.parametrize(
    ("model", "table", "used", "expected"),
    [
        # unknown → the model with the most replicas
        ("nope", {"m1": [t("a", "m1")], "m2": [t("b", "m2"), t("c", "m2")]}, "m2", {"b", "c"}),
        # missing → the same
        (None, {"m1": [t("a", "m1")], "m2": [t("b", "m2"), t("c", "m2")]}, "m2", {"b", "c"}),
        # equal replica counts → the lowest name
        (None, {"zeta": [t("a", "zeta")], "alpha": [t("b", "alpha")]}, "alpha", {"b"}),
        # a model with no ready replica is skipped
        ("nope", {"m1": [], "m2": [t("b", "m2")]}, "m2", {"b"}),
        # the requested model with an empty list is unknown as well
        ("m1", {"m1": [], "m2": [t("b", "m2")]}, "m2", {"b"}),
    ],
)
def test_plan_route_falls_back_to_the_first_available_model(
    model: str | None, table: dict[str, list[Target]], used: str, expected: set[str]
) -> None:
    plan = plan_route(model, table, random.Random(2))
    assert plan.model_used == used
    assert set(nodes(plan)) == expected


@pytest.mark.parametrize(
    ("model", "table", "used"),
    [
        ("m", {}, "m"),
        (None, {}, ""),
        (None, {"m": []}, ""),
        ("x", {"m": [], "n": []}, "x"),
    ],
)
def test_plan_route_nothing_served_gives_no_attempts(
    model: str | None, table: dict[str, list[Target]], used: str
) -> None:
    assert plan_route(model, table, random.Random(3)) == RoutePlan(used, ())


def test_plan_route_without_fallback_a_cold_model_gets_no_attempts() -> None:
    table = {"warm": [t("a", "warm")]}
    assert plan_route("cold", table, random.Random(4), fallback=False) == RoutePlan("cold", ())
    # fallback=False changes nothing for a served model
    assert nodes(plan_route("warm", table, random.Random(4), fallback=False)) == ["a"]


def test_plan_route_spreads_ties_between_equal_replicas() -> None:
    table = {"m": [t("a"), t("b"), t("c")]}
    rng = random.Random(5)
    firsts = Counter(plan_route("m", table, rng).attempts[0].node_id for _ in range(3000))
    assert set(firsts) == {"a", "b", "c"}
    assert min(firsts.values()) > 800


def test_plan_route_is_deterministic_for_a_seed() -> None:
    table = {"m": [t(str(i)) for i in range(10)]}
    assert plan_route("m", table, random.Random(6)) == plan_route("m", table, random.Random(6))


def test_fallback_model_table() -> None:
    assert fallback_model({}) is None
    assert fallback_model({"a": []}) is None
    assert fallback_model({"b": [t("1", "b")], "a": [t("2", "a")]}) == "a"
    assert fallback_model({"b": [t("1", "b"), t("2", "b")], "a": [t("3", "a")]}) == "b"


def test_order_targets_empty() -> None:
    assert order_targets([], random.Random(7)) == ()


_targets = st.lists(
    st.builds(
        Target,
        node_id=st.text("abcdef", min_size=1, max_size=3),
        model=st.sampled_from(["m1", "m2", "m3"]),
        local=st.booleans(),
        load=st.integers(0, 5),
    ),
    max_size=12,
)


def _table(targets: list[Target]) -> dict[str, list[Target]]:
    table: dict[str, list[Target]] = {}
    for target in targets:
        table.setdefault(target.model, []).append(target)
    return table


@given(_targets, st.sampled_from(["m1", "m2", "m3", "unknown", None]), st.integers(0, 2**32))
def test_plan_route_invariants(targets: list[Target], model: str | None, seed: int) -> None:
    table = _table(targets)
    plan = plan_route(model, table, random.Random(seed))
    if not targets:
        assert plan.attempts == ()
        return
    # the plan is every replica of one model, each once
    assert sorted(plan.attempts, key=repr) == sorted(table[plan.model_used], key=repr)
    # a served model is always honoured; otherwise the fallback never depends on the seed
    if model in table:
        assert plan.model_used == model
    else:
        assert plan.model_used == plan_route(model, table, random.Random(seed + 1)).model_used
        assert len(table[plan.model_used]) == max(len(v) for v in table.values())
    # least load first, and local first among equal loads
    keys = [(a.load, not a.local) for a in plan.attempts]
    assert keys == sorted(keys)


@given(_targets, st.integers(0, 2**32))
def test_order_targets_is_a_permutation(targets: list[Target], seed: int) -> None:
    ordered = order_targets(targets, random.Random(seed))
    assert Counter(ordered) == Counter(targets)
