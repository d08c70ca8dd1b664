"""External endpoints: OpenAI-compatible and Ollama servers, polled for health."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from meshllm.gossip.announcement import MAX_MODELS
from meshllm.serving import ExternalEndpoint, LlamaServer, ModelFile
from meshllm.serving.endpoint_health import DOWN, PROBATION, UP
from meshllm.serving.external import (
    MAX_RESPONSE_BYTES,
    OLLAMA,
    OPENAI,
    normalize_url,
    parse_ollama_models,
    parse_openai_models,
    public_url,
)
from meshllm.testing.fake_backend import FakeBackend
from meshllm.testing.fake_ollama import FakeOllama

POLL = 0.05  # seconds between polls in these tests
NEVER = 3600.0  # a poll interval for tests that poll by hand
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeServer:
    """An aiohttp server that can go down (port closed) and come back on the same port."""

    def __init__(
        self, routes: dict[str, Callable[[], object]], raw: dict[str, Handler] | None = None
    ) -> None:
        self.routes = routes
        self.raw = raw or {}
        """Handlers that write their own answer (hostile servers)."""
        self.requests: list[str] = []
        self.port = _free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        if request.path in self.raw:
            return await self.raw[request.path](request)
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
        assert endpoint.auth_headers() == {"Authorization": "Bearer sk-test"}
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


# --- health: up, probation, down ----------------------------------------------------------


async def test_external_health_down_after_three_probation_up_after_two() -> None:
    server = FakeOllama(models=["llama3.2:latest"])
    await server.start()
    endpoint = ExternalEndpoint(server.url, interval=NEVER)  # polled by hand below
    try:
        await endpoint.start()
        assert (endpoint.health.state, endpoint.healthy) == (UP, True)
        assert endpoint.status()["latency_ms"] is not None

        await server.stop()
        states = []
        for _ in range(3):
            await endpoint.poll()
            states.append((endpoint.health.state, endpoint.healthy))
        assert states == [(UP, True), (UP, True), (DOWN, False)]
        assert "/api/tags" in endpoint.status()["last_error"]
        assert endpoint.models == ["llama3.2:latest"]  # kept while down

        await server.start()  # the same port again
        await endpoint.poll()
        assert (endpoint.health.state, endpoint.healthy) == (PROBATION, False)
        await endpoint.poll()
        assert (endpoint.health.state, endpoint.healthy) == (UP, True)
    finally:
        await endpoint.stop()
        await server.stop()


async def test_external_health_in_the_background(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshllm.serving.external")
    server = FakeOllama(models=["m1"])
    await server.start()
    changes: list[bool] = []
    endpoint = ExternalEndpoint(
        server.url, on_change=lambda e: changes.append(e.healthy), interval=POLL
    )
    try:
        await endpoint.start()
        await server.stop()
        await until(lambda: not endpoint.healthy)
        assert endpoint.health.failures >= 3
        await server.start()
        await until(lambda: endpoint.healthy)
        assert changes == [True, False, True]
        moves = [r.getMessage().split(": ")[1].split()[0] for r in caplog.records]
        assert moves == [UP, DOWN, PROBATION, UP]
    finally:
        await endpoint.stop()
        await server.stop()


# --- kinds and discovery -------------------------------------------------------------------


async def test_external_ollama_details_warm_from_ps() -> None:
    models = ["llama3.2:latest", "qwen2.5:7b"]
    async with FakeOllama(models=models, warm=["llama3.2:latest"]) as server:
        changes: list[dict[str, object]] = []
        endpoint = ExternalEndpoint(
            server.url, on_change=lambda e: changes.append(e.details()), interval=NEVER
        )
        try:
            await endpoint.start()
            assert endpoint.kind == OLLAMA
            details = endpoint.details()
            assert details["llama3.2:latest"]["warm"] is True
            assert details["qwen2.5:7b"]["warm"] is False
            tags = (await _get(server.url + "/api/tags"))["models"]
            assert details["qwen2.5:7b"] == {
                "warm": False,
                "size": tags[1]["size"],
                "family": "qwen",
                "quant": "Q4_K_M",
                "params": "3.2B",
            }
            assert len(changes) == 1  # start() reported once, with the warm set known

            await _chat(server.url, "qwen2.5:7b")  # Ollama loads it
            await endpoint.refresh()
            assert endpoint.details()["qwen2.5:7b"]["warm"] is True
            assert len(changes) == 2
        finally:
            await endpoint.stop()


async def test_external_discovery_in_the_background() -> None:
    async with FakeOllama(models=["a", "b"]) as server:
        endpoint = ExternalEndpoint(server.url, interval=POLL, discovery_interval=POLL)
        try:
            await endpoint.start()
            assert [d["warm"] for d in endpoint.details().values()] == [False, False]
            server.loaded.add("b")
            await until(lambda: endpoint.details()["b"]["warm"])
            assert not endpoint.details()["a"]["warm"]
        finally:
            await endpoint.stop()


async def test_external_ollama_without_ps_is_warm() -> None:
    server = FakeServer({"/api/tags": ollama_tags("m1")})  # /api/ps: 404
    await server.up()
    endpoint = ExternalEndpoint(server.url, interval=NEVER)
    try:
        await endpoint.start()
        assert endpoint.healthy and endpoint.details()["m1"]["warm"] is True
    finally:
        await endpoint.stop()
        await server.down()


async def test_external_openai_details() -> None:
    async with FakeBackend(models=["qwen", "llama"]) as backend:
        endpoint = ExternalEndpoint(backend.url, kind="openai", interval=NEVER)
        try:
            await endpoint.start()
            assert endpoint.details() == {
                m: {"warm": True, "size": None, "family": None, "quant": None, "params": None}
                for m in ("qwen", "llama")
            }
        finally:
            await endpoint.stop()


def test_external_llama_server_meta_size() -> None:
    found = parse_openai_models({"data": [{"id": "g", "meta": {"size": 123, "n_params": 7}}]})
    assert found is not None and found.details["g"].size == 123


async def test_external_explicit_kind_asks_only_its_api() -> None:
    async with FakeOllama(models=["m1"]) as server:
        endpoint = ExternalEndpoint(server.url, kind="openai", interval=NEVER)
        try:
            await endpoint.start()
            assert (endpoint.kind, endpoint.healthy, endpoint.models) == (OPENAI, True, ["m1"])
            assert endpoint.details()["m1"]["warm"] is True  # /v1/models cannot say
            assert set(server.requests) == {"GET /v1/models"}
        finally:
            await endpoint.stop()
    async with FakeBackend(models=["m1"]) as backend:
        endpoint = ExternalEndpoint(backend.url, kind="ollama", interval=NEVER)
        try:
            await endpoint.start()
            assert endpoint.kind == OLLAMA and not endpoint.healthy
            assert endpoint.status()["last_error"] == "/api/tags: HTTP 404"
        finally:
            await endpoint.stop()


def test_external_bad_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        ExternalEndpoint("http://h:1", kind="vllm")


# --- API keys and credentials --------------------------------------------------------------


async def test_external_api_key_required(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = "sk-very-secret-123"
    async with FakeOllama(models=["m1"], require_key=key) as server:
        without = ExternalEndpoint(server.url, interval=NEVER)
        wrong = ExternalEndpoint(server.url, api_key="sk-wrong", interval=NEVER)
        right = ExternalEndpoint(server.url, api_key=key, name="box", interval=NEVER)
        try:
            for endpoint in (without, wrong, right):
                await endpoint.start()
            assert not without.healthy and "HTTP 401" in without.status()["last_error"]
            assert not wrong.healthy
            assert right.healthy and right.models == ["m1"]
            assert server.last_headers["Authorization"] == f"Bearer {key}"
            assert right.auth_headers() == {"Authorization": f"Bearer {key}"}
            assert without.auth_headers() == {}
            status = right.status()
            assert (status["name"], status["has_api_key"]) == ("box", True)
            # What the proxy does: forward with auth_headers().
            answer = await _chat(server.url, "m1", headers=right.auth_headers())
            assert answer["choices"][0]["message"]["content"] == "[m1] hi"
            for text in (repr(right), str(status), caplog.text):
                assert key not in text
        finally:
            for endpoint in (without, wrong, right):
                await endpoint.stop()


def test_external_bad_api_key() -> None:
    with pytest.raises(ValueError, match="printable") as info:
        ExternalEndpoint("http://h:1", api_key="sk-1\r\nX-Evil: 1")
    assert "sk-1" not in str(info.value)


async def test_external_url_credentials_not_shown() -> None:
    port = _free_port()  # nothing listens: the error names the host
    endpoint = ExternalEndpoint(f"http://user:pw-secret@127.0.0.1:{port}", interval=NEVER)
    try:
        await endpoint.start()
        status = endpoint.status()
        assert status["url"] == f"http://127.0.0.1:{port}"
        assert "pw-secret" not in repr(endpoint) + str(status)
    finally:
        await endpoint.stop()
    assert public_url("https://a:b@h/x") == "https://h/x"
    assert public_url("https://h/x") == "https://h/x"


# --- a hostile server is bounded ----------------------------------------------------------


async def _huge_chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        await resp.write(b'{"data": [')
        for _ in range(1000):  # 64 MiB, no Content-Length
            await resp.write(b'{"id": "x"},' * 5000)
    except (ConnectionError, RuntimeError):
        pass  # the client stopped reading
    return resp


async def _sleepy(request: web.Request) -> web.Response:
    await asyncio.sleep(2)  # past the timeout; short, as the server's cleanup waits for it
    return web.json_response({"data": []})


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("http://127.0.0.1:9/v1/models")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            lambda r: _async(web.Response(body=b" " * (MAX_RESPONSE_BYTES + 1))),
            "answer over 1048576 bytes",
        ),
        (_huge_chunked, "answer over 1048576 bytes"),
        (lambda r: _async(web.Response(body=b"[" * 500_000)), "not JSON"),
        (lambda r: _async(web.Response(body=b"\xff\xfe garbage")), "not JSON"),
        (_redirect, "HTTP 302"),
    ],
)
async def test_external_hostile_answer_is_a_failed_poll(raw: Handler, error: str) -> None:
    server = FakeServer({}, raw={"/v1/models": raw})
    await server.up()
    endpoint = ExternalEndpoint(server.url, kind="openai", interval=NEVER)
    try:
        async with asyncio.timeout(10):
            await endpoint.start()
        assert not endpoint.healthy
        assert endpoint.status()["last_error"] == f"/v1/models: {error}"
    finally:
        await endpoint.stop()
        await server.down()


async def test_external_slow_server_times_out() -> None:
    server = FakeServer({}, raw={"/v1/models": _sleepy, "/api/tags": _sleepy})
    await server.up()
    endpoint = ExternalEndpoint(server.url, timeout=0.2, interval=NEVER)
    try:
        started = time.monotonic()
        await endpoint.start()
        assert time.monotonic() - started < 1.5  # two requests, 0.2 s each
        assert not endpoint.healthy
        assert "no answer within 0.2 s" in endpoint.status()["last_error"]
    finally:
        await endpoint.stop()
        await server.down()


async def test_external_many_models_are_capped() -> None:
    server = FakeServer({"/v1/models": openai_models(*(f"m{i}" for i in range(10_000)))})
    await server.up()
    endpoint = ExternalEndpoint(server.url, kind="openai", interval=NEVER)
    try:
        await endpoint.start()
        assert endpoint.healthy
        assert endpoint.models == [f"m{i}" for i in range(MAX_MODELS)]
        assert endpoint.status()["models_dropped"] == 10_000 - MAX_MODELS
        assert len(endpoint.details()) == MAX_MODELS
    finally:
        await endpoint.stop()
        await server.down()


def test_external_bad_names_and_details_dropped() -> None:
    body = {
        "models": [
            {"name": "good:latest", "size": 7, "details": {"family": "llama"}},
            {"name": "../../etc/passwd"},
            {"name": "x\ny"},
            {"name": "a" * 500},
            {"name": 123},
            {"name": ""},
            "not an object",
            {"name": "good:latest"},  # a duplicate
            {
                "name": "odd",
                "size": "huge",
                "details": {"family": "<script>", "quantization_level": ["Q4"]},
            },
            {"name": "neg", "size": -1, "details": "nope"},
            {"name": "bool", "size": True},
        ]
    }
    found = parse_ollama_models(body)
    assert found is not None
    assert found.models == ["good:latest", "odd", "neg", "bool"]
    assert found.dropped == 7
    assert found.details["good:latest"].size == 7
    assert found.details["good:latest"].family == "llama"
    for name in ("odd", "neg", "bool"):
        info = found.details[name]
        assert (info.size, info.family, info.quant, info.params) == (None, None, None, None)
    # /v1/models with junk entries
    junk = parse_openai_models({"data": [{"id": "ok"}, {"id": None}, 5, {"id": "/abs"}]})
    assert junk is not None and junk.models == ["ok"] and junk.dropped == 3


# --- the fake Ollama itself ---------------------------------------------------------------


async def test_fake_ollama_routes() -> None:
    async with FakeOllama(models=["llama3.2:latest"]) as server:
        assert (await _get(server.url + "/api/version"))["version"]
        assert (await _get(server.url + "/api/ps")) == {"models": []}
        tag = (await _get(server.url + "/api/tags"))["models"][0]
        assert tag["name"] == tag["model"] == "llama3.2:latest"
        assert set(tag["details"]) >= {"format", "family", "parameter_size", "quantization_level"}

        answer = await _chat(server.url, "llama3.2:latest")
        assert answer["object"] == "chat.completion" and answer["model"] == "llama3.2:latest"
        [loaded] = (await _get(server.url + "/api/ps"))["models"]
        assert loaded["name"] == "llama3.2:latest" and "expires_at" in loaded

        async with aiohttp.ClientSession() as session:
            body = {"model": "llama3.2:latest", "stream": True, "messages": [_HI]}
            async with session.post(server.url + "/v1/chat/completions", json=body) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = [line for line in (await resp.text()).split("\n\n") if line]
            assert events[-1] == "data: [DONE]"
            chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            assert text == "[llama3.2:latest] hi"
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

            body = {"model": "llama3.2:latest", "messages": [_HI], "keep_alive": 0}
            async with session.post(server.url + "/api/chat", json=body) as resp:
                lines = [json.loads(x) for x in (await resp.text()).splitlines()]
            assert lines[-1]["done"] is True
            assert "".join(x["message"]["content"] for x in lines) == "[llama3.2:latest] hi"
            assert server.loaded == set()  # keep_alive 0 unloads

            body = {"model": "llama3.2:latest", "messages": [_HI], "stream": False}
            async with session.post(server.url + "/api/chat", json=body) as resp:
                one = await resp.json()
            assert one["message"]["content"] == "[llama3.2:latest] hi" and one["done"]

            body = {"model": "missing", "messages": [_HI]}
            async with session.post(server.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 404
                assert "not found" in (await resp.json())["error"]["message"]


async def test_fake_ollama_as_a_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshllm.testing.fake_ollama",
        "--port",
        "0",
        "--model",
        "qwen2.5:7b",
        "--warm",
        "qwen2.5:7b",
        "--require-key",
        "k1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            first = (await proc.stdout.readline()).decode().split()
            assert (await proc.stdout.readline()).decode().strip() == "ready"
        assert first[0] == "listening"
        url = first[1]
        endpoint = ExternalEndpoint(url, kind="ollama", api_key="k1", interval=NEVER)
        try:
            await endpoint.start()
            assert endpoint.healthy and endpoint.details()["qwen2.5:7b"]["warm"] is True
        finally:
            await endpoint.stop()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


_HI = {"role": "user", "content": "hi"}


async def _async(value: web.StreamResponse) -> web.StreamResponse:
    return value


async def _get(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _chat(url: str, model: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    body = {"model": model, "messages": [_HI]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()
