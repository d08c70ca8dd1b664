"""Rate limits per API key, enforced mesh-wide from the usage counters nodes send each other
(pure: no I/O, no clock; ``now`` is passed in, best from a monotonic clock).

**Window.**  Usage is counted in slots of :data:`SLOT_S` seconds: slot ``s`` holds what happened
at times ``t`` with ``slot_of(t) == floor(t / SLOT_S) == s``.  At time ``now`` the window is the
current slot and the ``N_SLOTS - 1`` before it: slot ``s`` counts while
``s > slot_of(now) - N_SLOTS``, and leaves at time ``(s + N_SLOTS) * SLOT_S``.  So a usage stays
counted between ``WINDOW_S - SLOT_S`` and ``WINDOW_S`` seconds.

**Reports.**  Each node counts its own usage (:class:`UsageWindow`) and sends ``report(now)`` to
its peers every report interval: key id -> ``[[age, requests, tokens], ...]``, ``age`` being how
many whole slots before the sender's current one.  A receiver (:class:`MeshUsage`) anchors a
report on its own clock when it records it at time ``t``: a slot reported with age ``a`` is its
slot ``slot_of(t) - a``, counted by the rule above, i.e. while
``slot_of(t) - a > slot_of(now) - N_SLOTS``.  No two clocks need agree; transit shifts a slot by
one at most.  A report replaces its sender's last one (each is a full picture of the window), one
older than ``stale_after`` is ignored (its node is gone or cut off), and a node reports only its
own usage, never relays, so nothing is counted twice.

**Over-admission.**  For a key with limit ``L`` per window, let ``I`` be the report interval,
``d`` the longest transit and ``a_j(Δ)`` what node ``j`` admitted for the key in the last ``Δ``
seconds.  A node admits only while it sees fewer than ``L``, and it sees every other node's usage
at most ``I + d`` late, so just after any admission on node ``i`` the window holds at most::

    L + Σ_{j ≠ i} a_j(I + d)

(give or take the one-slot anchoring above): with ``N`` nodes each taking ``r`` requests per
second of the key, at most ``(N - 1) · r · (I + d)`` beyond the limit.  Tokens are counted when an
answer ends, so add the tokens of the answers still running.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from meshllm.access.keys import ApiKey, is_key_id

WINDOW_S = 60  # rpm and tpm are per minute
SLOT_S = 5  # granularity of the window: a report holds at most WINDOW_S / SLOT_S slots a key
N_SLOTS = WINDOW_S // SLOT_S
MAX_REPORTED_KEYS = 1024  # keys in one report (the busiest): as many as a key book holds
MAX_COUNT = 10**12  # requests or tokens in one reported slot: far above any real rate
MAX_NODES = 1024  # peers whose reports are kept: above any mesh (gossip tracks 256 peers)

Slot = tuple[int, int, int]  # (slot index on this node's clock, requests, tokens)


def slot_of(now: float) -> int:
    """The slot that holds time ``now``."""
    return math.floor(now / SLOT_S)


@dataclass(frozen=True)
class Usage:
    """Requests and tokens of one key in the window."""

    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class Refusal:
    """A request refused for its key's rate limit; ``limit`` is ``"requests"`` or ``"tokens"``,
    ``retry_after_s`` the whole seconds until it would be admitted (for ``Retry-After``)."""

    retry_after_s: int
    message: str
    limit: str


def _usage(slots: list[Slot]) -> Usage:
    return Usage(sum(s[1] for s in slots), sum(s[2] for s in slots))


class UsageWindow:
    """This node's own usage per key over the window; what fell out is forgotten."""

    def __init__(self) -> None:
        self._keys: dict[str, dict[int, list[int]]] = {}  # key id -> slot -> [requests, tokens]
        self._swept = -math.inf  # slot of the last sweep

    def add(self, key_id: str, now: float, *, requests: int = 0, tokens: int = 0) -> None:
        """Count ``requests`` and ``tokens`` of ``key_id`` at ``now``."""
        if not is_key_id(key_id):
            raise ValueError(f"bad key id {key_id!r}")
        if requests < 0 or tokens < 0:
            raise ValueError("usage is never negative")
        self._sweep(now)
        counts = self._keys.setdefault(key_id, {}).setdefault(slot_of(now), [0, 0])
        counts[0] += requests
        counts[1] += tokens

    def slots(self, key_id: str, now: float) -> list[Slot]:
        """The slots of ``key_id`` still in the window at ``now``."""
        oldest = slot_of(now) - N_SLOTS
        slots = self._keys.get(key_id, {})
        return [(s, r, t) for s, (r, t) in slots.items() if s > oldest]

    def totals(self, key_id: str, now: float) -> Usage:
        return _usage(self.slots(key_id, now))

    def report(self, now: float) -> dict[str, list[list[int]]]:
        """What to send peers: key id -> ``[[age, requests, tokens], ...]`` (newest slot
        first) for every key with usage in the window, busiest first, at most
        :data:`MAX_REPORTED_KEYS`."""
        self._sweep(now)
        current = slot_of(now)
        rows: dict[str, list[list[int]]] = {}
        for key_id, slots in self._keys.items():
            ages = sorted((current - s, r, t) for s, (r, t) in slots.items())
            entries = [[age, r, t] for age, r, t in ages if 0 <= age < N_SLOTS]
            if entries:
                rows[key_id] = entries
        busiest = sorted(
            rows, key=lambda k: (-sum(e[1] for e in rows[k]), -sum(e[2] for e in rows[k]), k)
        )
        return {key_id: rows[key_id] for key_id in busiest[:MAX_REPORTED_KEYS]}

    def _sweep(self, now: float) -> None:
        """Forget slots that left the window: once a slot, so memory holds only the window."""
        current = slot_of(now)
        if current == self._swept:
            return
        self._swept = current
        for key_id in list(self._keys):
            slots = self._keys[key_id]
            for s in [s for s in slots if s <= current - N_SLOTS]:
                del slots[s]
            if not slots:
                del self._keys[key_id]


