"""The model pool of one node: which models stay loaded, and for how long (pure).

The policy of DESIGN.md §6, as plain bookkeeping: what happened goes in with
``now`` (a request started or finished, a server became healthy or failed, a
model was unloaded), decisions come out (:meth:`ModelPool.tick` returns the
models to unload, :meth:`ModelPool.plan_load` says whether a model fits and what
to evict for it).  No clock, no processes: the node's serving pump does those.

**States** (:class:`PoolState`): ``cold`` (on disk, not loaded), ``fetching``
(copying from a peer), ``warming`` (llama-server starting), ``hot`` (loaded, and
busy or kept for good), ``cooling`` (loaded, idle, its TTL counting down),
``unloading`` (being stopped), ``failed`` (given up on, with its cause).  Gossip
announces fewer (:func:`announced_state`).

**Idle TTL.**  A loaded model with no request in flight is unloaded ``ttl``
seconds after it went idle; every request restarts the countdown, which only
runs while nothing is in flight, so an unload always finds the model drained.
The TTL starts as the model's own default (else the node's ``idle_ttl``) and a
request's ``keep_alive`` sets it for that request and the ones after it, as in
Ollama (``server/sched.go`` ``useLoadedRunner``: a request without one keeps the
last): ``0`` unloads right after the request, a negative value never.  A pinned
model never unloads.

**Memory budget.**  Models that hold memory (warming, hot, cooling, unloading)
count against ``max_loaded`` and ``memory_budget``.  A load that does not fit
evicts idle models, least recently used first; never a busy one (a request in
flight, or warming) and never a pinned one.  A model kept by ``keep_alive < 0``
is idle, so it may be evicted for room (Ollama's ``findRunnerToUnload`` does the
same): "never" is about the clock, pinning is about memory as well.  What a model
needs is the caller's to say: the runner reads it from the GGUF's header
(:func:`meshllm.election.assignment.estimate_loaded_memory`: weights, KV cache at
its context, compute buffers).  Peers, who know only the file's size, place by the
cruder :func:`~meshllm.election.assignment.estimate_model_memory`; where the two
disagree the node refuses the load and the asker tries the next node in placement
order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from meshllm.gossip import SERVING_STATE, ModelState, PoolState
from meshllm.serving.durations import duration

DEFAULT_IDLE_TTL = 15 * 60.0  # seconds: DESIGN.md §6
MAX_CAUSE_CHARS = 2000  # a failure's cause kept (the announcement's own bound)


_HOLDS_MEMORY = frozenset({PoolState.WARMING, PoolState.HOT, PoolState.UNLOADING})


def announced_state(state: PoolState) -> ModelState | None:
    """The gossiped state of a model in ``state``; None: not announced in ``serving``."""
    return SERVING_STATE[state]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The node-wide pool limits (flags ``--max-loaded``, ``--memory-budget``)."""

    idle_ttl: float | None = DEFAULT_IDLE_TTL
    """Seconds an idle model stays loaded; None or <= 0: never (DESIGN.md §6: "0 =
    never"; unlike a request's keep_alive, where 0 means right after it)."""
    max_loaded: int | None = None
    """Models loaded at once; None or 0: no limit."""
    memory_budget: int | None = None
    """Bytes the loaded models may take together; None or 0: no limit."""

    def __post_init__(self) -> None:
        if self.max_loaded is not None and self.max_loaded < 0:
            raise ValueError(f"max_loaded {self.max_loaded} is negative")
        if self.memory_budget is not None and self.memory_budget < 0:
            raise ValueError(f"memory_budget {self.memory_budget} is negative")


@dataclass(frozen=True, slots=True)
class Unload:
    """Stop ``model``'s server, then report :meth:`ModelPool.unloaded`."""

    model: str
    reason: str


