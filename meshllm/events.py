"""The mesh's model-state event stream: diffs of announcements, and their fan-out.

:func:`model_events` turns two views of the mesh (node id -> announcement, this node
included) into events; :func:`snapshot_events` describes one view whole.  Both are
pure: the clock comes in as ``now_ms``.  :class:`EventHub` hands events to a bounded
number of subscribers, each with a bounded queue (``GET /api/events``,
:mod:`meshllm.proxy.events`).

A model's state on a node is ``pool[model]["state"]``, else ``"cold"`` when the GGUF is
in ``available_models``, else the model is not there (``None``).  Event shapes::

    {"type": "model_state", "node_id", "model", "state", "previous",
     "since", "eta", "until", "pinned", "cause", "at"}
    {"type": "node_joined" | "node_left", "node_id", "at"}
    {"type": "snapshot", "at", "models": [{"node_id", "model", "state", "since",
     "eta", "until", "pinned", "cause"}, ...]}
    {"type": "overflow"}        the subscriber fell behind and was dropped

``cause`` is always a key: the failure's cause for a failed model, else ``None``.
``since``, ``eta`` and ``until`` are ``None`` where not announced (always for cold).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from meshllm.gossip import PeerAnnouncement, PoolState

MAX_SUBSCRIBERS = 32
"""Event-stream subscribers at once; one more is refused (HTTP 503)."""
MAX_QUEUED_EVENTS = 256
"""Events one subscriber may have waiting; one more drops it (an ``overflow`` event)."""

Event = dict[str, Any]
_FIELDS = ("state", "since", "eta", "until", "pinned", "cause")


def model_records(ann: PeerAnnouncement) -> dict[str, dict[str, Any]]:
    """Every model on ``ann``'s node, cold ones included: model -> its ``_FIELDS``."""
    records = {
        model: {"state": str(PoolState.COLD), "since": None, "eta": None, "until": None}
        | {"pinned": False, "cause": None}
        for model in ann.available_models
    }
    for model, entry in ann.pool.items():
        state = str(entry.get("state"))
        records[model] = {
            "state": state,
            "since": entry.get("since"),
            "eta": entry.get("eta"),
            "until": entry.get("until"),
            "pinned": bool(entry.get("pinned", False)),
            "cause": ann.failures.get(model) if state == PoolState.FAILED else None,
        }
    return records


def model_events(
    before: Mapping[str, PeerAnnouncement],
    after: Mapping[str, PeerAnnouncement],
    now_ms: int,
) -> list[Event]:
    """Events that take a client from ``before`` to ``after``, sorted by (node, model).

    A ``model_state`` event for each (node, model) whose record changed (state, since,
    eta, until, pinned or cause); ``state`` ``None`` when the model left a node that
    stays.  A node gone is one ``node_left`` (no per-model events); a new node is a
    ``node_joined`` followed by its non-cold models (``previous`` ``None``).
    """
    events: list[Event] = []
    for node_id in sorted(before.keys() | after.keys()):
        if node_id not in after:
            events.append({"type": "node_left", "node_id": node_id, "at": now_ms})
            continue
        new = model_records(after[node_id])
        if node_id in before:
            old = model_records(before[node_id])
        else:
            events.append({"type": "node_joined", "node_id": node_id, "at": now_ms})
            old = {}
            new = {m: r for m, r in new.items() if r["state"] != PoolState.COLD}
        for model in sorted(old.keys() | new.keys()):
            was, now = old.get(model), new.get(model)
            if was == now:
                continue
            record = now or dict.fromkeys(_FIELDS) | {"pinned": False}
            events.append(
                {"type": "model_state", "node_id": node_id, "model": model}
                | record
                | {"previous": was["state"] if was else None, "at": now_ms}
            )
    return events


def snapshot_events(anns: Mapping[str, PeerAnnouncement], now_ms: int) -> list[Event]:
    """One ``snapshot`` event listing every (node, model), cold ones included, sorted."""
    models = [
        {"node_id": node_id, "model": model} | record
        for node_id in sorted(anns)
        for model, record in sorted(model_records(anns[node_id]).items())
    ]
    return [{"type": "snapshot", "at": now_ms, "models": models}]


class SubscriptionEnded(EOFError):
    """:meth:`Subscription.next` after the stream ended: closed, or overflowed and the
    ``overflow`` event already given.  An :class:`EOFError`, so ``except EOFError``."""


class Subscription:
    """One subscriber's queue of events.  A context manager: leaving it closes it.

    Not thread-safe: publish and read on the event loop's thread.  Events are shared
    between subscribers: read them, don't change them.
    """

    def __init__(self, hub: EventHub) -> None:
        self._hub: EventHub | None = hub
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False
        """Set when it fell behind: its queue was dropped and so was it."""
        self._overflow_given = False

    @property
    def closed(self) -> bool:
        """Whether it is out of its hub (closed or overflowed)."""
        return self._hub is None

    def _push(self, events: list[Event], cap: int) -> None:
        if len(self._queue) + len(events) > cap:
            self.overflowed = True
            self._queue.clear()
            self.close()
        else:
            self._queue.extend(events)
        self._wake.set()

    async def next(self, timeout: float) -> Event | None:
        """The next event; ``None`` after ``timeout`` seconds without one.  Once
        overflowed: ``{"type": "overflow"}`` once.  Raises :class:`SubscriptionEnded`
        when closed (or after that overflow event)."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.overflowed and not self._overflow_given:
                self._overflow_given = True
                return {"type": "overflow"}
            if self.closed:
                raise SubscriptionEnded("subscription ended")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None

    def close(self) -> None:
        """Leave the hub (idempotent); a waiting :meth:`next` ends."""
        if self._hub is not None:
            self._hub._subscribers.discard(self)
            self._hub = None
            self._wake.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventHub:
    """Fans events out to at most ``max_subscribers`` subscribers, each holding at most
    ``max_queued`` undelivered events (defaults: the module's budgets)."""

    def __init__(
        self, max_subscribers: int = MAX_SUBSCRIBERS, max_queued: int = MAX_QUEUED_EVENTS
    ) -> None:
        self.max_subscribers = max_subscribers
        self.max_queued = max_queued
        self._subscribers: set[Subscription] = set()
        self._closed = False

    def __len__(self) -> int:
        """Subscribers now."""
        return len(self._subscribers)

    def subscribe(self) -> Subscription | None:
        """A new subscription, or ``None`` when the hub is full or closed."""
        if self._closed or len(self._subscribers) >= self.max_subscribers:
            return None
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    def close(self) -> None:
        """End every subscription (the node stops): their streams end, so the HTTP
        server's shutdown never waits on a browser tab left open; none is taken after."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.close()

    def publish(self, events: list[Event]) -> None:
        """Queue ``events`` for every subscriber; never blocks.  A subscriber they would
        take past ``max_queued`` is marked overflowed and dropped."""
        if not events:
            return
        for sub in list(self._subscribers):
            sub._push(events, self.max_queued)
