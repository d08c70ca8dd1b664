"""Rate limits on a fake clock: the sliding window, peers' reports, Retry-After that is exact,
and hostile reports that never crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshllm.access.keys import ApiKey
from meshllm.access.limits import (
    MAX_COUNT,
    MAX_REPORTED_KEYS,
    N_SLOTS,
    SLOT_S,
    WINDOW_S,
    MeshUsage,
    RateLimiter,
    Usage,
    UsageWindow,
    parse_report,
)

T = 1000.0  # the start of slot 200
KEY = "0123456789ab"
OTHER = "ba9876543210"


def api_key(rpm: int | None = None, tpm: int | None = None, key_id: str = KEY) -> ApiKey:
    return ApiKey(
        id=key_id,
        name="ci",
        scope="inference",
        models=(),
        expires=None,
        rpm=rpm,
        tpm=tpm,
        created=0.0,
        secret_hash=b"\x00" * 32,
    )


def hex_id(i: int) -> str:
    return f"{i:012x}"


def assert_retry_after_is_exact(limiter: RateLimiter, key: ApiKey, now: float) -> int:
    """The key is refused at ``now``; still at ``now + retry - 1``; admitted at ``now + retry``."""
    refusal = limiter.check(key, now)
    assert refusal is not None
    retry = refusal.retry_after_s
    assert 1 <= retry <= WINDOW_S
    assert limiter.check(key, now + retry - 1) is not None
    assert limiter.check(key, now + retry) is None
    return retry


def test_window_slides_and_forgets() -> None:
    window = UsageWindow()
    window.add(KEY, T, requests=1, tokens=10)
    window.add(KEY, T + 4.9, requests=1)
    window.add(KEY, T + 30, requests=1, tokens=5)
    assert window.totals(KEY, T + 30) == Usage(3, 15)
    assert window.totals(KEY, T + WINDOW_S - 0.01) == Usage(3, 15)
    assert window.totals(KEY, T + WINDOW_S) == Usage(1, 5)  # slot 200 left
    assert window.totals(KEY, T + 30 + WINDOW_S) == Usage(0, 0)
    assert window.totals(OTHER, T) == Usage()
    assert window.report(T + 30 + WINDOW_S) == {}
    assert window._keys == {}  # memory holds only the window


def test_report_shape() -> None:
    window = UsageWindow()
    window.add(KEY, T, requests=2, tokens=7)
    window.add(KEY, T + 12, requests=1)
    window.add(OTHER, T + 12, requests=5)
    report = window.report(T + 14)
    assert list(report) == [OTHER, KEY]  # busiest first
    assert report[KEY] == [[0, 1, 0], [2, 2, 7]]
    assert report[OTHER] == [[0, 5, 0]]
    for t in range(0, 200, 3):
        window.add(KEY, T + t, requests=1)
    assert len(window.report(T + 199)[KEY]) <= N_SLOTS


def test_report_caps_keys_busiest_first() -> None:
    window = UsageWindow()
    for i in range(MAX_REPORTED_KEYS + 50):
        window.add(hex_id(i), T, requests=1 + (i >= 50))
    report = window.report(T)
    assert len(report) == MAX_REPORTED_KEYS
    assert all(hex_id(i) in report for i in range(50, MAX_REPORTED_KEYS + 50))


def test_add_refuses_bad_arguments() -> None:
    window = UsageWindow()
    with pytest.raises(ValueError):
        window.add("not-a-key-id", T, requests=1)
    with pytest.raises(ValueError):
        window.add(KEY, T, tokens=-1)


def test_rpm_own_usage_retry_after() -> None:
    limiter = RateLimiter(stale_after=30)
    key = api_key(rpm=3)
    for t in (0, 1, 2):
        assert limiter.check(key, T + t) is None
        limiter.admit(KEY, T + t)
    refusal = limiter.check(key, T + 3)
    assert refusal is not None and refusal.limit == "requests"
    assert "3 requests" in refusal.message
    assert assert_retry_after_is_exact(limiter, key, T + 3) == 57  # slot 200 leaves at T + 60


def test_rpm_retry_after_waits_for_just_enough_usage_to_leave() -> None:
    limiter = RateLimiter(stale_after=30)
    key = api_key(rpm=3)
    for t in (0, 10, 20):
        limiter.admit(KEY, T + t)
    assert assert_retry_after_is_exact(limiter, key, T + 30.5) == 30  # only T's must go
    limiter.admit(KEY, T + 31)  # 4 now: T's and T + 10's must both go
    assert assert_retry_after_is_exact(limiter, key, T + 32.25) == 38


def test_rpm_peer_usage_retry_after() -> None:
    limiter = RateLimiter(stale_after=120)
    key = api_key(rpm=3)
    limiter.record("peer-a", {KEY: [[2, 1, 0], [6, 2, 0]]}, T + 30)  # slots 204 and 200
    assert limiter.totals(KEY, T + 30) == Usage(3, 0)
    assert assert_retry_after_is_exact(limiter, key, T + 30) == 30
    limiter.admit(KEY, T + 31)
    assert assert_retry_after_is_exact(limiter, key, T + 31) == 29  # slot 200 going is enough
    limiter.admit(KEY, T + 31)  # 5: the peer's slot 204 must go as well
    assert assert_retry_after_is_exact(limiter, key, T + 31) == 49


def test_tpm() -> None:
    limiter = RateLimiter(stale_after=30)
    key = api_key(rpm=100, tpm=1000)
    limiter.admit(KEY, T)
    limiter.tokens(KEY, 600, T + 1)
    assert limiter.check(key, T + 2) is None  # under: tokens come after the answer
    limiter.admit(KEY, T + 2)
    limiter.tokens(KEY, 600, T + 6)
    refusal = limiter.check(key, T + 7)
    assert refusal is not None and refusal.limit == "tokens"
    assert assert_retry_after_is_exact(limiter, key, T + 7) == 53  # T + 1's slot leaves
    limiter.record("peer", {KEY: [[0, 0, 500]]}, T + 58)  # slot 211
    assert assert_retry_after_is_exact(limiter, key, T + 58) == 7  # T + 6's slot leaves


def test_both_limits_the_longer_wait_wins() -> None:
    limiter = RateLimiter(stale_after=30)
    key = api_key(rpm=1, tpm=10)
    limiter.admit(KEY, T)
    limiter.tokens(KEY, 10, T + 20)
    refusal = limiter.check(key, T + 21)
    assert refusal is not None and refusal.limit == "tokens"
    assert refusal.retry_after_s == 59


def test_unlimited_key_is_counted_never_refused() -> None:
    limiter = RateLimiter(stale_after=30)
    key = api_key()
    for _ in range(10_000):
        limiter.admit(KEY, T)
    limiter.tokens(KEY, 10**9, T)
    assert limiter.check(key, T) is None
    assert limiter.totals(KEY, T) == Usage(10_000, 10**9)
    assert limiter.report(T)[KEY] == [[0, 10_000, 10**9]]


def test_mesh_totals_from_two_peers() -> None:
    a, b, me = RateLimiter(30), RateLimiter(30), RateLimiter(30)
    a.admit(KEY, T)
    a.tokens(KEY, 40, T + 1)
    b.admit(KEY, T + 20)
    b.admit(OTHER, T + 20)
    me.admit(KEY, T + 21)
    me.record("a", a.report(T + 22), T + 22.5)
    me.record("b", b.report(T + 22), T + 22.5)
    assert me.totals(KEY, T + 23) == Usage(3, 40)
    assert me.totals(OTHER, T + 23) == Usage(1, 0)
    assert me.mesh.totals(KEY, T + 23) == Usage(2, 40)
    # A newer report replaces the last one; a forgotten node counts no more.
    me.record("a", {}, T + 24)
    assert me.totals(KEY, T + 24) == Usage(2, 0)
    me.forget("b")
    assert me.totals(KEY, T + 24) == Usage(1, 0)


def test_peer_slots_leave_the_window() -> None:
    mesh = MeshUsage(stale_after=1000)
    mesh.record("a", {KEY: [[0, 1, 0], [11, 1, 0]]}, T + 2)  # slots 200 and 189
    assert mesh.totals(KEY, T + 2) == Usage(2, 0)
    assert mesh.totals(KEY, T + 5) == Usage(1, 0)  # slot 189 left at (189 + 12) * 5
    assert mesh.totals(KEY, T + WINDOW_S - 0.001) == Usage(1, 0)
    assert mesh.totals(KEY, T + WINDOW_S) == Usage(0, 0)


def test_stale_peer_report_is_ignored() -> None:
    mesh = MeshUsage(stale_after=10)
    mesh.record("a", {KEY: [[0, 5, 0]]}, T)
    assert mesh.totals(KEY, T + 10) == Usage(5, 0)
    assert mesh.totals(KEY, T + 10.5) == Usage(0, 0)
    mesh.record("b", {}, T + 11)
    assert len(mesh) == 1  # the stale one is dropped


def test_mesh_usage_caps_nodes() -> None:
    mesh = MeshUsage(stale_after=100, max_nodes=3)
    for i in range(5):
        mesh.record(f"n{i}", {KEY: [[0, 1, 0]]}, T)
    assert len(mesh) == 3 and mesh.totals(KEY, T) == Usage(3, 0)


@pytest.mark.parametrize(
    "report",
    [
        None,
        [],
        "x",
        {1: []},
        {"not-a-key": []},
        {KEY: "x"},
        {KEY: {}},
        {KEY: [[0, 1]]},
        {KEY: [[0, 1, 2, 3]]},
        {KEY: [[0.5, 1, 2]]},
        {KEY: [[0, True, 2]]},
        {KEY: [[0, 1, "2"]]},
        {KEY: [[0, 1, None]]},
        {KEY: [0, 1, 2]},
        {KEY: [[i, 1, 1] for i in range(N_SLOTS + 1)]},
        {hex_id(i): [] for i in range(MAX_REPORTED_KEYS + 1)},
    ],
)
def test_hostile_report_shape_is_refused(report: object) -> None:
    mesh = MeshUsage(stale_after=10)
    mesh.record("a", {KEY: [[0, 1, 0]]}, T)
    with pytest.raises(ValueError):
        mesh.record("a", report, T)
    assert mesh.totals(KEY, T) == Usage(1, 0)  # the last good one stays


def test_hostile_numbers_are_clamped_or_dropped() -> None:
    report = {
        KEY: [[-1, 100, 100], [0, -5, 2**200], [1, 2**64, -1], [1, 3, 4], [10**30, 7, 7]],
        OTHER: [[N_SLOTS, 1, 1]],
    }
    assert parse_report(report) == {KEY: [(0, 0, MAX_COUNT), (1, MAX_COUNT, 4)]}
    limiter = RateLimiter(stale_after=10)
    limiter.record("a", report, T)
    refusal = limiter.check(api_key(rpm=10**9, tpm=10**9), T)
    assert refusal is not None and 1 <= refusal.retry_after_s <= WINDOW_S
    assert limiter.totals(OTHER, T) == Usage()


def test_node_id_must_be_text() -> None:
    with pytest.raises(ValueError):
        MeshUsage(stale_after=10).record(b"a", {}, T)  # type: ignore[arg-type]


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=14)
    | st.sampled_from([KEY, OTHER]),
    lambda inner: st.lists(inner, max_size=14) | st.dictionaries(st.text(max_size=14), inner),
    max_leaves=40,
)
slot_entry = st.lists(st.integers(min_value=-(2**70), max_value=2**70), min_size=3, max_size=3)
near_report = st.dictionaries(
    st.sampled_from([KEY, OTHER, "x"]), st.lists(slot_entry | json_like, max_size=14)
)


@settings(max_examples=300, deadline=None)
@given(report=json_like | near_report, age=st.floats(min_value=0, max_value=100))
def test_any_report_is_refused_or_taken_never_a_crash(report: object, age: float) -> None:
    limiter = RateLimiter(stale_after=10)
    with contextlib.suppress(ValueError):
        limiter.record("peer", report, T)
    usage = limiter.totals(KEY, T + age)
    assert 0 <= usage.requests <= N_SLOTS * MAX_COUNT and 0 <= usage.tokens <= N_SLOTS * MAX_COUNT
    refusal = limiter.check(api_key(rpm=1, tpm=1), T + age)
    assert refusal is None or 1 <= refusal.retry_after_s <= WINDOW_S


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.floats(min_value=0, max_value=120), min_size=1, max_size=30),
    rpm=st.integers(min_value=1, max_value=10),
    offset=st.floats(min_value=0, max_value=1),
)
def test_retry_after_is_exact_for_any_usage(times: list[float], rpm: int, offset: float) -> None:
    limiter = RateLimiter(stale_after=1000)
    key = api_key(rpm=rpm)
    times = sorted(times)
    for t in times:
        limiter.admit(KEY, T + t)
    now = T + times[-1] + offset
    if limiter.check(key, now) is not None:
        assert_retry_after_is_exact(limiter, key, now)
    else:
        assert limiter.totals(KEY, now).requests < rpm


def test_slot_constants() -> None:
    assert N_SLOTS * SLOT_S == WINDOW_S
