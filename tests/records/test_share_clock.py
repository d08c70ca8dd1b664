"""What each request served at once is owed of the node's power, on a fake clock."""

from __future__ import annotations

import pytest

from meshllm.records.service import ShareClock


def test_requests_served_together_share_the_seconds_fairly() -> None:
    clock = ShareClock(0.0)
    a = clock.start(0.0)  # alone for 10 s, then shares 10 s with b
    b = clock.start(10.0)
    assert clock.end(a, 20.0) == pytest.approx(15.0)
    assert clock.end(b, 30.0) == pytest.approx(5.0 + 10.0)  # then alone for 10 s
    c = clock.start(100.0)  # idle time is owed to nobody
    assert clock.end(c, 101.0) == pytest.approx(1.0)


def test_a_clock_that_steps_back_owes_nothing_negative() -> None:
    clock = ShareClock(5.0)
    mark = clock.start(5.0)
    assert clock.end(mark, 4.0) == 0.0