PoolAction = Unload


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """``model`` fits once ``evict`` (idle models, least recently used first) are
    unloaded and ``wait_for`` (models already unloading) are gone."""

    model: str
    needs_bytes: int
    evict: tuple[str, ...] = ()
    wait_for: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """``model`` cannot be loaded now; ``message`` says why, for the client."""

    model: str
    message: str


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model in ``/api/status``."""

    name: str
    state: PoolState
    size_bytes: int
    in_flight: int
    pinned: bool
    ttl_s: float | None  # None: never unloaded for idleness
    seconds_left: float | None  # cooling only: until it unloads
    idle_s: float | None  # loaded and idle: since its last request (or its load)
    cause: str | None = None  # failed only

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "name": self.name,
            "state": str(self.state),
            "size_bytes": self.size_bytes,
            "in_flight": self.in_flight,
            "pinned": self.pinned,
            "ttl_s": self.ttl_s,
            "seconds_left": self.seconds_left,
            "idle_s": self.idle_s,
            "cause": self.cause,
        }


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The whole pool in ``/api/status``: its models and what they hold."""

    models: tuple[ModelStatus, ...]
    loaded: int
    held_bytes: int
    max_loaded: int | None
    memory_budget: int | None

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "models": [m.to_wire() for m in self.models],
            "loaded": self.loaded,
            "held_bytes": self.held_bytes,
            "max_loaded": self.max_loaded,
            "memory_budget": self.memory_budget,
        }


@dataclass(slots=True)
class _Entry:
    size_bytes: int
    ttl: float | None  # None: never
    phase: PoolState = PoolState.COLD  # never COOLING: that is derived (_Entry.state)
    pinned: bool = False
    in_flight: int = 0
    last_used: float = -math.inf  # LRU order
    idle_since: float = -math.inf  # when the countdown (re)started
    hold_until: float = -math.inf  # extend_ttl(): loaded at least until then
    cause: str | None = None

    def deadline(self) -> float | None:
        """When an idle TTL unloads it; None when nothing counts down."""
        if self.phase != PoolState.HOT or self.in_flight or self.pinned or self.ttl is None:
            return None
        return max(self.idle_since + self.ttl, self.hold_until)

    @property
    def state(self) -> PoolState:
        return PoolState.COOLING if self.deadline() is not None else self.phase

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.phase == PoolState.WARMING

    @property
    def holds_memory(self) -> bool:
        return self.phase in _HOLDS_MEMORY


