"""The model pool's policy on a fake clock: TTLs, keep_alive, pins, the memory budget."""

from __future__ import annotations

import math

import pytest

from meshllm.gossip import ModelState
from meshllm.serving.durations import duration
from meshllm.serving.pool import (
    DEFAULT_IDLE_TTL,
    MAX_CAUSE_CHARS,
    LoadPlan,
    ModelPool,
    PoolSettings,
    PoolState,
    Refusal,
    Unload,
    announced_state,
)

GIB = 1 << 30


def make_pool(sizes: dict[str, int] | None = None, **settings: object) -> ModelPool:
    """A pool knowing ``sizes`` (name -> bytes; default one model "a" of 1 byte)."""
    pool = ModelPool(PoolSettings(**settings))  # type: ignore[arg-type]
    for name, size in (sizes or {"a": 1}).items():
        pool.add(name, size)
    return pool


def load(pool: ModelPool, model: str, now: float) -> None:
    """Load ``model`` as the node would: plan it, evict, start it, see it healthy."""
    plan = pool.begin_load(model, now)
    assert isinstance(plan, LoadPlan), plan
    for name in plan.evict:
        pool.unloaded(name)
    pool.loaded(model, now)


def serve(pool: ModelPool, model: str, start: float, end: float, keep_alive=None) -> None:
    """One request for ``model`` from ``start`` to ``end``."""
    pool.request_started(model, start, keep_alive)
    pool.request_finished(model, end)


def unloads(pool: ModelPool, now: float) -> list[str]:
    return [action.model for action in pool.tick(now)]


# durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2h45m30.5s", 2 * 3600 + 45 * 60 + 30.5),
        ("300ms", 0.3),
        ("1m30s500ms", 90.5),
        ("1us", 1e-6),
        ("1µs", 1e-6),  # micro sign
        ("1μs", 1e-6),  # Greek mu
        ("10ns", 1e-8),
        (".5m", 30.0),
        ("1.m", 60.0),
        ("+5m", 300.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("-0", 0.0),
        ("-0s", 0.0),
        (" 5m ", 300.0),
        ("300", 300.0),  # a plain number string: seconds (OLLAMA_KEEP_ALIVE)
        ("2.5", 2.5),
        (300, 300.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_duration_parses(value: str | float, seconds: float) -> None:
    result = duration(value)
    assert result == pytest.approx(seconds)
    assert math.copysign(1.0, result) == 1.0  # never a negative zero


@pytest.mark.parametrize(
    "value", [-1, -1.0, -0.001, "-1", "-5m", "-1h30m", float("-inf"), float("inf")]
)
def test_duration_negative_is_never(value: str | float) -> None:
    assert duration(value) is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "is not a duration"),
        ("   ", "is not a duration"),
        ("abc", "is not a duration"),
        ("m", "is not a duration"),
        (".s", "is not a duration"),
        ("5m3", "is not a duration"),  # a number without its unit
        ("1h-2m", "unknown unit 'h-'"),  # a sign only leads (Go says the same)
        ("--5m", "is not a duration"),
        ("1e3", "is not a duration"),
        ("nan", "is not a duration"),
        ("5x", "unknown unit 'x'"),
        ("1d", "unknown unit 'd'"),  # Go has no days
        ("1 h", "unknown unit ' h'"),
        (float("nan"), "is not a duration"),
        (True, "is not a duration"),
        (None, "is not a duration"),
        ([5], "is not a duration"),
    ],
)
def test_duration_rejects_garbage(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        duration(value, "keep_alive")  # type: ignore[arg-type]
    assert str(info.value).startswith("keep_alive ")


def test_duration_error_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r'"15m"') as info:
        duration("soon", "keep_alive")
    assert "'soon'" in str(info.value) and "negative value for never" in str(info.value)


# states and the idle TTL


def test_pool_new_model_is_cold() -> None:
    pool = make_pool()
    assert pool.state("a") == PoolState.COLD
    assert pool.models() == ["a"]
    assert pool.tick(1e9) == [] and pool.next_deadline() is None


def test_pool_idle_model_cools_from_its_load() -> None:
    pool = make_pool()
    load(pool, "a", 100.0)
    assert pool.state("a") == PoolState.COOLING
    assert pool.seconds_left("a", 100.0) == DEFAULT_IDLE_TTL
    assert pool.next_deadline() == 100.0 + DEFAULT_IDLE_TTL
    assert unloads(pool, 100.0 + DEFAULT_IDLE_TTL - 0.001) == []
    assert unloads(pool, 100.0 + DEFAULT_IDLE_TTL) == ["a"]
    assert pool.state("a") == PoolState.UNLOADING
    assert pool.tick(1e9) == []  # asked once
    pool.unloaded("a")
    assert pool.state("a") == PoolState.COLD