def parse_report(report: Any) -> dict[str, list[tuple[int, int, int]]]:
    """A peer's report as key id -> ``(age, requests, tokens)``.  A wrong shape raises
    :class:`ValueError`; slots outside the window (negative or large ages) are dropped,
    counts clamped into ``0..MAX_COUNT``, repeated ages summed."""
    if not isinstance(report, dict):
        raise ValueError("usage report is not a map")
    if len(report) > MAX_REPORTED_KEYS:
        raise ValueError(f"usage report of {len(report)} keys, over {MAX_REPORTED_KEYS}")
    parsed: dict[str, list[tuple[int, int, int]]] = {}
    for key_id, entries in report.items():
        if not is_key_id(key_id):
            raise ValueError("usage report names a bad key id")
        if not isinstance(entries, list | tuple) or len(entries) > N_SLOTS:
            raise ValueError(f"usage of a key is not a list of at most {N_SLOTS} slots")
        by_age: dict[int, tuple[int, int]] = {}
        for entry in entries:
            if not isinstance(entry, list | tuple) or len(entry) != 3:
                raise ValueError("a usage slot is not [age, requests, tokens]")
            if not all(map(_is_int, entry)):
                raise ValueError("a usage slot is not [age, requests, tokens]")
            age, requests, tokens = entry
            if not 0 <= age < N_SLOTS:
                continue  # outside the window (or from a clock gone backwards)
            r, t = by_age.get(age, (0, 0))
            by_age[age] = (_clamp(r + _clamp(requests)), _clamp(t + _clamp(tokens)))
        if by_age:
            parsed[key_id] = [(age, r, t) for age, (r, t) in sorted(by_age.items())]
    return parsed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clamp(count: int) -> int:
    return min(max(count, 0), MAX_COUNT)


@dataclass(frozen=True)
class _Received:
    at: float  # when it was recorded, on this node's clock
    slots: dict[str, list[Slot]]  # key id -> slots anchored on this node's clock


