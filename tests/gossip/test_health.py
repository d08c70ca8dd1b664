"""Probe schedule, on a fake clock."""

from __future__ import annotations

import random

from meshllm.gossip.health import ProbeSchedule


def schedule() -> ProbeSchedule:
    return ProbeSchedule(interval=15, timeout=5, rng=random.Random(1))


def test_first_probe_within_one_interval_then_every_interval() -> None:
    s = schedule()
    s.track("a", now=0)
    assert s.due(now=0) == []
    ((node, ping),) = s.due(now=15)
    assert node == "a"
    assert s.due(now=15.5) == []  # one ping outstanding at a time
    assert s.pong("a", ping, now=15.1) is not None
    assert s.due(now=29) == []
    assert [n for n, _ in s.due(now=30.2)] == ["a"]


def test_unanswered_ping_expires_after_timeout() -> None:
    s = schedule()
    s.track("a", now=0)
    s.due(now=15)
    assert s.expired(now=19.9) == []
    assert s.expired(now=20) == ["a"]


def test_wrong_or_late_pong_does_not_count() -> None:
    s = schedule()
    s.track("a", now=0)
    ((_, ping),) = s.due(now=15)
    assert s.pong("a", ping + 1, now=16) is None
    assert s.pong("b", ping, now=16) is None
    assert s.expired(now=20) == ["a"]


def test_rtt_and_untrack() -> None:
    s = schedule()
    s.track("a", now=0)
    ((_, ping),) = s.due(now=15)
    assert s.pong("a", ping, now=15.25) == 0.25
    assert s.rtt("a") == 0.25
    s.untrack("a")
    assert s.rtt("a") is None and s.due(now=100) == [] and s.expired(now=100) == []


def test_a_new_link_forgets_the_probe_sent_on_the_old_one() -> None:
    # A peer killed and restarted: the ping went to the dead process, the new one
    # linked up before it expired.  That ping must not declare the new one dead.
    s = schedule()
    s.track("a", now=0)
    s.due(now=15)
    s.relinked("a", now=16)
    assert s.expired(now=20) == [] and s.expired(now=25) == []
    assert s.due(now=16) == []  # a fresh schedule: first probe within one interval
    assert [n for n, _ in s.due(now=16 + 15)] == ["a"]