def test_pool_ttl_counts_from_the_last_request() -> None:
    pool = make_pool(idle_ttl=60.0)
    load(pool, "a", 0.0)
    serve(pool, "a", 10.0, 20.0)
    assert pool.seconds_left("a", 30.0) == 50.0
    assert unloads(pool, 79.0) == []
    serve(pool, "a", 79.0, 80.0)  # each request extends it
    assert unloads(pool, 139.0) == []
    assert unloads(pool, 140.0) == ["a"]


def test_pool_busy_model_never_unloads_and_counts_from_its_drain() -> None:
    pool = make_pool(idle_ttl=60.0)
    load(pool, "a", 0.0)
    pool.request_started("a", 1.0)
    pool.request_started("a", 2.0)
    assert pool.state("a") == PoolState.HOT
    assert pool.in_flight("a") == 2
    assert pool.seconds_left("a", 3.0) is None
    assert unloads(pool, 1e6) == []
    pool.request_finished("a", 1e6)
    assert unloads(pool, 1e6 + 3600) == []  # one still in flight
    pool.request_finished("a", 2e6)
    assert pool.state("a") == PoolState.COOLING
    assert unloads(pool, 2e6 + 59) == []
    assert unloads(pool, 2e6 + 60) == ["a"]


def test_pool_request_makes_a_cooling_model_hot() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    pool.request_started("a", 5.0)
    assert pool.state("a") == PoolState.HOT
    assert pool.next_deadline() is None


@pytest.mark.parametrize(
    ("keep_alive", "unload_after"),
    [
        (None, DEFAULT_IDLE_TTL),
        (0, 0.0),
        ("0", 0.0),
        ("0s", 0.0),
        (90, 90.0),
        ("90s", 90.0),
        ("1.5", 1.5),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        (-1, None),
        ("-1", None),
        ("-5m", None),
    ],
)
def test_pool_keep_alive_sets_the_ttl(
    keep_alive: str | float | None, unload_after: float | None
) -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    serve(pool, "a", 10.0, 20.0, keep_alive)
    assert pool.ttl("a") == unload_after
    if unload_after is None:
        assert pool.state("a") == PoolState.HOT
        assert unloads(pool, 1e12) == []
    else:
        if unload_after:
            assert unloads(pool, 20.0 + unload_after - 0.001) == []
        assert unloads(pool, 20.0 + unload_after) == ["a"]


def test_pool_keep_alive_zero_unloads_right_after_the_last_request() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    pool.request_started("a", 1.0, keep_alive=0)
    pool.request_started("a", 2.0)
    pool.request_finished("a", 3.0)
    assert unloads(pool, 3.0) == []  # the other one still streams: unload drains
    pool.request_finished("a", 4.0)
    [action] = pool.tick(4.0)
    assert action == Unload("a", "keep_alive 0: unloaded after its request")


def test_pool_keep_alive_sticks_until_another_sets_it() -> None:
    # Ollama's useLoadedRunner: a request without keep_alive keeps the last one.
    pool = make_pool()
    load(pool, "a", 0.0)
    serve(pool, "a", 1.0, 2.0, "1m")
    serve(pool, "a", 3.0, 4.0)
    assert pool.ttl("a") == 60.0
    serve(pool, "a", 5.0, 6.0, -1)
    serve(pool, "a", 7.0, 8.0)
    assert pool.ttl("a") is None
    assert unloads(pool, 1e9) == []


def test_pool_bad_keep_alive_raises_and_counts_nothing() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    with pytest.raises(ValueError, match="keep_alive 'later'"):
        pool.request_started("a", 1.0, keep_alive="later")
    assert pool.in_flight("a") == 0
    assert pool.ttl("a") == DEFAULT_IDLE_TTL


@pytest.mark.parametrize("idle_ttl", [0.0, -5.0, None])
def test_pool_idle_ttl_setting_zero_or_none_is_never(idle_ttl: float | None) -> None:
    # DESIGN.md §6: a TTL setting of 0 means never (unlike a request's keep_alive 0).
    pool = make_pool(idle_ttl=idle_ttl)
    load(pool, "a", 0.0)
    assert pool.ttl("a") is None
    assert pool.state("a") == PoolState.HOT
    assert unloads(pool, 1e12) == []


def test_pool_model_default_keep_alive_beats_the_setting() -> None:
    pool = ModelPool(PoolSettings(idle_ttl=60.0))
    pool.add("a", 1, keep_alive="2h")
    pool.add("b", 1, keep_alive=-1)
    pool.add("c", 1)
    assert (pool.ttl("a"), pool.ttl("b"), pool.ttl("c")) == (7200.0, None, 60.0)


