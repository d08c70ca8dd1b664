"""The pure routing decision: tables for each rule, hypothesis for the invariants."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshllm.election.placement import rendezvous_hash
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
    plan = plan_route("m", {"m": targets})
    assert plan.model_used == "m"
    assert nodes(plan) == expected


def test_plan_route_only_the_requested_models_replicas() -> None:
    table = {"m": [t("a")], "other": [t("b", "other"), t("c", "other")]}
    plan = plan_route("m", table)
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
    plan = plan_route(model, table)
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
    assert plan_route(model, table) == RoutePlan(used, ())


def test_plan_route_without_fallback_a_cold_model_gets_no_attempts() -> None:
    table = {"warm": [t("a", "warm")]}
    assert plan_route("cold", table, fallback=False) == RoutePlan("cold", ())
    # fallback=False changes nothing for a served model
    assert nodes(plan_route("warm", table, fallback=False)) == ["a"]


def test_equal_replicas_are_tried_in_rendezvous_order_the_same_everywhere() -> None:
    # Idle ties go to one replica (the others cool off); the order is the placement hash's,
    # so every node, given its replicas in any order, picks the same one.
    names = [f"n{i}" for i in range(8)]
    expected = sorted(names, key=lambda n: -rendezvous_hash("m", n))
    for shift in range(len(names)):
        table = {"m": [t(n) for n in names[shift:] + names[:shift]]}
        assert nodes(plan_route("m", table)) == expected
    # other models spread over other replicas
    firsts = {plan_route(m, {m: [t(n, m) for n in names]}).attempts[0].node_id
              for m in (f"model-{i}" for i in range(40))}  # fmt: skip
    assert len(firsts) > 4


def test_a_busy_replica_sends_the_next_request_to_an_idle_one() -> None:
    names = ["a", "b", "c"]
    first = plan_route("m", {"m": [t(n) for n in names]}).attempts[0].node_id
    busy = {"m": [t(n, load=1 if n == first else 0) for n in names]}
    assert plan_route("m", busy).attempts[0].node_id != first


def test_fallback_model_table() -> None:
    assert fallback_model({}) is None
    assert fallback_model({"a": []}) is None
    assert fallback_model({"b": [t("1", "b")], "a": [t("2", "a")]}) == "a"
    assert fallback_model({"b": [t("1", "b"), t("2", "b")], "a": [t("3", "a")]}) == "b"


def test_order_targets_empty() -> None:
    assert order_targets([]) == ()


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


@given(_targets, st.sampled_from(["m1", "m2", "m3", "unknown", None]))
def test_plan_route_invariants(targets: list[Target], model: str | None) -> None:
    table = _table(targets)
    plan = plan_route(model, table)
    if not targets:
        assert plan.attempts == ()
        return
    # the plan is every replica of one model, each once
    assert sorted(plan.attempts, key=repr) == sorted(table[plan.model_used], key=repr)
    # a served model is always honoured; otherwise the fallback never depends on the seed
    if model in table:
        assert plan.model_used == model
    else:
        assert plan.model_used == plan_route(model, dict(reversed(table.items()))).model_used
        assert len(table[plan.model_used]) == max(len(v) for v in table.values())
    # least load first, and local first among equal loads
    keys = [(a.load, not a.local) for a in plan.attempts]
    assert keys == sorted(keys)


@given(_targets)
def test_order_targets_is_a_permutation(targets: list[Target]) -> None:
    ordered = order_targets(targets)
    assert Counter(ordered) == Counter(targets)
