"""An in-memory mesh for the proxy routes' tests, and the fixtures that serve it.

``MemoryMesh`` implements ``ProxyMesh``: local replicas are FakeBackends reached
by the Forwarder, remote ones FakeBackends behind ``serve_tunnel`` on memory
stream pairs, as the node's dispatcher would serve them; a node in ``broken``
stands for a dead one (takes the head, never acks) or a broken stream (resets).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshllm.cloud import split_model
from meshllm.errors import PeerError
from meshllm.proxy import (
    ChainedBackends,
    Forwarder,
    HttpBackends,
    HttpLimits,
    LocalBackends,
    Target,
    add_proxy_routes,
    openai_error_middleware,
    serve_tunnel,
)
from meshllm.testing import FakeBackend
from meshllm.wire import FrameStream, MemoryFrameStream, memory_stream_pair

SELF = "self"
DEAD_URL = "http://127.0.0.1:1"  # nothing listens on port 1


@dataclass
class MemoryMesh:
    """A ProxyMesh over in-memory streams: ``replicas[(node_id, model)] = backend base URL``."""

    forwarder: Forwarder
    replicas: dict[tuple[str, str], str] = field(default_factory=dict)
    announced_load: dict[str, int] = field(default_factory=dict)
    cold: list[str] = field(default_factory=list)  # catalog models nobody serves
    unreachable: set[str] = field(default_factory=set)  # open_stream raises PeerError
    broken: dict[str, str] = field(default_factory=dict)  # node -> "silent" | "reset"
    dial: dict[str, float] = field(default_factory=dict)  # node -> seconds to get a link
    not_served: set[str] = field(default_factory=set)  # answer "not served here"
    suspected: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)
    suspect_error: Exception | None = None  # suspect() raises it (a membership in trouble)
    loading: dict[tuple[str, str], str] = field(default_factory=dict)  # (node, model) -> state
    failed: dict[tuple[str, str], str] = field(default_factory=dict)  # (node, model) -> cause
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: Counter[Target] = field(default_factory=Counter)
    started: list[Target] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    loadable: dict[str, str] = field(default_factory=dict)  # model -> node load() starts it on
    load_asks: list[str] = field(default_factory=list)  # load() calls, by model
    demand: list[str] = field(default_factory=list)  # routed() calls, by model
    keep_alives: list[str | None] = field(default_factory=list)  # request_started()'s
    clouds: dict[str, LocalBackends] = field(default_factory=dict)  # node -> its providers
    refused: dict[str, dict[str, str]] = field(default_factory=dict)  # provider -> node -> state
    native: dict[str, set[str]] = field(default_factory=dict)  # node -> paths its backend speaks

    @property
    def backends(self) -> LocalBackends:
        return self._backends(SELF, self.local_base_url)

    def _backends(self, node_id: str, base_url: Callable[[str], str | None]) -> LocalBackends:
        local = HttpBackends(self.forwarder, base_url)
        cloud = self.clouds.get(node_id)
        return local if cloud is None else ChainedBackends(cloud, local)

    def provider_targets(self, model: str) -> list[Target] | None:
        if split_model(model) is None:
            return None
        return [
            Target(node, model, node == SELF, self.in_flight[Target(node, model, node == SELF)])
            for node, cloud in sorted(self.clouds.items())
            if cloud.serves(model)
        ]

    def provider_refusals(self, provider: str) -> dict[str, str]:
        return self.refused.get(provider, {})

    def speaks(self, target: Target, path: str) -> bool:
        return path in self.native.get(target.node_id, ()) or (
            path == "/v1/messages" and target.model.startswith("anthropic:")
        )

    def catalog(self) -> list[dict[str, Any]]:
        entries: dict[str, list[str]] = {m: [] for m in self.cold}
        for _, model in [*self.loading, *self.failed]:
            entries.setdefault(model, [])
        for node, model in self.replicas:
            entries.setdefault(model, []).append(node)
        return [{"model": m, "warm": bool(n), "nodes": n} for m, n in sorted(entries.items())]

    def targets(self) -> Mapping[str, Sequence[Target]]:
        table: dict[str, list[Target]] = {}
        for node, model in self.replicas:
            base = Target(node, model, local=node == SELF)
            load = self.in_flight[base] + self.announced_load.get(node, 0)
            table.setdefault(model, []).append(Target(node, model, node == SELF, load))
        return table

    def local_base_url(self, model: str) -> str | None:
        return self.replicas.get((SELF, model))

    async def open_stream(self, node_id: str) -> FrameStream:
        if node_id in self.unreachable:
            raise PeerError(f"{node_id} unreachable")
        if (delay := self.dial.get(node_id)) is not None:  # no link yet: dialling it
            if math.isinf(delay):
                await asyncio.Event().wait()  # a killed node: the hello never comes
            await asyncio.sleep(delay)
        client, server = memory_stream_pair(SELF, node_id)

        def base_url(model: str) -> str | None:
            return None if node_id in self.not_served else self.replicas.get((node_id, model))

        async def dispatch() -> None:
            head = await server.recv()
            assert head is not None
            if node_id in self.broken:
                await _break(server, self.broken[node_id])
            await serve_tunnel(server, head, self._backends(node_id, base_url))

        self.tasks.append(asyncio.create_task(dispatch()))
        return client

    def suspect(self, node_id: str, reason: str) -> None:
        self.suspected.append((node_id, reason))
        if self.suspect_error is not None:
            raise self.suspect_error

    def request_started(self, target: Target, keep_alive: str | None = None) -> None:
        key = Target(target.node_id, target.model, target.local)
        self.in_flight[key] += 1
        self.started.append(target)
        self.keep_alives.append(keep_alive)

    async def load(self, model: str) -> str | None:
        self.load_asks.append(model)
        node = self.loadable.get(model)
        if node is None:
            return f"no node can hold {model} (test)"
        self.loading[(node, model)] = "starting"
        return None

    def routed(self, model: str) -> None:
        self.demand.append(model)

    def request_finished(self, target: Target) -> None:
        key = Target(target.node_id, target.model, target.local)
        self.in_flight[key] -= 1
        assert self.in_flight[key] >= 0

    def warming(self, model: str | None) -> dict[str, str]:
        return {n: st for (n, m), st in self.loading.items() if model is None or m == model}

    def failures(self, model: str) -> dict[str, str]:
        return {n: cause for (n, m), cause in self.failed.items() if m == model}

    async def wait_changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()

    def ready(self, node: str, model: str, url: str) -> None:
        """A loading replica becomes ready."""
        self.loading.pop((node, model), None)
        self.replicas[(node, model)] = url
        self.changed.set()

    def idle(self) -> bool:
        return all(v == 0 for v in self.in_flight.values())


async def _break(server: MemoryFrameStream, how: str) -> None:
    """A dead node (the head is in, no ack ever comes) or a stream that breaks."""
    if how == "reset":
        server.reset()
    await asyncio.Event().wait()


FAST_ACK = HttpLimits(tunnel_ack_timeout=0.2)


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, FakeBackend]]:
    async with (
        FakeBackend(models=["m"], chunks=4) as local_m,
        FakeBackend(models=["m"], chunks=4) as remote_m,
        FakeBackend(models=["other"], chunks=4) as remote_other,
    ):
        yield {"local_m": local_m, "remote_m": remote_m, "remote_other": remote_other}


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    async with Forwarder(connect_timeout=2.0, read_timeout=10.0) as fwd:
        yield fwd


@pytest.fixture
def mesh(forwarder: Forwarder) -> MemoryMesh:
    return MemoryMesh(forwarder)


MakeClient = Callable[..., Any]


@pytest.fixture
async def make_client(mesh: MemoryMesh) -> AsyncIterator[MakeClient]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(**options: Any) -> TestClient[web.Request, web.Application]:
        app = web.Application(middlewares=[openai_error_middleware])
        add_proxy_routes(app, mesh, **options)
        client = TestClient(TestServer(app))  # TestServer runs with handler_cancellation=True
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    for task in mesh.tasks:
        task.cancel()
    await asyncio.gather(*mesh.tasks, return_exceptions=True)