def test_pool_tick_unloads_earliest_first() -> None:
    pool = make_pool({"a": 1, "b": 1, "c": 1}, idle_ttl=10.0)
    load(pool, "a", 3.0)
    load(pool, "b", 1.0)
    load(pool, "c", 2.0)
    assert unloads(pool, 100.0) == ["b", "c", "a"]


def test_pool_unload_reason_says_how_long_it_idled() -> None:
    pool = make_pool(idle_ttl=60.0)
    load(pool, "a", 0.0)
    serve(pool, "a", 1.0, 2.0)
    assert pool.tick(65.0) == [Unload("a", "idle for 63s (TTL 60s)")]


# pins


def test_pool_pinned_model_never_unloads() -> None:
    pool = make_pool(idle_ttl=1.0)
    pool.pin("a")
    load(pool, "a", 0.0)
    serve(pool, "a", 1.0, 2.0, keep_alive=0)
    assert pool.state("a") == PoolState.HOT
    assert pool.seconds_left("a", 3.0) is None
    assert unloads(pool, 1e12) == []


def test_pool_pin_stops_a_countdown_and_unpin_starts_one_now() -> None:
    pool = make_pool(idle_ttl=60.0)
    load(pool, "a", 0.0)
    pool.pin("a")
    assert pool.state("a") == PoolState.HOT
    assert unloads(pool, 1000.0) == []
    pool.unpin("a", 1000.0)
    assert pool.state("a") == PoolState.COOLING
    assert pool.seconds_left("a", 1000.0) == 60.0
    assert unloads(pool, 1059.0) == []
    assert unloads(pool, 1060.0) == ["a"]


def test_pool_pinned_via_add_and_wanted_when_cold() -> None:
    pool = ModelPool()
    pool.add("p", 1, pinned=True)
    pool.add("q", 1)
    assert pool.wanted() == ["p"]
    load(pool, "p", 0.0)
    assert pool.wanted() == []
    pool.unloaded("p")  # its server went away: load it again
    assert pool.wanted() == ["p"]


# extend_ttl


def test_pool_extend_ttl_holds_a_model_longer() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    serve(pool, "a", 1.0, 2.0, keep_alive=0)
    pool.extend_ttl("a", 30.0, 2.0)
    assert pool.state("a") == PoolState.COOLING
    assert pool.seconds_left("a", 2.0) == 30.0
    assert unloads(pool, 31.9) == []
    assert [a.reason for a in pool.tick(32.0)] == ["idle for 30s (TTL 0s)"]


def test_pool_extend_ttl_never_shortens_and_keeps_the_ttl() -> None:
    pool = make_pool(idle_ttl=60.0)
    load(pool, "a", 0.0)
    pool.extend_ttl("a", 5.0, 0.0)
    assert pool.seconds_left("a", 0.0) == 60.0
    assert pool.ttl("a") == 60.0


def test_pool_extend_ttl_on_a_busy_model_applies_after_its_drain() -> None:
    pool = make_pool(idle_ttl=10.0)
    load(pool, "a", 0.0)
    pool.request_started("a", 1.0)
    pool.extend_ttl("a", 100.0, 1.0)
    pool.request_finished("a", 5.0)
    assert unloads(pool, 100.9) == []
    assert unloads(pool, 101.0) == ["a"]


def test_pool_extend_ttl_holds_one_load_only() -> None:
    pool = make_pool(idle_ttl=10.0)
    load(pool, "a", 0.0)
    pool.extend_ttl("a", 1000.0, 0.0)
    pool.unloaded("a")  # evicted, say
    load(pool, "a", 20.0)
    assert pool.seconds_left("a", 20.0) == 10.0


@pytest.mark.parametrize("seconds", [-1.0, float("nan")])
def test_pool_extend_ttl_rejects_bad_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="extend_ttl"):
        make_pool().extend_ttl("a", seconds, 0.0)


# the budget: max_loaded, bytes, LRU eviction


def lru_pool(order: list[str], **settings: object) -> ModelPool:
    """Models a, b, c (4 bytes each) loaded (whatever the limits), then used in
    ``order``; d (4 bytes) cold."""
    pool = make_pool({"a": 4, "b": 4, "c": 4, "d": 4}, **settings)
    for name in "abc":
        pool.loaded(name, 0.0)
    for t, name in enumerate(order, start=1):
        serve(pool, name, float(t), float(t))
    return pool


