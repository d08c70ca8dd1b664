"""External endpoints: OpenAI-compatible and Ollama servers, polled for health."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from meshllm.serving import ExternalEndpoint, LlamaServer, ModelFile
from meshllm.serving.external import OLLAMA, OPENAI, normalize_url

POLL = 0.05  # seconds between polls in these tests


class FakeServer:
    """An aiohttp server that can go down (port closed) and come back on the same port."""

    def __init__(self, routes: dict[str, Callable[[], object]]) -> None:
        self.routes = routes
        self.requests: list[str] = []
        self.port = _free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        body = self.routes.get(request.path)
        if body is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(body())

    async def up(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition``; generous timeout, no timing asserted."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def openai_models(*names: str) -> Callable[[], object]:
    return lambda: {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}


def ollama_tags(*names: str) -> Callable[[], object]:
    return lambda: {"models": [{"name": n, "model": n, "size": 1} for n in names]}


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeServer]:
    server = FakeServer({"/v1/models": openai_models("qwen", "llama")})
    await server.up()
    yield server
    await server.down()


@pytest.fixture
async def ollama_server() -> AsyncIterator[FakeServer]:
    server = FakeServer({"/api/tags": ollama_tags("llama3.2:latest", "qwen2.5:7b")})
    await server.up()
    yield server
    await server.down()


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://h:8080", "http://h:8080"),
        ("http://h:8080/", "http://h:8080"),
        ("http://h:8080/v1", "http://h:8080"),
        ("http://h:8080/v1/", "http://h:8080"),
        ("https://h/openai/v1", "https://h/openai"),
        ("h:11434", "http://h:11434"),
    ],
)
def test_normalize_url(url: str, root: str) -> None:
    assert normalize_url(url) == root


async def test_external_openai_server(openai_server: FakeServer) -> None:
    endpoint = ExternalEndpoint(openai_server.url + "/v1/", interval=POLL)
    await endpoint.start()
    try:
        assert endpoint.healthy
        assert endpoint.kind == OPENAI
        assert endpoint.models == ["qwen", "llama"]
        assert endpoint.base_url == openai_server.url
    finally:
        await endpoint.stop()


async def test_external_ollama_server(ollama_server: FakeServer) -> None:
    endpoint = ExternalEndpoint(ollama_server.url, interval=POLL)
    await endpoint.start()
    try:
        assert endpoint.healthy
        assert endpoint.kind == OLLAMA
        assert endpoint.models == ["llama3.2:latest", "qwen2.5:7b"]
        assert endpoint.base_url == ollama_server.url
    finally:
        await endpoint.stop()


async def test_external_llama_server_shape_is_openai() -> None:
    # llama-server answers /api/tags too, with "models" and "data" in one body.
    both = {
        "models": [{"name": "gemma", "model": "gemma"}],
        "object": "list",
        "data": [{"id": "gemma", "object": "model"}],
    }
    server = FakeServer({"/api/tags": lambda: both, "/v1/models": lambda: both})
    await server.up()
    endpoint = ExternalEndpoint(server.url, interval=POLL)
    try:
        await endpoint.start()
        assert (endpoint.kind, endpoint.models) == (OPENAI, ["gemma"])
    finally:
        await endpoint.stop()
        await server.down()


@pytest.mark.parametrize("kind", [OPENAI, OLLAMA])
async def test_external_down_and_up(kind: str) -> None:
    routes = (
        {"/v1/models": openai_models("m1")} if kind == OPENAI else {"/api/tags": ollama_tags("m1")}
    )
    server = FakeServer(routes)
    await server.up()
    changes: list[tuple[bool, list[str]]] = []
    endpoint = ExternalEndpoint(
        server.url, on_change=lambda e: changes.append((e.healthy, list(e.models))), interval=POLL
    )
    try:
        await endpoint.start()
        assert endpoint.healthy and endpoint.kind == kind

        await server.down()
        await until(lambda: not endpoint.healthy)
        assert endpoint.models == ["m1"]  # the last known list is kept while down

        await server.up()
        await until(lambda: endpoint.healthy)
        assert endpoint.kind == kind
        assert changes == [(True, ["m1"]), (False, ["m1"]), (True, ["m1"])]
    finally:
        await endpoint.stop()
        await server.down()


async def test_external_model_list_change(openai_server: FakeServer) -> None:
    seen: list[list[str]] = []
    endpoint = ExternalEndpoint(
        openai_server.url, on_change=lambda e: seen.append(list(e.models)), interval=POLL
    )
    await endpoint.start()
    try:
        openai_server.routes["/v1/models"] = openai_models("qwen", "llama", "phi")
        await until(lambda: len(seen) == 2)
        assert seen == [["qwen", "llama"], ["qwen", "llama", "phi"]]
    finally:
        await endpoint.stop()


async def test_external_start_while_down() -> None:
    server = FakeServer({"/v1/models": openai_models("late")})
    endpoint = ExternalEndpoint(server.url, interval=POLL)
    await endpoint.start()  # nothing listens yet: not an error
    try:
        assert not endpoint.healthy and endpoint.models == [] and endpoint.kind is None
        await server.up()
        await until(lambda: endpoint.healthy)
        assert endpoint.models == ["late"]
    finally:
        await endpoint.stop()
        await server.down()


async def test_external_wrong_shape_is_unhealthy() -> None:
    server = FakeServer({"/v1/models": lambda: {"hello": "world"}, "/api/tags": lambda: [1, 2]})
    await server.up()
    endpoint = ExternalEndpoint(server.url, interval=POLL)
    try:
        await endpoint.start()
        assert not endpoint.healthy
    finally:
        await endpoint.stop()
        await server.down()


async def test_external_callback_error_does_not_stop_polling(openai_server: FakeServer) -> None:
    calls: list[bool] = []

    def broken(endpoint: ExternalEndpoint) -> None:
        calls.append(endpoint.healthy)
        raise ValueError("callback bug")

    endpoint = ExternalEndpoint(openai_server.url, on_change=broken, interval=POLL)
    await endpoint.start()
    try:
        await openai_server.down()
        await until(lambda: calls == [True, False])
    finally:
        await endpoint.stop()


async def test_external_api_key_sent() -> None:
    seen: list[str | None] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"data": [{"id": "x"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    endpoint = ExternalEndpoint(f"http://127.0.0.1:{port}", api_key="sk-test", interval=POLL)
    try:
        await endpoint.start()
        assert endpoint.healthy
        assert seen[-1] == "Bearer sk-test"
        assert endpoint.headers == {"Authorization": "Bearer sk-test"}
    finally:
        await endpoint.stop()
        await runner.cleanup()


@pytest.mark.e2e
async def test_external_real_llama_server(
    llama_server_bin: Path, default_model: ModelFile, tmp_path: Path
) -> None:
    server = LlamaServer(default_model, llama_server_bin, log_dir=tmp_path)
    await server.start()
    try:
        await server.wait_ready(600)
        endpoint = ExternalEndpoint(server.base_url + "/v1", interval=POLL)
        await endpoint.start()
        try:
            assert (endpoint.healthy, endpoint.kind) == (True, OPENAI)
            assert endpoint.models == [default_model.name]
        finally:
            await endpoint.stop()
    finally:
        await server.stop()