class MeshUsage:
    """The last usage report of each peer, and what they add up to per key."""

    def __init__(self, stale_after: float, max_nodes: int = MAX_NODES) -> None:
        self.stale_after = stale_after
        self.max_nodes = max_nodes
        self._reports: dict[str, _Received] = {}  # node id -> its report, least recent first

    def __len__(self) -> int:
        return len(self._reports)

    def record(self, node_id: str, report: Any, now: float) -> None:
        """Keep ``report``, just received from ``node_id``, in place of its last one.  A report
        of the wrong shape raises :class:`ValueError` and changes nothing."""
        if not isinstance(node_id, str):
            raise ValueError("node id is not a string")
        parsed = parse_report(report)
        anchor = slot_of(now)
        slots = {k: [(anchor - age, r, t) for age, r, t in rows] for k, rows in parsed.items()}
        self._reports.pop(node_id, None)
        self._reports[node_id] = _Received(now, slots)
        for stale in [n for n, rep in self._reports.items() if now - rep.at > self.stale_after]:
            del self._reports[stale]
        while len(self._reports) > self.max_nodes:
            del self._reports[next(iter(self._reports))]

    def forget(self, node_id: str) -> None:
        """Drop ``node_id``'s report (it left the mesh)."""
        self._reports.pop(node_id, None)

    def slots(self, key_id: str, now: float) -> list[Slot]:
        """Peers' slots of ``key_id`` still in the window at ``now``, from fresh reports."""
        oldest = slot_of(now) - N_SLOTS
        return [
            slot
            for rep in self._reports.values()
            if now - rep.at <= self.stale_after
            for slot in rep.slots.get(key_id, ())
            if slot[0] > oldest
        ]

    def totals(self, key_id: str, now: float) -> Usage:
        return _usage(self.slots(key_id, now))


class RateLimiter:
    """Per-key limits over the mesh: this node's usage plus its peers' last reports."""

    def __init__(self, stale_after: float) -> None:
        self.own = UsageWindow()
        self.mesh = MeshUsage(stale_after)

    def admit(self, key_id: str, now: float) -> None:
        """Count one request of ``key_id`` (after :meth:`check` let it in)."""
        self.own.add(key_id, now, requests=1)

    def tokens(self, key_id: str, n: int, now: float) -> None:
        """Count ``n`` tokens of ``key_id``, once the answer has told how many."""
        self.own.add(key_id, now, tokens=n)

    def report(self, now: float) -> dict[str, list[list[int]]]:
        """This node's usage, to send to its peers."""
        return self.own.report(now)

    def record(self, node_id: str, report: Any, now: float) -> None:
        """A peer's report (see :meth:`MeshUsage.record`)."""
        self.mesh.record(node_id, report, now)

    def forget(self, node_id: str) -> None:
        self.mesh.forget(node_id)

    def totals(self, key_id: str, now: float) -> Usage:
        """The mesh-wide usage of ``key_id`` in the window, as this node knows it."""
        return _usage(self.own.slots(key_id, now) + self.mesh.slots(key_id, now))

    def check(self, key: ApiKey, now: float) -> Refusal | None:
        """Why a request of ``key`` must wait, or None: refused while the window holds
        ``key.rpm`` requests or ``key.tpm`` tokens, mesh-wide.  A key without limits is never
        refused (its usage is still counted)."""
        if key.rpm is None and key.tpm is None:
            return None
        slots = self.own.slots(key.id, now) + self.mesh.slots(key.id, now)
        refusals = [
            refusal
            for refusal in (
                _refusal(key, slots, 1, key.rpm, "requests", now),
                _refusal(key, slots, 2, key.tpm, "tokens", now),
            )
            if refusal is not None
        ]
        return max(refusals, key=lambda r: r.retry_after_s, default=None)


def _refusal(
    key: ApiKey, slots: list[Slot], field: int, limit: int | None, what: str, now: float
) -> Refusal | None:
    """The refusal if ``slots`` hold ``limit`` or more of ``field``; its wait lasts until the
    oldest slots have left the window enough for the count to be under ``limit`` again."""
    if limit is None:
        return None
    excess = sum(s[field] for s in slots) - limit + 1  # what must leave for one more to fit
    if excess <= 0:
        return None
    leaves = now + WINDOW_S
    for slot in sorted(slots):
        excess -= slot[field]
        if excess <= 0:
            leaves = (slot[0] + N_SLOTS) * SLOT_S
            break
    retry = max(1, math.ceil(leaves - now))
    if slot_of(now + retry) * SLOT_S < leaves:  # float rounding at the slot's edge
        retry += 1
    retry = min(retry, WINDOW_S)
    message = f"API key {key.id} is at its limit of {limit} {what} per minute; retry in {retry} s"
    return Refusal(retry_after_s=retry, message=message, limit=what)