@pytest.mark.parametrize(
    ("order", "settings", "evict"),
    [
        (["a", "b", "c"], {"max_loaded": 3}, ("a",)),
        (["c", "b", "a"], {"max_loaded": 3}, ("c",)),
        (["b", "a", "c"], {"max_loaded": 3}, ("b",)),
        (["a", "b", "c", "a"], {"max_loaded": 3}, ("b",)),
        (["a", "b", "c"], {"max_loaded": 2}, ("a", "b")),
        (["c", "a", "b"], {"max_loaded": 1}, ("c", "a", "b")),
        (["a", "b", "c"], {"max_loaded": 4}, ()),
        (["a", "b", "c"], {"memory_budget": 16}, ()),
        (["a", "b", "c"], {"memory_budget": 15}, ("a",)),
        (["b", "c", "a"], {"memory_budget": 12}, ("b",)),
        (["b", "c", "a"], {"memory_budget": 8}, ("b", "c")),
        (["a", "b", "c"], {"memory_budget": 16, "max_loaded": 3}, ("a",)),
        (["a", "b", "c"], {"max_loaded": 0, "memory_budget": 0}, ()),  # 0: no limit
    ],
)
def test_pool_plan_evicts_least_recently_used_first(
    order: list[str], settings: dict[str, int], evict: tuple[str, ...]
) -> None:
    pool = lru_pool(order, **settings)
    assert pool.plan_load("d", 10.0) == LoadPlan("d", 4, evict)


def test_pool_lru_ties_break_by_name() -> None:
    pool = lru_pool([], max_loaded=2)  # all three last used at 0
    assert pool.plan_load("d", 1.0) == LoadPlan("d", 4, ("a", "b"))


def test_pool_plan_changes_nothing() -> None:
    pool = lru_pool(["a"], max_loaded=1)
    before = pool.snapshot(5.0)
    pool.plan_load("d", 5.0)
    assert pool.snapshot(5.0) == before


def test_pool_begin_load_marks_evicted_unloading_and_the_model_warming() -> None:
    pool = lru_pool(["a", "b", "c"], max_loaded=2)
    plan = pool.begin_load("d", 10.0)
    assert plan == LoadPlan("d", 4, ("a", "b"))
    assert [pool.state(m) for m in "abcd"] == [
        PoolState.UNLOADING,
        PoolState.UNLOADING,
        PoolState.COOLING,
        PoolState.WARMING,
    ]
    assert unloads(pool, 1e9) == ["c"]  # the evicted ones are not asked twice


def test_pool_busy_model_is_never_evicted() -> None:
    pool = lru_pool(["a", "b", "c"], max_loaded=3)
    pool.request_started("a", 5.0)
    pool.request_started("b", 6.0)  # c is now the only idle one
    assert pool.plan_load("d", 7.0) == LoadPlan("d", 4, ("c",))
    pool.request_started("c", 8.0)
    refusal = pool.plan_load("d", 9.0)
    assert refusal == Refusal(
        "d", "d would be loaded model 4; max_loaded is 3 and busy/pinned models are 3 (a, b, c)"
    )


def test_pool_busy_model_used_long_ago_is_skipped_by_lru() -> None:
    pool = lru_pool([], max_loaded=3)
    pool.request_started("a", 1.0)  # a long request: a is the least recently used
    serve(pool, "b", 2.0, 3.0)
    serve(pool, "c", 4.0, 5.0)
    assert pool.plan_load("d", 1000.0) == LoadPlan("d", 4, ("b",))


def test_pool_pinned_model_is_never_evicted() -> None:
    pool = lru_pool(["a", "b", "c"], memory_budget=8)
    pool.pin("a")
    assert pool.plan_load("d", 10.0) == LoadPlan("d", 4, ("b", "c"))
    pool.pin("b")
    assert pool.plan_load("d", 10.0) == Refusal(
        "d", "d needs 4 bytes; the budget is 8 and busy/pinned models hold 8 (a, b)"
    )


def test_pool_keep_alive_never_model_may_be_evicted() -> None:
    # keep_alive < 0 is about the clock; only a pin keeps memory against other loads.
    pool = lru_pool([], max_loaded=3)
    serve(pool, "a", 1.0, 2.0, keep_alive=-1)
    serve(pool, "b", 3.0, 4.0)
    serve(pool, "c", 5.0, 6.0)
    assert pool.plan_load("d", 7.0) == LoadPlan("d", 4, ("a",))


def test_pool_warming_model_is_not_evicted() -> None:
    pool = make_pool({"a": 4, "b": 4}, max_loaded=1)
    assert pool.begin_load("a", 0.0) == LoadPlan("a", 4)
    assert pool.state("a") == PoolState.WARMING
    assert pool.plan_load("b", 1.0) == Refusal(
        "b", "b would be loaded model 2; max_loaded is 1 and busy/pinned models are 1 (a)"
    )


