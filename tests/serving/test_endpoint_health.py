"""The endpoint health state machine, on a fake clock."""

from __future__ import annotations

import pytest

from meshllm.serving import endpoint_health
from meshllm.serving.endpoint_health import (
    DOWN,
    MAX_ERROR_CHARS,
    PROBATION,
    UP,
    EndpointHealth,
    HealthChanged,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, seconds: float = endpoint_health.POLL_INTERVAL_S) -> float:
        self.now += seconds
        return self.now


def up_health(clock: Clock) -> EndpointHealth:
    health = EndpointHealth()
    health.ok(clock.tick(), 3.0)
    assert health.state == UP
    return health


def test_endpoint_health_constants() -> None:
    assert endpoint_health.POLL_INTERVAL_S == 10.0
    assert endpoint_health.POLL_TIMEOUT_S == 5.0
    assert endpoint_health.DOWN_AFTER == 3
    assert endpoint_health.UP_AFTER == 2
    assert endpoint_health.DISCOVERY_INTERVAL_S == 30.0


def test_endpoint_health_starts_down() -> None:
    health = EndpointHealth()
    assert health.state == DOWN and not health.routable
    assert (health.latency_ms, health.last_ok, health.last_error) == (None, None, None)


def test_endpoint_health_first_good_poll_is_up_at_once() -> None:
    clock = Clock()
    health = EndpointHealth()
    assert health.ok(clock.tick(), 12.5) == HealthChanged(DOWN, UP)
    assert health.routable
    assert (health.latency_ms, health.last_ok) == (12.5, clock.now)


def test_endpoint_health_failures_before_first_up_then_up_at_once() -> None:
    clock = Clock()
    health = EndpointHealth()
    for _ in range(5):
        assert health.failed(clock.tick(), "refused") is None
    assert health.state == DOWN and health.failures == 5
    assert health.ok(clock.tick()) == HealthChanged(DOWN, UP)


def test_endpoint_health_down_after_three_failures() -> None:
    clock = Clock()
    health = up_health(clock)
    assert health.failed(clock.tick(), "timed out", 5000.0) is None
    assert health.failed(clock.tick(), "timed out") is None
    assert health.routable  # two misses are tolerated
    assert health.last_error == "timed out" and health.latency_ms is None
    assert health.failed(clock.tick(), "HTTP 500") == HealthChanged(UP, DOWN)
    assert not health.routable and health.last_error == "HTTP 500"


def test_endpoint_health_good_poll_resets_failures() -> None:
    clock = Clock()
    health = up_health(clock)
    for _ in range(10):
        health.failed(clock.tick(), "x")
        health.failed(clock.tick(), "x")
        assert health.ok(clock.tick()) is None
    assert health.state == UP
    assert health.last_error == "x"  # kept after recovering, for the status page


def test_endpoint_health_probation_then_up() -> None:
    clock = Clock()
    health = up_health(clock)
    for _ in range(3):
        health.failed(clock.tick(), "refused")
    assert health.ok(clock.tick()) == HealthChanged(DOWN, PROBATION)
    assert not health.routable  # probation is not routed to
    assert health.ok(clock.tick()) == HealthChanged(PROBATION, UP)
    assert health.routable


def test_endpoint_health_failure_in_probation_is_down() -> None:
    clock = Clock()
    health = up_health(clock)
    for _ in range(3):
        health.failed(clock.tick(), "refused")
    health.ok(clock.tick())
    assert health.failed(clock.tick(), "refused") == HealthChanged(PROBATION, DOWN)
    assert health.ok(clock.tick()) == HealthChanged(DOWN, PROBATION)  # two in a row again
    assert health.ok(clock.tick()) == HealthChanged(PROBATION, UP)


@pytest.mark.parametrize(
    ("down_after", "up_after", "fails_to_down", "oks_to_up"),
    [(1, 1, 1, 1), (3, 2, 3, 2), (5, 4, 5, 4)],
)
def test_endpoint_health_thresholds(
    down_after: int, up_after: int, fails_to_down: int, oks_to_up: int
) -> None:
    clock = Clock()
    health = EndpointHealth(down_after=down_after, up_after=up_after)
    health.ok(clock.tick())
    for i in range(fails_to_down):
        assert health.state == UP, i
        health.failed(clock.tick(), "x")
    assert health.state == DOWN
    for i in range(oks_to_up):
        assert health.state != UP, i
        health.ok(clock.tick())
    assert health.state == UP


def test_endpoint_health_bad_thresholds() -> None:
    with pytest.raises(ValueError):
        EndpointHealth(down_after=0)
    with pytest.raises(ValueError):
        EndpointHealth(up_after=0)


def test_endpoint_health_error_is_bounded_and_one_line() -> None:
    health = EndpointHealth()
    health.failed(1.0, "a\nb\r\n" + "x" * 10_000)
    assert health.last_error is not None
    assert len(health.last_error) == MAX_ERROR_CHARS
    assert health.last_error.startswith("a b x") and "\n" not in health.last_error
    health.failed(2.0, "")
    assert health.last_error == "failed"


def test_endpoint_health_times() -> None:
    clock = Clock()
    health = EndpointHealth()
    health.ok(clock.tick(), 4.0)
    ok_at = clock.now
    health.failed(clock.tick(), "x", 5000.0)
    assert (health.last_ok, health.last_poll, health.latency_ms) == (ok_at, clock.now, 5000.0)
    assert health.snapshot() == {
        "state": UP,
        "routable": True,
        "latency_ms": 5000.0,
        "last_error": "x",
        "last_ok": ok_at,
        "failures": 1,
    }
