"""ModelRunner: carries out the model pool's decisions (DESIGN.md §6).

:class:`~meshllm.serving.pool.ModelPool` decides; this runs it on real time and real
processes: one supervised :class:`~meshllm.serving.llama.LlamaServer` per loaded
model (each on its own port, from ``--model-ports`` when set), evictions before a
load, the idle-TTL timer, drains before an unload, and the measured load speed that
gives a warming model its ETA.  What it holds is read back as announcement fields
(:meth:`ModelRunner.fields`); ``on_change(urgent)`` says when they changed
(``urgent``: what routing reads, ``serving`` or ``failures``, changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshllm.election import estimate_loaded_memory
from meshllm.errors import ServingError
from meshllm.gossip import SERVING_STATE, ModelState, PoolState
from meshllm.serving.launch import LlamaOptions, context_size
from meshllm.serving.llama import LlamaServer
from meshllm.serving.locate import proven_args
from meshllm.serving.model_file import ModelFile
from meshllm.serving.pool import LoadPlan, ModelPool, PoolSettings, Refusal

log = logging.getLogger(__name__)

SPEED_WEIGHT = 0.5  # weight of the newest measured load speed in the running average
DRAIN_POLL_S = 0.1  # how often an unload waiting for its requests to end looks again


class ModelRunner:
    """This node's loaded models, each its own llama-server, run by the pool's policy."""

    def __init__(
        self,
        settings: PoolSettings,
        binary: Callable[[], Any],
        *,
        log_dir: Path,
        options: LlamaOptions,
        on_change: Callable[[bool], None] = lambda urgent: None,
    ) -> None:
        """``binary``: an async callable giving the llama-server to run (it may build it;
        raises ServingError).  ``options``: how each server runs (ports, flags)."""
        self.pool = ModelPool(settings)
        self.files: dict[str, ModelFile] = {}
        self.servers: dict[str, LlamaServer] = {}
        self._binary = binary
        self._log_dir = log_dir
        self._options = options
        self._on_change = on_change
        self._since: dict[str, int] = {}  # model -> wall ms it entered its announced state
        self._shown: dict[str, PoolState] = {}  # the state ``_since`` is for
        self._warm_started: dict[str, float] = {}  # model -> monotonic launch time
        self._fetch_eta: dict[str, float] = {}  # model -> seconds a running copy takes in all
        self._speed: float | None = None  # bytes/s this node loads a GGUF at (measured)
        self._tasks: dict[str, asyncio.Task[None]] = {}  # model -> its load or unload
        self._timer: asyncio.TimerHandle | None = None
        self._stopping: set[asyncio.Future[None]] = set()  # servers being stopped
        self._closed = False
        self.loads: Counter[str] = Counter()  # model -> servers started (for the metrics)
        self.unloads: Counter[str] = Counter()  # model -> servers stopped by the pool

    # the models this node has

    def add(
        self, model: ModelFile, *, pinned: bool = False, keep_alive: float | None = None
    ) -> None:
        """Know ``model`` (cold until loaded); a known one keeps its state.  ``keep_alive``:
        its own idle TTL (keep_alive semantics: negative never), else the node's."""
        self.files[model.name] = model
        pinned = pinned or (model.name in self.pool.models() and self.pool.is_pinned(model.name))
        context = context_size(model, self._options)
        need = estimate_loaded_memory(model.size_bytes, model.kv_bytes_per_token, context)
        self.pool.add(model.name, need, pinned=pinned, keep_alive=keep_alive)

    def fetching(self, model: str) -> None:
        """``model``'s GGUF is being copied here."""
        if model not in self.pool.models():
            self.pool.add(model, 0)
        self.pool.fetch_started(model)
        self._changed(urgent=True)

    def fetch_progress(self, model: str, eta_s: float) -> None:
        """The copy of ``model`` takes about ``eta_s`` seconds in all, by its rate so far."""
        self._fetch_eta[model] = eta_s
        self._on_change(False)

    def fetch_ended(self, model: str, cause: str | None = None) -> None:
        """The copy of ``model`` ended: it is on disk (``add`` it), or failed for ``cause``."""
        self._fetch_eta.pop(model, None)
        if model not in self.pool.models():
            return
        if cause is None:
            self.pool.fetched(model)
        elif model in self.files:
            self.pool.fetched(model)  # an older copy is still here
        else:
            self.pool.remove(model)
        self._changed(urgent=True)

    # loading and unloading

    def load(self, model: str) -> Refusal | None:
        """Start loading ``model`` (evicting idle models first) unless it is loaded or
        loading; the Refusal says why it cannot be, here and now."""
        if model not in self.files:
            return Refusal(model, f"{model} is not on this node's disk")
        if self._closed:
            return Refusal(model, "this node is stopping")
        if model in self._tasks and self.pool.state(model) == PoolState.UNLOADING:
            return Refusal(model, f"{model} is unloading here; try again once it is unloaded")
        plan = self.pool.begin_load(model, time.monotonic())
        if isinstance(plan, Refusal):
            return plan
        if model in self.servers or model in self._tasks:
            return None  # warming or loaded already
        self._run(model, self._load(model, plan))
        self._changed(urgent=True)
        return None

    def unload(self, model: str, reason: str) -> bool:
        """Unload ``model`` once its requests in flight have ended (it takes no new ones
        meanwhile); False when it is not loaded."""
        if model not in self.servers or self.pool.state(model) == PoolState.UNLOADING:
            return False
        self.pool.begin_unload(model)
        self._run(model, self._unload(model, reason))
        self._changed(urgent=True)
        return True

    def pin(self, model: str) -> None:
        """Keep ``model`` loaded for good (and load it now if it is not)."""
        self.pool.pin(model)
        self._changed(urgent=False)

    def unpin(self, model: str) -> None:
        """Let ``model`` cool off by its TTL again."""
        self.pool.unpin(model, time.monotonic())
        self._changed(urgent=False)

    def extend_ttl(self, model: str, seconds: float) -> None:
        """Keep ``model`` loaded at least ``seconds`` more."""
        self.pool.extend_ttl(model, seconds, time.monotonic())
        self._changed(urgent=False)

    async def stop(self) -> None:
        """Stop every server (no llama-server outlives the node)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        stops = [*(s.stop() for s in self.servers.values()), *self._stopping]
        await asyncio.gather(*stops, return_exceptions=True)

    # requests

    def request_started(self, model: str, keep_alive: str | float | None = None) -> None:
        """A request reached ``model``'s server here (ValueError for a bad keep_alive)."""
        if model in self.pool.models():
            self.pool.request_started(model, time.monotonic(), keep_alive)
            self._changed(urgent=False)

    def request_finished(self, model: str) -> None:
        """A request to ``model``'s server here ended, however it ended."""
        if model in self.pool.models():
            self.pool.request_finished(model, time.monotonic())
            self._changed(urgent=False)

    def base_url(self, model: str) -> str | None:
        """Where ``model``'s server answers, while it is loaded and takes requests."""
        server = self.servers.get(model)
        if server is None or server.state != ModelState.READY:
            return None
        if self.pool.state(model) not in (PoolState.HOT, PoolState.COOLING):
            return None
        return server.base_url

    # what the node announces

    def fields(self, now_ms: int | None = None) -> dict[str, Any]:
        """``serving``, ``pool``, ``failures`` and ``pool_room`` for the announcement."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        now = time.monotonic()
        serving: dict[str, str] = {}
        pool: dict[str, dict[str, Any]] = {}
        failures: dict[str, str] = {}
        for status in self.pool.snapshot(now).models:
            name, state = status.name, status.state
            if (announced := SERVING_STATE[state]) is not None:
                serving[name] = str(announced)
            if state == PoolState.COLD:
                self._since.pop(name, None)
                self._shown.pop(name, None)
                continue
            if self._shown.get(name) != state:
                self._shown[name], self._since[name] = state, now_ms
            entry: dict[str, Any] = {"state": str(state), "since": self._since[name]}
            if status.pinned:
                entry["pinned"] = True
            if state == PoolState.COOLING and status.seconds_left is not None:
                entry["until"] = now_ms + int(status.seconds_left * 1000)
            eta = self._eta(name, state)
            if eta is not None:
                entry["eta"] = round(eta, 1)
            if state == PoolState.FAILED and status.cause:
                failures[name] = status.cause
            pool[name] = entry
        return {
            "serving": serving,
            "pool": pool,
            "failures": failures,
            "pool_room": self.pool.room(),
        }

    def snapshot(self) -> dict[str, Any]:
        """The pool for ``/api/status``."""
        return self.pool.snapshot(time.monotonic()).to_wire()

    # internals

    async def _load(self, model: str, plan: LoadPlan) -> None:
        for name in plan.evict:
            log.warning("evicting %s to make room for %s", name, model)
            await self._stop_server(name)
            self.pool.unloaded(name)
            self._changed(urgent=True)
        for name in plan.wait_for:
            if (task := self._tasks.get(name)) is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(task)
        try:
            binary = await self._binary()
        except ServingError as exc:
            self._failed(model, str(exc))
            return
        extra = (*self._options.extra_args, *proven_args(binary))  # e.g. --no-repack (§9)
        server = LlamaServer(
            self.files[model],
            binary,
            log_dir=self._log_dir,
            options=dataclasses.replace(self._options, extra_args=extra),
            on_state=self._server_state,
        )
        self.servers[model] = server
        self._warm_started[model] = time.monotonic()
        log.warning("loading %s", model)
        self.loads[model] += 1
        try:
            await server.start()
        except ServingError as exc:
            self.servers.pop(model, None)
            self._failed(model, str(exc))

    async def _unload(self, model: str, reason: str) -> None:
        while self.pool.in_flight(model):
            await asyncio.sleep(DRAIN_POLL_S)
        log.warning("unloading %s: %s", model, reason)
        self.unloads[model] += 1
        await self._stop_server(model)
        self.pool.unloaded(model)
        self._changed(urgent=True)

    async def _stop_server(self, model: str) -> None:
        stopping = self._discard(model)
        if stopping is not None:
            await asyncio.shield(stopping)

    def _discard(self, model: str) -> asyncio.Future[None] | None:
        """Forget ``model``'s server now and stop it in the background; a runner stopping
        meanwhile waits for that rather than cut it short."""
        server = self.servers.pop(model, None)
        self._warm_started.pop(model, None)
        if server is None:
            return None
        stopping = asyncio.ensure_future(server.stop())
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        return stopping

    def _server_state(self, model: str, state: ModelState) -> None:
        """A server's own state changed (it is healthy, restarting, given up on)."""
        server = self.servers.get(model)
        if server is None or self.pool.state(model) == PoolState.UNLOADING:
            return
        now = time.monotonic()
        if state == ModelState.READY:
            started = self._warm_started.pop(model, None)
            if started is not None and server.restarts == 0:
                self._measured(self.files[model].size_bytes, now - started)
            self.pool.loaded(model, now)
        elif state == ModelState.STARTING:
            self.pool.restarting(model)
        elif state == ModelState.FAILED:
            self._discard(model)
            self._failed(model, server.failure or "llama-server failed")
            return
        self._changed(urgent=True)

    def _failed(self, model: str, cause: str) -> None:
        log.error("cannot load %s: %s", model, cause)
        self.pool.load_failed(model, cause, time.monotonic())
        self._changed(urgent=True)

    def _measured(self, size: int, seconds: float) -> None:
        speed = size / max(seconds, 1e-3)
        old = self._speed
        self._speed = speed if old is None else SPEED_WEIGHT * speed + (1 - SPEED_WEIGHT) * old

    def _eta(self, model: str, state: PoolState) -> float | None:
        if state == PoolState.FETCHING:
            return self._fetch_eta.get(model)
        if state == PoolState.WARMING and self._speed and model in self.files:
            return self.files[model].size_bytes / self._speed
        return None

    def _changed(self, *, urgent: bool) -> None:
        self._arm_timer()
        self._on_change(urgent)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.pool.next_deadline()
        if deadline is not None and not self._closed:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for action in self.pool.tick(time.monotonic()):
            self._run(action.model, self._unload(action.model, action.reason))
        for model in self.pool.wanted():
            if model in self.files:
                self.load(model)
        self._changed(urgent=True)

    def _run(self, key: str, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks[key] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is t:
                del self._tasks[key]
            if not t.cancelled() and t.exception() is not None:
                log.error("pool task %s failed", key, exc_info=t.exception())

        task.add_done_callback(done)