@pytest.mark.parametrize(
    ("sizes", "budget", "busy", "message"),
    [
        (
            {"a": 4, "b": 4, "c": 6},
            10,
            "ab",
            "c needs 6 bytes; the budget is 10 and busy/pinned models hold 8 (a, b)",
        ),
        (
            {"a": 4, "b": 3, "c": 7},
            10,
            "a",
            "c needs 7 bytes; the budget is 10 and busy/pinned models hold 4 (a)",
        ),
        (
            {"a": 4, "b": 4, "c": 11},
            10,
            "",
            "c needs 11 bytes; the budget is 10: it cannot load here",
        ),
    ],
)
def test_pool_refusal_messages(sizes: dict[str, int], budget: int, busy: str, message: str) -> None:
    pool = make_pool(sizes, memory_budget=budget)
    for t, name in enumerate(n for n in sizes if n != "c"):
        load(pool, name, float(t))
    for name in busy:
        pool.request_started(name, 5.0)
    assert pool.plan_load("c", 6.0) == Refusal("c", message)
    assert pool.begin_load("c", 6.0) == Refusal("c", message)
    assert pool.state("c") == PoolState.COLD


@pytest.mark.parametrize(
    ("budget", "evict"), [(10, ()), (8, ("c",)), (4, ("c", "b"))], ids=["free", "one", "two"]
)
def test_pool_byte_budget_evicts_only_what_it_must(budget: int, evict: tuple[str, ...]) -> None:
    pool = make_pool({"b": 4, "c": 2, "d": 4}, memory_budget=budget)
    pool.loaded("c", 0.0)  # least recently used
    pool.loaded("b", 1.0)
    assert pool.plan_load("d", 2.0) == LoadPlan("d", 4, evict)


def test_pool_unloading_models_free_room_without_eviction() -> None:
    pool = lru_pool(["a", "b", "c"], max_loaded=3)
    assert unloads(pool, 10_000.0) == ["a", "b", "c"]  # idle past their TTL
    assert pool.plan_load("d", 10_001.0) == LoadPlan("d", 4, (), ("a",))
    pool.unloaded("a")
    assert pool.plan_load("d", 10_002.0) == LoadPlan("d", 4)


def test_pool_unloading_counted_before_idle_ones() -> None:
    pool = lru_pool(["a", "b", "c"], max_loaded=2)
    serve(pool, "c", 4.0, 5.0, keep_alive=0)
    assert unloads(pool, 5.0) == ["c"]
    assert pool.plan_load("d", 6.0) == LoadPlan("d", 4, ("a",), ("c",))


def test_pool_plan_for_a_loaded_model_is_empty() -> None:
    pool = lru_pool(["a"], max_loaded=1)
    assert pool.plan_load("a", 5.0) == LoadPlan("a", 4)
    assert pool.begin_load("a", 5.0) == LoadPlan("a", 4)
    assert pool.state("a") == PoolState.COOLING


def test_pool_plan_refuses_fetching_and_unloading_models() -> None:
    pool = make_pool({"a": 1, "b": 1})
    pool.fetch_started("a")
    assert pool.state("a") == PoolState.FETCHING
    assert pool.plan_load("a", 0.0) == Refusal("a", "a is still being fetched from a peer")
    pool.fetched("a")
    assert pool.state("a") == PoolState.COLD
    load(pool, "b", 0.0)
    pool.tick(1e6)
    assert pool.plan_load("b", 1e6) == Refusal(
        "b", "b is unloading; load it again once it is unloaded"
    )


def test_pool_request_for_an_unloading_model_waits_for_a_new_load() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    pool.tick(1e6)
    pool.request_started("a", 1e6)
    assert pool.state("a") == PoolState.UNLOADING
    pool.unloaded("a")
    assert (pool.state("a"), pool.in_flight("a")) == (PoolState.COLD, 1)
    load(pool, "a", 1e6 + 1)
    assert pool.state("a") == PoolState.HOT


# failures, restarts


def test_pool_load_failed_frees_memory_and_keeps_its_cause() -> None:
    pool = make_pool({"a": 6, "b": 6}, memory_budget=10)
    assert isinstance(pool.begin_load("a", 0.0), LoadPlan)
    assert isinstance(pool.plan_load("b", 0.0), Refusal)  # a is warming: busy
    pool.load_failed("a", "exit code 1: out of memory", 1.0)
    assert pool.state("a") == PoolState.FAILED
    assert pool.plan_load("b", 1.0) == LoadPlan("b", 6)
    pool.unloaded("a")  # a late exit report does not hide the failure
    [status] = [m for m in pool.snapshot(2.0).models if m.name == "a"]
    assert (status.state, status.cause) == (PoolState.FAILED, "exit code 1: out of memory")


