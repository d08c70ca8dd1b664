"""The local API guard (meshllm.proxy.guard): its helpers, and its middleware and response
hook over a small aiohttp app, through aiohttp's test client.

Each test reproduces what a web page on this machine could send (a rebound ``Host``, a
``text/plain`` or form POST, a foreign ``Origin``) and checks it is refused before any
handler runs; and that no response carries a cookie or a CORS grant it should not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from meshllm.errors import ConfigError
from meshllm.proxy import Forwarder, add_proxy_routes, openai_error_middleware
from meshllm.proxy import guard as guard_module
from meshllm.proxy.forward import RESPONSE_DROP, RESPONSE_DROP_PREFIXES, filter_headers
from meshllm.proxy.guard import (
    GuardSettings,
    host_allowed,
    host_name,
    install_guard,
    is_json_media_type,
    normalize_origin,
)
from meshllm.testing import FakeBackend

from .test_routes import SELF, MemoryMesh

BROWSER_HEADERS = {
    "Set-Cookie": "session=stolen; Path=/",
    "Set-Cookie2": "old=1",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Credentials": "true",
}

# --- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:9337", "localhost"),
        ("localhost.:9337", "localhost"),
        ("127.0.0.1:9337", "127.0.0.1"),
        ("127.0.0.1:", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::1]:9337", "::1"),
        ("evil.example", "evil.example"),
        ("::1", None),
        ("[::1", None),
        ("[::1]x", None),
        ("localhost:port", None),
        ("a:1:2", None),
        ("", None),
        (":9337", None),
    ],
)
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_host_allowed() -> None:
    for name in ("localhost", "127.0.0.1", "127.0.0.2", "::1"):
        assert host_allowed(name)
    for name in ("evil.example", "localhost.evil.example", "10.0.0.5", "0.0.0.0", "::"):
        assert not host_allowed(name)
    assert host_allowed("my-box.lan", {"my-box.lan"})
    assert host_allowed("10.0.0.5", (), {"10.0.0.5"})
    assert host_allowed("fe80::1", (), {"fe80::1%eth0"})


def test_normalize_origin() -> None:
    assert normalize_origin("http://OK.example/") == "http://ok.example"
    assert normalize_origin("http://ok.example:80") == "http://ok.example"
    assert normalize_origin("https://ok.example:443") == "https://ok.example"
    assert normalize_origin("http://localhost:3000") == "http://localhost:3000"
    assert normalize_origin("http://[::1]:3000") == "http://[::1]:3000"
    for bad in ("*", "null", "ok.example", "http://ok.example/path", "http://", "http://a:x"):
        with pytest.raises(ConfigError):
            normalize_origin(bad)


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="cors-origin"):
        GuardSettings.create(cors_origins=["*"])
    with pytest.raises(ConfigError, match="allowed-host"):
        GuardSettings.create(allowed_hosts=["not a:host:name"])
    settings = GuardSettings.create(["My-Box.lan:9337"], ["http://OK.example"])
    assert settings.allowed_hosts == {"my-box.lan"}
    assert settings.cors_origins == {"http://ok.example"}


def test_is_json_media_type() -> None:
    assert is_json_media_type("application/json")
    assert is_json_media_type("Application/JSON; charset=utf-8")
    for other in ("", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        assert not is_json_media_type(other)
    assert not is_json_media_type("application/json-seq")


def test_filter_headers_drops_browser_facing_response_headers() -> None:
    kept = filter_headers(
        [*BROWSER_HEADERS.items(), ("Content-Type", "application/json"), ("X-Other", "1")],
        RESPONSE_DROP,
        RESPONSE_DROP_PREFIXES,
    )
    assert kept == {"Content-Type": "application/json", "X-Other": "1"}


# --- the middleware and hook over a small app -----------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.count = 0


def small_app(settings: GuardSettings, calls: Calls) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        calls.count += 1
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.Response:
        calls.count += 1
        return web.json_response({"got": json.loads(await request.read())})

    async def browser_headers(request: web.Request) -> web.Response:
        return web.json_response({}, headers=BROWSER_HEADERS)

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **BROWSER_HEADERS})
        await resp.prepare(request)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application(middlewares=[openai_error_middleware])
    install_guard(app, settings)
    app.router.add_get("/ok", ok)
    app.router.add_post("/echo", echo)
    app.router.add_get("/browser-headers", browser_headers)
    app.router.add_get("/stream", stream)
    app.router.add_get("/boom", boom)
    return app


MakeClient = Callable[..., Any]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(
        settings: GuardSettings | None = None, calls: Calls | None = None
    ) -> TestClient[web.Request, web.Application]:
        app = small_app(settings or GuardSettings(), calls or Calls())
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def assert_refused(resp: Any, status: int, code: str) -> None:
    assert resp.status == status
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert {"message", "type"} <= set(body["error"])
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert not any(k.lower().startswith("access-control-") for k in resp.headers)


async def test_rebound_host_gets_421_and_reaches_no_handler(make_client: MakeClient) -> None:
    calls = Calls()
    client = await make_client(calls=calls)
    for host in ("evil.example", "evil.example:9337", "localhost.evil.example", "10.1.2.3"):
        await assert_refused(
            await client.get("/ok", headers={"Host": host}), 421, "misdirected_request"
        )
        resp = await client.post("/echo", json={"a": 1}, headers={"Host": host})
        await assert_refused(resp, 421, "misdirected_request")
    assert calls.count == 0
    for host in ("localhost", "localhost:1", "127.0.0.1", "127.0.0.1:9337", "[::1]:9337"):
        resp = await client.get("/ok", headers={"Host": host})
        assert resp.status == 200, host
    assert calls.count == 5


async def test_allowed_host_names_and_missing_host(make_client: MakeClient) -> None:
    client = await make_client(GuardSettings.create(["my-box.lan"]))
    assert (await client.get("/ok", headers={"Host": "My-Box.lan:9337"})).status == 200
    assert (await client.get("/ok", headers={"Host": "other.lan"})).status == 421

    # An HTTP/1.0 request with no Host at all names nothing: refused too.
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /ok HTTP/1.0\r\n\r\n")
    await writer.drain()
    head = await reader.readline()
    writer.close()
    assert head.split()[1] == b"421"


async def test_listen_all_accepts_the_interface_addresses(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    addresses = {"192.168.7.20", "fe80::1"}
    reads: list[int] = []

    def interfaces() -> frozenset[str]:
        reads.append(1)
        return frozenset(addresses)

    only_local = await make_client(GuardSettings.create(interfaces=interfaces))
    assert (await only_local.get("/ok", headers={"Host": "192.168.7.20:9337"})).status == 421
    assert not reads  # not listening on all interfaces: never read

    client = await make_client(GuardSettings.create(listen_all=True, interfaces=interfaces))
    assert (await client.get("/ok", headers={"Host": "192.168.7.20:9337"})).status == 200
    assert (await client.get("/ok", headers={"Host": "[fe80::1]:9337"})).status == 200
    assert (await client.get("/ok", headers={"Host": "evil.example"})).status == 421
    assert (await client.get("/ok", headers={"Host": "10.9.9.9"})).status == 421
    assert len(reads) == 1  # a miss re-reads at most every INTERFACE_REFRESH_S

    addresses.add("10.9.9.9")  # a new address (DHCP)
    monkeypatch.setattr(guard_module, "INTERFACE_REFRESH_S", 0.0)
    assert (await client.get("/ok", headers={"Host": "10.9.9.9"})).status == 200
    assert (await client.get("/ok", headers={"Host": "evil.example"})).status == 421
    assert len(reads) == 2  # a name never makes it re-read


async def test_post_that_is_not_json_gets_415_and_reaches_no_handler(
    make_client: MakeClient,
) -> None:
    calls = Calls()
    client = await make_client(calls=calls)
    body = '{"model": "m", "messages": []}'
    plain = await client.post("/echo", data=body, headers={"Content-Type": "text/plain"})
    await assert_refused(plain, 415, "unsupported_media_type")
    form = await client.post("/echo", data={"model": "m"})  # x-www-form-urlencoded
    await assert_refused(form, 415, "unsupported_media_type")
    multipart = FormData()
    multipart.add_field("file", b"x", filename="x.txt")
    await assert_refused(await client.post("/echo", data=multipart), 415, "unsupported_media_type")
    bare = await client.post("/echo", data=body.encode(), skip_auto_headers=["Content-Type"])
    await assert_refused(bare, 415, "unsupported_media_type")
    assert calls.count == 0

    ok = await client.post(
        "/echo", data=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status == 200 and (await ok.json())["got"]["model"] == "m"
    assert (await client.post("/echo", json={"a": 1})).status == 200


async def test_any_origin_is_refused_when_none_is_configured(make_client: MakeClient) -> None:
    calls = Calls()
    client = await make_client(calls=calls)
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9337"):
        headers = {"Origin": origin}
        await assert_refused(await client.get("/ok", headers=headers), 403, "origin_not_allowed")
        resp = await client.post("/echo", json={}, headers=headers)
        await assert_refused(resp, 403, "origin_not_allowed")
        preflight = await client.options(
            "/echo", headers={**headers, "Access-Control-Request-Method": "POST"}
        )
        await assert_refused(preflight, 403, "origin_not_allowed")
    assert calls.count == 0
    # No CORS header and no Vary on a plain request either.
    resp = await client.get("/ok")
    assert resp.status == 200 and "Vary" not in resp.headers
    assert not any(k.lower().startswith("access-control-") for k in resp.headers)


async def test_the_nodes_own_page_may_post_and_no_other_port_may(make_client: MakeClient) -> None:
    """The dashboard at / is the node's own origin: its fetches carry Origin
    http://<the Host it asked>, which no other page can send (DNS rebinding is stopped
    by the Host check, and another port is another origin)."""
    calls = Calls()
    client = await make_client(calls=calls)
    own = f"http://127.0.0.1:{client.port}"
    assert (await client.post("/echo", json={"a": 1}, headers={"Origin": own})).status == 200
    assert (await client.get("/ok", headers={"Origin": own})).status == 200
    other = f"http://127.0.0.1:{client.port + 1}"
    resp = await client.post("/echo", json={}, headers={"Origin": other})
    await assert_refused(resp, 403, "origin_not_allowed")
    named = await client.post(
        "/echo", json={}, headers={"Origin": own, "Host": "evil.example"}
    )  # a rebinding page: its Host is its own name
    await assert_refused(named, 421, "misdirected_request")
    assert calls.count == 2


async def test_configured_origin_gets_preflight_and_its_own_allow_origin(
    make_client: MakeClient,
) -> None:
    calls = Calls()
    client = await make_client(GuardSettings.create(cors_origins=["http://ok.example"]), calls)
    preflight = await client.options(
        "/echo",
        headers={
            "Origin": "http://ok.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization, x-stainless-os",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://ok.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = preflight.headers["Access-Control-Allow-Headers"]
    assert allowed == "content-type, authorization, x-stainless-os"
    assert "Origin" in preflight.headers["Vary"]
    assert calls.count == 0  # a preflight runs no handler

    resp = await client.post("/echo", json={"a": 1}, headers={"Origin": "http://ok.example"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "http://ok.example"
    assert resp.headers["Vary"] == "Origin"
    assert "x-meshllm-model" in resp.headers["Access-Control-Expose-Headers"]

    other = await client.post("/echo", json={}, headers={"Origin": "http://evil.example"})
    assert other.status == 403
    other_preflight = await client.options(
        "/echo", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert other_preflight.status == 403
    assert "Access-Control-Allow-Origin" not in other_preflight.headers

    # Without an Origin: served, told that the answer varies with it, no grant.
    plain = await client.get("/ok")
    assert plain.status == 200 and plain.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Origin" not in plain.headers
    assert calls.count == 2


async def test_no_cookie_or_foreign_cors_header_ever_leaves(make_client: MakeClient) -> None:
    client = await make_client(GuardSettings.create(cors_origins=["http://ok.example"]))
    for path in ("/browser-headers", "/stream"):
        for headers in ({}, {"Origin": "http://ok.example"}):
            resp = await client.get(path, headers=headers)
            assert resp.status == 200
            await resp.read()
            assert "Set-Cookie" not in resp.headers and "Set-Cookie2" not in resp.headers
            assert "Access-Control-Allow-Credentials" not in resp.headers
            assert resp.headers.get("Access-Control-Allow-Origin") == headers.get("Origin")
            assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_nosniff_on_errors_too(make_client: MakeClient) -> None:
    client = await make_client()
    for path, status in (("/nothing", 404), ("/boom", 500)):
        resp = await client.get(path)
        assert resp.status == status
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    resp = await client.post("/ok", json={})
    assert resp.status == 405
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


# --- the proxy routes behind the guard ----------------------------------------------------------


@pytest.fixture
async def proxy_client() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Any]]:
    """The /v1 routes behind the guard: model ``m`` local, ``p`` on a peer (a tunnel);
    both backends send cookies and ``Access-Control-Allow-Origin: *``."""
    async with (
        FakeBackend(models=["m"], headers=BROWSER_HEADERS) as local,
        FakeBackend(models=["p"], headers=BROWSER_HEADERS) as remote,
        Forwarder(connect_timeout=2.0, read_timeout=10.0) as forwarder,
    ):
        mesh = MemoryMesh(forwarder)
        mesh.replicas = {(SELF, "m"): local.url, ("peer", "p"): remote.url}
        app = web.Application(middlewares=[openai_error_middleware])
        install_guard(app, GuardSettings())
        add_proxy_routes(app, mesh)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            yield client, (local, remote)
        finally:
            await client.close()
            for task in mesh.tasks:
                task.cancel()
            await asyncio.gather(*mesh.tasks, return_exceptions=True)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_backend_and_peer_cookies_and_cors_grants_are_dropped(proxy_client: Any) -> None:
    client, (local, remote) = proxy_client
    for model in ("m", "p"):
        for stream in (False, True):
            resp = await client.post("/v1/chat/completions", json=chat(model, stream=stream))
            assert resp.status == 200, await resp.text()
            await resp.read()
            assert resp.headers["x-meshllm-model"] == model
            for name in BROWSER_HEADERS:
                assert name not in resp.headers, (model, stream, name)
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert local.requests == 2 and remote.requests == 2


async def test_text_plain_chat_is_refused_before_the_backend(proxy_client: Any) -> None:
    client, (local, remote) = proxy_client
    resp = await client.post(
        "/v1/chat/completions", data=json.dumps(chat("m")), headers={"Content-Type": "text/plain"}
    )
    await assert_refused(resp, 415, "unsupported_media_type")
    assert local.requests == 0 and remote.requests == 0


@pytest.mark.parametrize("body", ["[" * 100_000, '{"model": "m", "x": ' + "[" * 100_000])
async def test_deeply_nested_json_is_400_not_500(proxy_client: Any, body: str) -> None:
    client, (local, _) = proxy_client
    resp = await client.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_json"
    assert local.requests == 0
    ok = await client.post("/v1/chat/completions", json=chat("m"))
    assert ok.status == 200
