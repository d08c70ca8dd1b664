"""Hello slots: bounded, fairly evicted (pure)."""

from __future__ import annotations

from meshllm.gossip.hello_slots import PendingHellos


def test_pending_hellos_source_cap_evicts_that_sources_oldest() -> None:
    slots: PendingHellos[str] = PendingHellos(capacity=10, per_source=2)
    assert slots.admit("a1", "A", validated=False) == []
    assert slots.admit("b1", "B", validated=False) == []
    assert slots.admit("a2", "A", validated=False) == []
    assert slots.admit("a3", "A", validated=False) == ["a1"]
    assert (slots.count("A"), slots.count("B"), len(slots)) == (2, 1, 3)
    assert "a1" not in slots and "b1" in slots


def test_pending_hellos_full_evicts_oldest_of_most_crowded_source() -> None:
    slots: PendingHellos[str] = PendingHellos(capacity=5, per_source=5)
    for key, source in [("b1", "B"), ("a1", "A"), ("a2", "A"), ("a3", "A"), ("c1", "C")]:
        assert slots.admit(key, source, validated=False) == []
    # Full: B holds the oldest slot, but A holds the most.
    assert slots.admit("d1", "D", validated=False) == ["a1"]
    assert slots.admit("d2", "D", validated=False) == ["a2"]
    # A, B, C, D now hold 1, 1, 1, 2: D is the most crowded.
    assert slots.admit("e1", "E", validated=False) == ["d1"]
    assert len(slots) == 5


def test_pending_hellos_ties_go_to_the_oldest_slot() -> None:
    slots: PendingHellos[str] = PendingHellos(capacity=2, per_source=2)
    slots.admit("a1", "A", validated=False)
    slots.admit("b1", "B", validated=False)
    assert slots.admit("c1", "C", validated=False) == ["a1"]


def test_pending_hellos_unvalidated_go_first() -> None:
    slots: PendingHellos[str] = PendingHellos(capacity=10, per_source=3)
    slots.admit("real", "A", validated=True)
    slots.admit("junk1", "A", validated=False)
    slots.admit("junk2", "A", validated=False)
    assert slots.admit("junk3", "A", validated=False) == ["junk1"]
    assert slots.admit("junk4", "A", validated=False) == ["junk2"]
    assert "real" in slots


def test_pending_hellos_discard_frees_the_slot() -> None:
    slots: PendingHellos[str] = PendingHellos(capacity=1, per_source=1)
    slots.admit("a", "A", validated=False)
    slots.discard("a")
    slots.discard("a")  # idempotent
    assert len(slots) == 0 and slots.count("A") == 0
    assert slots.admit("b", "A", validated=False) == []


# request streams that never send their head