def test_pool_failed_model_can_be_loaded_again() -> None:
    pool = make_pool()
    pool.load_failed("a", "x" * (MAX_CAUSE_CHARS + 10), 0.0)
    assert len(pool.snapshot(0.0).models[0].cause or "") == MAX_CAUSE_CHARS
    assert pool.begin_load("a", 1.0) == LoadPlan("a", 1)
    assert pool.state("a") == PoolState.WARMING
    pool.loaded("a", 2.0)
    assert pool.snapshot(2.0).models[0].cause is None


def test_pool_restart_keeps_memory_and_is_busy() -> None:
    pool = make_pool({"a": 4, "b": 4}, max_loaded=1)
    load(pool, "a", 0.0)
    pool.restarting("a")
    assert pool.state("a") == PoolState.WARMING
    assert unloads(pool, 1e9) == []
    assert isinstance(pool.plan_load("b", 1.0), Refusal)
    pool.loaded("a", 2.0)
    assert pool.state("a") == PoolState.COOLING


def test_pool_restarting_a_cold_model_changes_nothing() -> None:
    pool = make_pool()
    pool.restarting("a")
    assert pool.state("a") == PoolState.COLD


# bookkeeping


def test_pool_finish_without_start_is_ignored() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    pool.request_finished("a", 50.0)
    assert pool.in_flight("a") == 0
    assert pool.seconds_left("a", 50.0) == DEFAULT_IDLE_TTL - 50.0


def test_pool_unknown_model_raises_key_error() -> None:
    pool = make_pool()
    with pytest.raises(KeyError, match="'zz' is not in this node's pool"):
        pool.request_started("zz", 0.0)
    with pytest.raises(KeyError):
        pool.plan_load("zz", 0.0)


def test_pool_add_again_updates_size_and_keeps_state() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    pool.add("a", 7, keep_alive="1m")
    assert pool.state("a") == PoolState.COOLING
    assert pool.snapshot(0.0).held_bytes == 7
    assert pool.ttl("a") == 60.0


def test_pool_rescan_keeps_the_ttl_a_request_set() -> None:
    pool = make_pool()
    serve(pool, "a", 0.0, 1.0, keep_alive="2m")
    pool.add("a", 1)
    assert pool.ttl("a") == 120.0


def test_pool_add_rejects_bad_values() -> None:
    pool = ModelPool()
    with pytest.raises(ValueError, match="negative"):
        pool.add("a", -1)
    with pytest.raises(ValueError, match="keep_alive 'often'"):
        pool.add("a", 1, keep_alive="often")


def test_pool_remove_only_when_it_holds_no_memory() -> None:
    pool = make_pool()
    load(pool, "a", 0.0)
    with pytest.raises(ValueError, match="a is cooling: unload it before removing it"):
        pool.remove("a")
    pool.tick(1e6)
    pool.unloaded("a")
    pool.remove("a")
    assert pool.models() == []


@pytest.mark.parametrize("settings", [{"max_loaded": -1}, {"memory_budget": -1}])
def test_pool_settings_reject_negative_limits(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="negative"):
        PoolSettings(**settings)


def test_pool_snapshot_for_api_status() -> None:
    pool = make_pool({"a": 4, "b": 2, "c": 8, "d": 1}, idle_ttl=60.0, memory_budget=100)
    load(pool, "a", 0.0)
    serve(pool, "a", 1.0, 10.0)
    load(pool, "b", 0.0)
    pool.request_started("b", 20.0)
    pool.pin("b")
    pool.load_failed("c", "signal 9", 5.0)
    snap = pool.snapshot(30.0)
    assert (snap.loaded, snap.held_bytes, snap.max_loaded, snap.memory_budget) == (2, 6, None, 100)
    assert snap.to_wire()["models"] == [
        {
            "name": "a",
            "state": "cooling",
            "size_bytes": 4,
            "in_flight": 0,
            "pinned": False,
            "ttl_s": 60.0,
            "seconds_left": 40.0,
            "idle_s": 20.0,
            "cause": None,
        },
        {
            "name": "b",
            "state": "hot",
            "size_bytes": 2,
            "in_flight": 1,
            "pinned": True,
            "ttl_s": 60.0,
            "seconds_left": None,
            "idle_s": None,
            "cause": None,
        },
        {
            "name": "c",
            "state": "failed",
            "size_bytes": 8,
            "in_flight": 0,
            "pinned": False,
            "ttl_s": 60.0,
            "seconds_left": None,
            "idle_s": None,
            "cause": "signal 9",
        },
        {
            "name": "d",
            "state": "cold",
            "size_bytes": 1,
            "in_flight": 0,
            "pinned": False,
            "ttl_s": 60.0,
            "seconds_left": None,
            "idle_s": None,
            "cause": None,
        },
    ]
    assert snap.to_wire()["held_bytes"] == 6


