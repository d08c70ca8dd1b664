"""Hello slots: the bookkeeping of unauthenticated inbound connections (pure).

Anyone can ask for a slot with one datagram, so slots are few, cheap and fairly
evicted; the transport (:mod:`meshllm.gossip.transport`) holds one per
connection still in its hello.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class PendingHellos(Generic[Key]):
    """Hello slots: the unauthenticated inbound connections, grouped by source address.

    Admission never turns the newcomer away (a real hello takes milliseconds, so
    it gets through as long as its slot lives that long): when its source holds
    ``per_source`` slots, that source's oldest goes; when all ``capacity`` slots
    are taken, the oldest of the source holding the most goes (ties: the source
    with the oldest slot).  Within a source, a connection that never proved its
    address (no Retry) goes before one that did.  A flood from a few addresses
    thus evicts itself, and a flood from many spoofed ones meets the Retry.
    """

    def __init__(self, capacity: int, per_source: int) -> None:
        self.capacity = max(1, capacity)
        self.per_source = max(1, per_source)
        self._seq = 0
        self._slots: dict[Key, tuple[str, bool, int]] = {}  # key -> source, validated, seq
        self._by_source: dict[str, dict[Key, None]] = {}  # oldest first

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def count(self, source: str) -> int:
        """Slots ``source`` holds."""
        return len(self._by_source.get(source, ()))

    def admit(self, key: Key, source: str, validated: bool) -> list[Key]:
        """Give ``key`` a slot; returns the keys evicted to make room (already removed)."""
        evicted: list[Key] = []
        while self.count(source) >= self.per_source or len(self._slots) >= self.capacity:
            crowded = source if self.count(source) >= self.per_source else self._most_crowded()
            victim = self._oldest(crowded)
            self.discard(victim)
            evicted.append(victim)
        self._seq += 1
        self._slots[key] = (source, validated, self._seq)
        self._by_source.setdefault(source, {})[key] = None
        return evicted

    def discard(self, key: Key) -> None:
        """Free ``key``'s slot, if it holds one."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        keys = self._by_source[slot[0]]
        del keys[key]
        if not keys:
            del self._by_source[slot[0]]

    def _most_crowded(self) -> str:
        def crowding(source: str) -> tuple[int, int]:
            first = next(iter(self._by_source[source]))
            return len(self._by_source[source]), -self._slots[first][2]

        return max(self._by_source, key=crowding)

    def _oldest(self, source: str) -> Key:
        keys = self._by_source[source]
        unproven = (key for key in keys if not self._slots[key][1])
        return next(unproven, next(iter(keys)))
