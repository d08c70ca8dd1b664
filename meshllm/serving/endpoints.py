"""The external servers a node fronts for the mesh: ``--endpoint`` flags, endpoints added at
run time (kept in ``<state-dir>/endpoints.json``), and an Ollama found on this machine.

Each is an :class:`~meshllm.serving.external.ExternalEndpoint`, polled for health and
models.  Its models are served to the mesh while it is routable; its API key is added
to every request forwarded to it (:meth:`EndpointSet.headers_for`) and never leaves
this node.  Removing one drains it: its models leave ``serving`` at once, so new
requests go elsewhere, and it is stopped once its requests in flight have ended (or
after ``DRAIN_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from meshllm.errors import ConfigError
from meshllm.gossip import ModelState
from meshllm.serving.endpoint_health import POLL_INTERVAL_S
from meshllm.serving.endpoint_store import (
    MAX_ENDPOINTS,
    EndpointRecord,
    EndpointStore,
    endpoint_id,
    make_record,
)
from meshllm.serving.external import OLLAMA, ExternalEndpoint

log = logging.getLogger(__name__)

LOCAL_OLLAMA = "http://127.0.0.1:11434"  # where Ollama listens by default
LOCAL_OLLAMA_INTERVAL_S = 60.0  # how often a node without one looks for it again
DRAIN_TIMEOUT_S = 600.0  # a removed endpoint's requests get this long to end
DRAIN_POLL_S = 0.2
DISCOVERY_POLLS = 3  # models are discovered again every this many health polls


class EndpointSet:
    """This node's endpoints by id, and the requests in flight to each one's models."""

    def __init__(
        self,
        state_dir: Path,
        *,
        flags: Iterable[str] = (),
        find_local_ollama: bool = True,
        local_ollama: str = LOCAL_OLLAMA,
        poll_interval: float = POLL_INTERVAL_S,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``poll_interval``: seconds between health polls (discovery every
        DISCOVERY_POLLS of them); ``local_ollama``: where this machine's Ollama would
        answer."""
        self.store = EndpointStore.in_state_dir(state_dir)
        self._flags = list(flags)
        self._find_local = find_local_ollama
        self._local_ollama = local_ollama
        self._on_change = on_change
        self._poll_interval = poll_interval
        self.endpoints: dict[str, ExternalEndpoint] = {}
        self._draining: set[str] = set()
        self._in_flight: Counter[str] = Counter()  # model -> requests to an endpoint
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the ``--endpoint`` flags' and the stored endpoints; look for a local
        Ollama in the background.  Raises ConfigError for an unreadable store."""
        for url in self._flags:
            try:
                flag = EndpointRecord(endpoint_id(url), url)
            except ValueError as exc:
                raise ConfigError(f"--endpoint {url}: {exc}") from None
            await self._start(flag.id, self._endpoint(flag))
        for record in self.store.list():
            await self._start(record.id, self._endpoint(record))
        if self._find_local:
            self._task = asyncio.create_task(self._watch_local_ollama(), name="local ollama")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(e.stop() for e in self.endpoints.values()), return_exceptions=True)

    # run time

    async def add(
        self, url: str, kind: str = "auto", name: str | None = None, api_key: str | None = None
    ) -> EndpointRecord:
        """Front the server at ``url`` from now on (and after restarts); one at the same
        URL is replaced.  ValueError: a bad field, or this node fronts MAX_ENDPOINTS."""
        candidate = make_record(url, kind, name, api_key)
        if candidate.id not in self.endpoints and len(self.endpoints) >= MAX_ENDPOINTS:
            raise ValueError(f"this node fronts {MAX_ENDPOINTS} endpoints already (the most)")
        record = self.store.add(url, kind, name, api_key)
        old = self.endpoints.pop(record.id, None)
        if old is not None:
            await old.stop()
        await self._start(record.id, self._endpoint(record))
        self._changed()
        return record

    async def remove(self, endpoint_id: str) -> bool:
        """Stop fronting an endpoint: no new requests at once, stopped once its requests
        in flight have ended; False when there is none with that id (ValueError: it is
        being removed already)."""
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return False
        if endpoint_id in self._draining:
            raise ValueError(f"endpoint {endpoint_id} is being removed already")
        self.store.remove(endpoint_id)
        self._draining.add(endpoint_id)
        self._changed()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(self._in_flight[m] for m in endpoint.models) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        self.endpoints.pop(endpoint_id, None)
        self._draining.discard(endpoint_id)
        await endpoint.stop()
        self._changed()
        log.warning("endpoint %s removed", endpoint.public_url)
        return True

    async def refresh(self) -> None:
        """Poll every endpoint and discover its models now (``GET /api/endpoints?refresh``)."""
        await asyncio.gather(*(e.refresh() for e in self.endpoints.values()))

    # requests

    def base_url(self, model: str) -> str | None:
        """Where a routable endpoint serves ``model``, if one does."""
        endpoint = self._serving(model)
        return endpoint.base_url if endpoint is not None else None

    def headers_for(self, base_url: str) -> dict[str, str]:
        """What a request forwarded to ``base_url`` must carry (an endpoint's API key)."""
        for endpoint in self.endpoints.values():
            if endpoint.base_url == base_url:
                return endpoint.auth_headers()
        return {}

    def request_started(self, model: str) -> None:
        self._in_flight[model] += 1

    def request_finished(self, model: str) -> None:
        self._in_flight[model] -= 1
        if self._in_flight[model] <= 0:
            del self._in_flight[model]

    # what the node announces

    def serving(self) -> dict[str, str]:
        """``model -> state`` of the endpoints' models (draining ones are gone)."""
        states: dict[str, str] = {}
        for endpoint_id_, endpoint in self.endpoints.items():
            if endpoint_id_ in self._draining:
                continue
            for model in endpoint.models:
                ready = endpoint.healthy or states.get(model) == ModelState.READY
                states[model] = ModelState.READY if ready else ModelState.FAILED
        return states

    def announced(self) -> dict[str, dict[str, Any]]:
        """The ``endpoints`` announcement field: each endpoint's state and models."""
        out = {}
        for endpoint_id_, endpoint in sorted(self.endpoints.items())[:MAX_ENDPOINTS]:
            status = endpoint.status()
            state = "draining" if endpoint_id_ in self._draining else status["state"]
            entry: dict[str, Any] = {
                "name": (endpoint.name or endpoint.public_url)[:300],
                "kind": endpoint.kind or "openai",
                "state": state,
                "models": {
                    model: {k: v for k, v in detail.items() if k != "params" and v is not None}
                    for model, detail in endpoint.details().items()
                },
            }
            if status.get("latency_ms") is not None:
                entry["latency_ms"] = round(float(status["latency_ms"]), 1)
            if status.get("last_error") and state != "up":
                entry["error"] = str(status["last_error"])[:300]
            out[endpoint_id_] = entry
        return out

    def listed(self) -> list[dict[str, Any]]:
        """This node's endpoints for ``GET /api/endpoints`` (no keys)."""
        stored = {r.id for r in self.store.list()}
        announced = self.announced()
        out = []
        for endpoint_id_, endpoint in sorted(self.endpoints.items()):
            out.append(
                {
                    "id": endpoint_id_,
                    "url": endpoint.public_url,
                    "kind": endpoint.kind or endpoint.configured_kind,
                    "name": endpoint.name,
                    "has_api_key": bool(endpoint.auth_headers()),
                    "origin": "stored" if endpoint_id_ in stored else "flag or found",
                    **{k: v for k, v in announced[endpoint_id_].items() if k != "kind"},
                }
            )
        return out

    # internals

    def _serving(self, model: str) -> ExternalEndpoint | None:
        for endpoint_id_, endpoint in self.endpoints.items():
            if endpoint_id_ not in self._draining and endpoint.healthy and model in endpoint.models:
                return endpoint
        return None

    def _endpoint(self, record: EndpointRecord) -> ExternalEndpoint:
        return ExternalEndpoint(
            record.url,
            self._changed,
            kind=record.kind,
            name=record.name,
            api_key=record.api_key,
            interval=self._poll_interval,
            discovery_interval=self._poll_interval * DISCOVERY_POLLS,
        )

    async def _start(self, endpoint_id_: str, endpoint: ExternalEndpoint) -> None:
        if endpoint_id_ not in self.endpoints and len(self.endpoints) >= MAX_ENDPOINTS:
            log.warning("not fronting %s: %d endpoints already", endpoint.public_url, MAX_ENDPOINTS)
            return
        self.endpoints[endpoint_id_] = endpoint
        await endpoint.start()

    def _changed(self, _endpoint: object = None) -> None:
        self._on_change()

    async def _watch_local_ollama(self) -> None:
        """Front an Ollama on this machine (127.0.0.1:11434) when one runs, as the seed's
        sidecars did; look again every LOCAL_OLLAMA_INTERVAL_S while there is none."""
        url = self._local_ollama
        local_id = endpoint_id(url)
        while True:
            if local_id not in self.endpoints:
                probe = self._endpoint(EndpointRecord(local_id, url, OLLAMA, "local-ollama"))
                await probe.start()
                if probe.healthy:
                    log.warning("found Ollama on this machine: fronting %s", url)
                    self.endpoints[local_id] = probe
                    self._changed()
                else:
                    await probe.stop()
            await asyncio.sleep(LOCAL_OLLAMA_INTERVAL_S)