def test_pool_seconds_left_never_negative() -> None:
    pool = make_pool(idle_ttl=10.0)
    load(pool, "a", 0.0)
    assert pool.seconds_left("a", 50.0) == 0.0


@pytest.mark.parametrize(
    ("state", "announced"),
    [
        (PoolState.COLD, None),
        (PoolState.FETCHING, ModelState.FETCHING),
        (PoolState.WARMING, ModelState.STARTING),
        (PoolState.HOT, ModelState.READY),
        (PoolState.COOLING, ModelState.READY),
        (PoolState.UNLOADING, None),
        (PoolState.FAILED, ModelState.FAILED),
    ],
)
def test_pool_announced_state(state: PoolState, announced: ModelState | None) -> None:
    assert announced_state(state) == announced


def test_pool_every_state_is_announced_or_not() -> None:
    for state in PoolState:
        announced_state(state)  # no KeyError


# room: what a model placed here now could have


def test_pool_room_is_none_without_a_budget() -> None:
    pool = make_pool({"a": 4, "b": 4})
    assert pool.room() is None
    load(pool, "a", 0.0)
    pool.request_started("a", 1.0)
    assert pool.room() is None
    assert make_pool(memory_budget=0, max_loaded=0).room() is None  # 0: no limit


def test_pool_room_is_the_budget_when_nothing_is_loaded() -> None:
    pool = make_pool({"a": 4, "p": 3}, memory_budget=10)
    pool.pin("p")  # pinned but cold: it holds nothing yet
    assert pool.room() == 10


def test_pool_room_is_the_budget_less_busy_and_pinned_models() -> None:
    pool = make_pool({"a": 4, "b": 3, "c": 2, "d": 1}, memory_budget=20)
    load(pool, "a", 0.0)
    pool.request_started("a", 1.0)  # busy: a request in flight
    load(pool, "b", 0.0)
    pool.pin("b")  # pinned, idle
    assert isinstance(pool.begin_load("c", 2.0), LoadPlan)  # warming: busy too
    assert pool.room() == 20 - 4 - 3 - 2
    pool.request_finished("a", 3.0)  # idle now: evictable, so free
    assert pool.room() == 20 - 3 - 2
    pool.unpin("b", 4.0)
    pool.loaded("c", 5.0)
    assert pool.room() == 20


def test_pool_room_counts_idle_hot_models_as_free() -> None:
    pool = make_pool({"a": 4, "b": 4}, memory_budget=10)
    load(pool, "a", 0.0)  # cooling
    serve(pool, "b", 1.0, 2.0, keep_alive=-1)
    load(pool, "b", 2.0)  # hot for good, but idle: still evictable
    assert (pool.state("a"), pool.state("b")) == (PoolState.COOLING, PoolState.HOT)
    assert pool.room() == 10


def test_pool_room_counts_unloading_models_as_free() -> None:
    pool = make_pool({"a": 4, "b": 4}, memory_budget=10)
    load(pool, "a", 0.0)
    load(pool, "b", 0.0)
    pool.pin("b")
    pool.request_started("a", 1.0)
    assert pool.room() == 2
    assert pool.begin_unload("a")  # draining its request, but on its way out
    assert pool.begin_unload("b")
    assert pool.room() == 10
    assert pool.snapshot(2.0).held_bytes == 8  # the memory is still held meanwhile


def test_pool_room_ignores_failed_and_fetching_models() -> None:
    pool = make_pool({"a": 4, "b": 4}, memory_budget=10)
    pool.pin("a")
    pool.load_failed("a", "signal 9", 0.0)
    pool.fetch_started("b")
    pool.request_started("b", 1.0)  # waiting for its load
    assert pool.room() == 10


def test_pool_room_is_zero_when_busy_or_pinned_models_fill_max_loaded() -> None:
    pool = make_pool({"a": 1, "b": 1, "c": 1}, max_loaded=2, memory_budget=100)
    load(pool, "a", 0.0)
    pool.request_started("a", 1.0)
    assert pool.room() == 99
    load(pool, "b", 0.0)
    assert pool.room() == 99  # b idle: it can make way
    pool.pin("b")
    assert pool.room() == 0
    pool.unpin("b", 2.0)
    assert pool.room() == 99


def test_pool_room_without_a_budget_is_zero_only_when_slots_are_full() -> None:
    pool = make_pool({"a": 1, "b": 1}, max_loaded=1)
    assert pool.room() is None
    load(pool, "a", 0.0)
    assert pool.room() is None  # idle
    pool.request_started("a", 1.0)
    assert pool.room() == 0