class ModelPool:
    """The models this node has and the policy that loads and unloads them."""

    def __init__(self, settings: PoolSettings | None = None) -> None:
        self.settings = settings or PoolSettings()
        self._models: dict[str, _Entry] = {}

    # the models this node has

    def add(
        self,
        model: str,
        size_bytes: int,
        *,
        keep_alive: str | float | None = None,
        pinned: bool = False,
    ) -> None:
        """Know ``model`` (cold), needing ``size_bytes`` of memory once loaded (see
        :func:`estimated_bytes`); ``keep_alive``: its own default TTL (a keep_alive
        value), None: the node's ``idle_ttl``.  A model already known (a rescan) keeps
        its state, takes the new size and pin, and its TTL only when ``keep_alive`` is
        given (one a request set stays)."""
        if size_bytes < 0:
            raise ValueError(f"{model}: size_bytes {size_bytes} is negative")
        ttl = None if keep_alive is None else duration(keep_alive, "keep_alive")
        entry = self._models.get(model)
        if entry is None:
            ttl = self._default_ttl() if keep_alive is None else ttl
            self._models[model] = _Entry(size_bytes=size_bytes, ttl=ttl, pinned=pinned)
            return
        entry.size_bytes, entry.pinned = size_bytes, pinned
        if keep_alive is not None:
            entry.ttl = ttl

    def remove(self, model: str) -> None:
        """Forget ``model`` (gone from disk); it must hold no memory."""
        entry = self._entry(model)
        if entry.holds_memory:
            raise ValueError(f"{model} is {entry.state}: unload it before removing it")
        del self._models[model]

    def models(self) -> list[str]:
        """Every known model, by name."""
        return sorted(self._models)

    # what happened

    def request_started(
        self, model: str, now: float, keep_alive: str | float | None = None
    ) -> None:
        """A request for ``model`` began (or is waiting for its load); ``keep_alive``
        from the request sets the TTL from now on (ValueError when it is garbage:
        nothing is counted then)."""
        entry = self._entry(model)
        if keep_alive is not None:
            entry.ttl = duration(keep_alive, "keep_alive")
        entry.in_flight += 1
        entry.last_used = now

    def request_finished(self, model: str, now: float) -> None:
        """A request for ``model`` ended, however it ended.  The last one to end starts
        the TTL countdown.  A finish without a start is ignored."""
        entry = self._entry(model)
        if entry.in_flight == 0:
            return
        entry.in_flight -= 1
        entry.last_used = now
        if entry.in_flight == 0:
            entry.idle_since = now

    def fetch_started(self, model: str) -> None:
        """``model``'s GGUF is being copied from a peer."""
        entry = self._entry(model)
        if not entry.holds_memory:
            entry.phase, entry.cause = PoolState.FETCHING, None

    def fetched(self, model: str) -> None:
        """``model``'s GGUF is on disk now: it is cold, ready to load."""
        entry = self._entry(model)
        if entry.phase == PoolState.FETCHING:
            entry.phase = PoolState.COLD

    def restarting(self, model: str) -> None:
        """``model``'s server crashed and is being started again: warming, its
        memory still held."""
        entry = self._entry(model)
        if entry.phase in (PoolState.HOT, PoolState.WARMING):
            entry.phase = PoolState.WARMING

    def loaded(self, model: str, now: float) -> None:
        """``model``'s server is healthy.  Recorded whatever the state was (the pool
        records what is); an idle model starts its countdown now."""
        entry = self._entry(model)
        entry.phase, entry.cause = PoolState.HOT, None
        entry.last_used = max(entry.last_used, now)
        entry.idle_since = now

    def load_failed(self, model: str, cause: str, now: float) -> None:
        """``model`` could not be fetched or loaded, or was given up on after a crash
        loop; its memory is free.  ``now`` dates the failure for LRU."""
        entry = self._entry(model)
        entry.phase, entry.cause = PoolState.FAILED, cause[-MAX_CAUSE_CHARS:]
        entry.last_used = max(entry.last_used, now)
        entry.hold_until = -math.inf

    def unloaded(self, model: str) -> None:
        """``model``'s server is gone and its memory free: cold (a failed model stays
        failed, with its cause)."""
        entry = self._entry(model)
        entry.hold_until = -math.inf  # an extend_ttl() held this load, not the next one
        if entry.phase != PoolState.FAILED:
            entry.phase = PoolState.COLD

    def begin_unload(self, model: str) -> bool:
        """An unload asked for (not by the TTL): ``model`` is marked unloading and
        unpinned, and takes no new requests; the caller waits for its requests in flight
        to end (:meth:`in_flight`), stops it and reports :meth:`unloaded`.  False when
        it is not loaded or warming."""
        entry = self._entry(model)
        if entry.phase not in (PoolState.HOT, PoolState.WARMING):
            return False
        entry.phase, entry.pinned = PoolState.UNLOADING, False
        return True

    def pin(self, model: str) -> None:
        """Keep ``model`` loaded for good: never unloaded for idleness, never evicted."""
        self._entry(model).pinned = True

    def unpin(self, model: str, now: float) -> None:
        """Unpin ``model``; if it is idle its countdown starts now."""
        entry = self._entry(model)
        if entry.pinned:
            entry.pinned = False
            entry.idle_since = max(entry.idle_since, now)

    def extend_ttl(self, model: str, seconds: float, now: float) -> None:
        """Keep ``model`` loaded at least ``seconds`` from ``now`` (the later of this
        and its TTL countdown wins); its TTL for later requests is unchanged."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"extend_ttl by {seconds!r} seconds")
        entry = self._entry(model)
        entry.hold_until = max(entry.hold_until, now + seconds)

    # decisions

    def tick(self, now: float) -> list[PoolAction]:
        """The models idle past their TTL by ``now``, earliest first: each is marked
        unloading and returned as an :class:`Unload` (only idle ones ever are)."""
        due = sorted(
            (deadline, name)
            for name, entry in self._models.items()
            if (deadline := entry.deadline()) is not None and deadline <= now
        )
        actions: list[PoolAction] = []
        for _, name in due:
            entry = self._models[name]
            entry.phase = PoolState.UNLOADING
            actions.append(Unload(name, _idle_reason(entry, now)))
        return actions

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has something to do."""
        return min(
            (d for e in self._models.values() if (d := e.deadline()) is not None), default=None
        )

    def plan_load(self, model: str, now: float) -> LoadPlan | Refusal:
        """Whether ``model`` can be loaded within the budget, and which models to
        evict first; changes nothing (see :meth:`begin_load`).  A model already
        warming or loaded needs nothing: an empty plan.  ``now`` is part of the
        interface; the plan does not depend on it today (LRU order is by last use)."""
        entry = self._entry(model)
        need = entry.size_bytes
        if entry.holds_memory and entry.phase != PoolState.UNLOADING:
            return LoadPlan(model, need)
        if entry.phase == PoolState.FETCHING:
            return Refusal(model, f"{model} is still being fetched from a peer")
        if entry.phase == PoolState.UNLOADING:
            return Refusal(model, f"{model} is unloading; load it again once it is unloaded")
        budget = self.settings.memory_budget or None
        max_loaded = self.settings.max_loaded or None
        if budget is not None and need > budget:
            return Refusal(
                model, f"{model} needs {need} bytes; the budget is {budget}: it cannot load here"
            )
        others = {n: e for n, e in self._models.items() if n != model and e.holds_memory}
        held, count = sum(e.size_bytes for e in others.values()), len(others)
        # Free first: models already on their way out; then idle ones, LRU first.
        candidates = sorted(n for n, e in others.items() if e.phase == PoolState.UNLOADING)
        candidates += [
            n
            for n, e in sorted(others.items(), key=lambda item: (item[1].last_used, item[0]))
            if e.phase == PoolState.HOT and not e.busy and not e.pinned
        ]
        evict: list[str] = []
        wait_for: list[str] = []
        for name in candidates:
            if _fits(need, held, count, budget, max_loaded):
                break
            (wait_for if others[name].phase == PoolState.UNLOADING else evict).append(name)
            held -= others[name].size_bytes
            count -= 1
        if _fits(need, held, count, budget, max_loaded):
            return LoadPlan(model, need, tuple(evict), tuple(wait_for))
        kept = sorted(set(others) - set(candidates))
        names = f" ({', '.join(kept)})" if kept else ""
        if budget is not None and held + need > budget:
            return Refusal(
                model,
                f"{model} needs {need} bytes; the budget is {budget} and busy/pinned "
                f"models hold {held}{names}",
            )
        return Refusal(
            model,
            f"{model} would be loaded model {count + 1}; max_loaded is {max_loaded} and "
            f"busy/pinned models are {count}{names}",
        )

    def begin_load(self, model: str, now: float) -> LoadPlan | Refusal:
        """:meth:`plan_load`, carried out in the books: the evicted models are marked
        unloading and ``model`` warming (its memory reserved).  The caller stops the
        evicted servers (reporting :meth:`unloaded`), waits for ``wait_for``, then
        starts ``model``'s server (reporting :meth:`loaded` or :meth:`load_failed`)."""
        plan = self.plan_load(model, now)
        entry = self._models[model]
        if isinstance(plan, Refusal) or entry.holds_memory:
            return plan
        for name in plan.evict:
            self._models[name].phase = PoolState.UNLOADING
        entry.phase, entry.cause = PoolState.WARMING, None
        return plan

    def wanted(self) -> list[str]:
        """Pinned models that are cold: the node loads them at start, and again after
        an unload (DESIGN.md §6: "pinned models load at start and stay")."""
        return sorted(n for n, e in self._models.items() if e.pinned and e.phase == PoolState.COLD)

    def room(self) -> int | None:
        """Bytes a model placed here now could have once idle models are evicted: the
        budget less what busy and pinned models hold, 0 when they take every
        ``max_loaded`` slot; None without a memory budget (then only ``max_loaded``
        limits, and the node's free memory is the measure).  Models unloading count as
        free: they soon are."""
        fixed = [
            e
            for e in self._models.values()
            if e.holds_memory and e.phase != PoolState.UNLOADING and (e.busy or e.pinned)
        ]
        max_loaded = self.settings.max_loaded or None
        if max_loaded is not None and len(fixed) >= max_loaded:
            return 0
        budget = self.settings.memory_budget or None
        if budget is None:
            return None
        return max(0, budget - sum(e.size_bytes for e in fixed))

    def evictable_bytes(self) -> int:
        """Bytes idle, unpinned loaded models hold: what an eviction could free."""
        return sum(
            e.size_bytes
            for e in self._models.values()
            if e.phase == PoolState.HOT and not e.busy and not e.pinned
        )

    def is_pinned(self, model: str) -> bool:
        """Whether ``model`` is pinned."""
        return self._entry(model).pinned

    # what status pages show

    def state(self, model: str) -> PoolState:
        """``model``'s state now."""
        return self._entry(model).state

    def in_flight(self, model: str) -> int:
        """Requests for ``model`` in flight (or waiting for its load)."""
        return self._entry(model).in_flight

    def ttl(self, model: str) -> float | None:
        """``model``'s idle TTL in seconds; None: never."""
        return self._entry(model).ttl

    def seconds_left(self, model: str, now: float) -> float | None:
        """Seconds until a cooling ``model`` unloads; None when nothing counts down."""
        deadline = self._entry(model).deadline()
        return None if deadline is None else max(0.0, deadline - now)

    def snapshot(self, now: float) -> PoolSnapshot:
        """Every model and the pool's totals, for ``/api/status``."""
        statuses = []
        for name in sorted(self._models):
            entry = self._models[name]
            loaded_idle = entry.phase == PoolState.HOT and not entry.in_flight
            statuses.append(
                ModelStatus(
                    name=name,
                    state=entry.state,
                    size_bytes=entry.size_bytes,
                    in_flight=entry.in_flight,
                    pinned=entry.pinned,
                    ttl_s=entry.ttl,
                    seconds_left=self.seconds_left(name, now),
                    idle_s=max(0.0, now - entry.idle_since) if loaded_idle else None,
                    cause=entry.cause if entry.phase == PoolState.FAILED else None,
                )
            )
        holding = [e for e in self._models.values() if e.holds_memory]
        return PoolSnapshot(
            models=tuple(statuses),
            loaded=len(holding),
            held_bytes=sum(e.size_bytes for e in holding),
            max_loaded=self.settings.max_loaded or None,
            memory_budget=self.settings.memory_budget or None,
        )

    # internals

    def _entry(self, model: str) -> _Entry:
        try:
            return self._models[model]
        except KeyError:
            raise KeyError(f"{model!r} is not in this node's pool") from None

    def _default_ttl(self) -> float | None:
        ttl = self.settings.idle_ttl
        return ttl if ttl is not None and ttl > 0 else None


def _fits(need: int, held: int, count: int, budget: int | None, max_loaded: int | None) -> bool:
    return (budget is None or held + need <= budget) and (
        max_loaded is None or count + 1 <= max_loaded
    )


def _idle_reason(entry: _Entry, now: float) -> str:
    if entry.ttl == 0 and entry.hold_until <= entry.idle_since:
        return "keep_alive 0: unloaded after its request"
    return f"idle for {now - entry.idle_since:.0f}s (TTL {entry.ttl:g}s)"