def test_pool_room_never_negative() -> None:
    pool = make_pool({"a": 4}, memory_budget=10)
    load(pool, "a", 0.0)
    pool.pin("a")
    pool.add("a", 25, pinned=True)  # a rescan found it bigger than the budget
    assert pool.room() == 0


def test_pool_room_agrees_with_plan_load() -> None:
    pool = make_pool({"busy": 4, "idle": 3, "fits": 6, "too-big": 7}, memory_budget=10)
    load(pool, "busy", 0.0)
    load(pool, "idle", 0.0)
    pool.request_started("busy", 1.0)
    assert pool.room() == 6
    assert pool.plan_load("fits", 2.0) == LoadPlan("fits", 6, ("idle",))
    assert isinstance(pool.plan_load("too-big", 2.0), Refusal)


# begin_unload: an unload asked for


@pytest.mark.parametrize("busy", [False, True])
def test_pool_begin_unload_a_loaded_model(busy: bool) -> None:
    pool = make_pool({"a": 4})
    load(pool, "a", 0.0)
    if busy:
        pool.request_started("a", 1.0)
    assert pool.state("a") == (PoolState.HOT if busy else PoolState.COOLING)
    assert pool.begin_unload("a") is True
    assert pool.state("a") == PoolState.UNLOADING
    assert pool.in_flight("a") == (1 if busy else 0)  # the caller drains them
    assert pool.tick(1e9) == []  # not asked again by the TTL
    assert pool.next_deadline() is None


def test_pool_begin_unload_a_warming_model() -> None:
    pool = make_pool({"a": 4})
    assert isinstance(pool.begin_load("a", 0.0), LoadPlan)
    assert pool.begin_unload("a") is True
    assert pool.state("a") == PoolState.UNLOADING


def test_pool_begin_unload_unpins() -> None:
    pool = make_pool({"a": 4})
    pool.pin("a")
    load(pool, "a", 0.0)
    assert pool.begin_unload("a")
    assert pool.is_pinned("a") is False
    pool.unloaded("a")
    assert pool.state("a") == PoolState.COLD
    assert pool.wanted() == []  # not loaded again as a pinned model would be


@pytest.mark.parametrize("state", ["cold", "fetching", "failed", "unloading"])
def test_pool_begin_unload_of_a_model_not_loaded_is_false(state: str) -> None:
    pool = make_pool({"a": 4})
    pool.pin("a")
    if state == "fetching":
        pool.fetch_started("a")
    elif state == "failed":
        pool.load_failed("a", "exit code 1", 0.0)
    elif state == "unloading":
        load(pool, "a", 0.0)
        assert pool.begin_unload("a")
        pool.pin("a")
    before = pool.snapshot(1.0)
    assert pool.begin_unload("a") is False
    assert pool.snapshot(1.0) == before  # nothing changed, the pin neither
    assert pool.state("a") == PoolState(state)


def test_pool_unloading_model_holds_memory_until_unloaded() -> None:
    pool = make_pool({"a": 4, "b": 4}, memory_budget=6)
    load(pool, "a", 0.0)
    assert pool.begin_unload("a")
    snap = pool.snapshot(1.0)
    assert (snap.loaded, snap.held_bytes) == (1, 4)
    assert pool.plan_load("b", 1.0) == LoadPlan("b", 4, (), ("a",))  # wait for it
    assert pool.plan_load("a", 1.0) == Refusal(
        "a", "a is unloading; load it again once it is unloaded"
    )
    with pytest.raises(ValueError, match="unloading"):
        pool.remove("a")
    pool.unloaded("a")
    snap = pool.snapshot(2.0)
    assert (snap.loaded, snap.held_bytes) == (0, 0)
    assert pool.state("a") == PoolState.COLD
    assert pool.plan_load("b", 2.0) == LoadPlan("b", 4)


def test_pool_begin_unload_unknown_model_raises_key_error() -> None:
    with pytest.raises(KeyError, match="'zz' is not in this node's pool"):
        make_pool().begin_unload("zz")


# is_pinned


def test_pool_is_pinned() -> None:
    pool = ModelPool()
    pool.add("a", 1)
    pool.add("p", 1, pinned=True)
    assert (pool.is_pinned("a"), pool.is_pinned("p")) == (False, True)
    pool.pin("a")
    assert pool.is_pinned("a")
    pool.unpin("a", 0.0)
    assert not pool.is_pinned("a")
    pool.add("p", 1)  # a rescan takes the pin it is given
    assert not pool.is_pinned("p")
    with pytest.raises(KeyError):
        pool.is_pinned("zz")
