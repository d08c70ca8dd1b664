"""The /v1 routes through aiohttp's test client, over the in-memory mesh of
``tests/proxy/conftest.py``."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshllm.proxy import MODEL_HEADER, NODE_HEADER
from meshllm.proxy.routes import KEEP_ALIVE_HEADER
from meshllm.testing import FakeBackend
from tests.proxy.conftest import DEAD_URL, FAST_ACK, SELF, MakeClient, MemoryMesh


def chat(text: str = "hello", model: str | None = "m", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **extra}
    if model is not None:
        body["model"] = model
    return body


def sse_events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e]


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def assert_openai_error(payload: Any) -> None:
    assert set(payload) == {"error"}
    assert {"message", "type", "code"} <= set(payload["error"])


# --- /v1/models -----------------------------------------------------------------------------


async def test_models_lists_the_catalog_with_meshllm_fields(
    mesh: MemoryMesh, make_client: MakeClient
) -> None:
    mesh.replicas = {(SELF, "m"): DEAD_URL, ("peer", "m"): DEAD_URL}
    mesh.cold = ["cold"]
    client = await make_client()
    resp = await client.get("/v1/models")
    assert resp.status == 200
    listing = await resp.json()
    assert listing["object"] == "list"
    by_id = {entry["id"]: entry for entry in listing["data"]}
    assert set(by_id) == {"m", "cold"}
    for entry in listing["data"]:
        assert entry["object"] == "model"
        assert entry["owned_by"] == "meshllm"
        assert isinstance(entry["created"], int)
    # Without pool detail in the catalog, the state follows warm.
    assert by_id["m"]["meshllm"] == {"warm": True, "nodes": [SELF, "peer"], "state": "hot",
                                     "pool": []}  # fmt: skip
    assert by_id["cold"]["meshllm"] == {"warm": False, "nodes": [], "state": "cold", "pool": []}


async def test_a_keep_alive_is_checked_and_travels_to_the_serving_node(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {(SELF, "m"): backends["local_m"].url}
    client = await make_client()
    bad = await client.post("/v1/chat/completions", json=chat(keep_alive="forever"))
    assert bad.status == 400
    assert (await bad.json())["error"]["code"] == "invalid_keep_alive"
    for given, sent in (("\n5m ", "5m"), (300, "300"), (-1, "-1")):
        resp = await client.post("/v1/chat/completions", json=chat(keep_alive=given))
        assert resp.status == 200, await resp.text()
        assert mesh.keep_alives[-1] == sent
        assert backends["local_m"].last_headers.get(KEEP_ALIVE_HEADER) == sent
    resp = await client.post("/v1/chat/completions", json=chat())
    assert mesh.keep_alives[-1] is None
    assert KEEP_ALIVE_HEADER not in backends["local_m"].last_headers


async def test_a_cold_catalog_model_is_loaded_and_waited_for(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.cold = ["m"]
    mesh.loadable = {"m": "peer"}
    client = await make_client()
    pending = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat()))
    await asyncio.sleep(0.3)
    assert mesh.load_asks == ["m"] and not pending.done()  # asked once, waiting
    mesh.ready("peer", "m", backends["remote_m"].url)
    resp = await pending
    assert resp.status == 200 and resp.headers["x-meshllm-node"] == "peer"
    assert mesh.demand == ["m"]


async def test_a_cold_model_no_node_can_load_gets_503_saying_why(
    mesh: MemoryMesh, make_client: MakeClient
) -> None:
    mesh.cold = ["m"]
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert "no node can hold m (test)" in (await resp.json())["error"]["message"]


# --- routing to local and remote ---------------------------------------------------------------


async def test_local_target_answers(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {(SELF, "m"): backends["local_m"].url}
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat("hi"))
    assert resp.status == 200
    assert resp.headers[MODEL_HEADER] == "m"
    assert resp.headers[NODE_HEADER] == SELF
    answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] == "[m] hi"
    assert backends["local_m"].requests == 1
    assert mesh.idle()


async def test_remote_target_answers_through_the_tunnel(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    client = await make_client()
    resp = await client.post("/v1/completions", json={"model": "m", "prompt": "abc"})
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == "peer"
    assert (await resp.json())["choices"][0]["text"] == "[m] abc"
    assert backends["remote_m"].requests == 1
    assert mesh.idle()


async def test_embeddings_route(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    client = await make_client()
    resp = await client.post("/v1/embeddings", json={"model": "m", "input": ["a", "b"]})
    assert resp.status == 200
    assert len((await resp.json())["data"]) == 2


@pytest.mark.parametrize("node", [SELF, "peer"])
async def test_streaming_is_intact_and_unbuffered(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend], node: str
) -> None:
    url = backends["local_m" if node == SELF else "remote_m"].url
    mesh.replicas = {(node, "m"): url}
    client = await make_client()
    body = chat("a b c d e f", stream=True, fake={"chunks": 6, "delay": 0.02})
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers[MODEL_HEADER] == "m"
    reads = []
    async for data in resp.content.iter_any():
        reads.append(data)
    events = sse_events(b"".join(reads))
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) == 7
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "[m] a b c d e f"
    assert len(reads) >= 6  # events arrived apart, not as one buffered body
    assert mesh.idle()


async def test_least_loaded_replica_is_chosen(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {(SELF, "m"): backends["local_m"].url, ("peer", "m"): backends["remote_m"].url}
    mesh.announced_load = {SELF: 3}
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.headers[NODE_HEADER] == "peer"


# --- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["unreachable", "remote_backend_down", "local_backend_down"])
async def test_a_dead_first_target_is_retried_on_the_next(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend], failure: str
) -> None:
    good = ("good", "m")
    if failure == "unreachable":
        mesh.replicas = {("dead", "m"): backends["remote_m"].url}
        mesh.unreachable = {"dead"}
    elif failure == "remote_backend_down":
        mesh.replicas = {("dead", "m"): DEAD_URL}
    else:
        mesh.replicas = {(SELF, "m"): DEAD_URL}
    mesh.replicas[good] = backends["local_m"].url
    mesh.announced_load = {"good": 1}  # so the dead one is tried first
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == "good"
    assert sse_events(await resp.read())[-1] == b"data: [DONE]"
    assert [t.node_id for t in mesh.started] == [mesh.started[0].node_id, "good"]
    assert mesh.started[0].node_id != "good"
    assert mesh.idle()
    # No stream to a node: its data path is gone.  Its backend down: it said so itself.
    assert [node for node, _ in mesh.suspected] == (["dead"] if failure == "unreachable" else [])


@pytest.mark.parametrize("how", ["silent", "reset"])
async def test_a_replica_whose_tunnel_breaks_is_suspected_and_the_request_retried(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend], how: str
) -> None:
    mesh.replicas = {
        ("dead", "m"): backends["remote_m"].url,
        ("good", "m"): backends["local_m"].url,
    }
    mesh.broken = {"dead": how}
    mesh.announced_load = {"good": 1}  # so the dead one is tried first
    client = await make_client(limits=FAST_ACK)
    loop = asyncio.get_running_loop()
    start = loop.time()
    resp = await client.post("/v1/chat/completions", json=chat("after the kill"))
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == "good"
    assert (await resp.json())["choices"][0]["message"]["content"] == "[m] after the kill"
    assert loop.time() - start < 10  # the 0.2 s ack timeout, not the 660 s for an answer
    assert [t.node_id for t in mesh.started] == ["dead", "good"]
    assert [node for node, _ in mesh.suspected] == ["dead"]
    if how == "silent":
        assert "no acknowledgement" in mesh.suspected[0][1]
    assert backends["remote_m"].requests == 0
    assert mesh.idle()


async def test_a_replica_without_a_link_is_given_up_on_after_the_ack_timeout(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {
        ("dead", "m"): backends["remote_m"].url,
        ("good", "m"): backends["local_m"].url,
    }
    mesh.dial = {"dead": math.inf}  # a dial to a killed node: the hello never comes
    mesh.announced_load = {"good": 1}
    client = await make_client(limits=FAST_ACK)
    async with asyncio.timeout(10):  # the 0.2 s ack timeout, not the 5 s of a dial
        resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == "good"
    assert [(node, "no link" in why) for node, why in mesh.suspected] == [("dead", True)]
    assert mesh.idle()


async def test_the_last_replica_gets_its_whole_dial(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    mesh.dial = {"peer": 0.6}  # slower than the ack timeout, but nobody else serves m
    client = await make_client(limits=FAST_ACK)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == "peer"
    assert mesh.suspected == []


@pytest.mark.parametrize("refusal", ["not_served", "backend_down"])
async def test_a_replica_that_refuses_cleanly_is_retried_but_not_suspected(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend], refusal: str
) -> None:
    if refusal == "not_served":
        mesh.replicas = {("alive", "m"): backends["remote_m"].url}
        mesh.not_served = {"alive"}
    else:
        mesh.replicas = {("alive", "m"): DEAD_URL}
    mesh.replicas[("good", "m")] = backends["local_m"].url
    mesh.announced_load = {"good": 1}
    client = await make_client(limits=FAST_ACK)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == "good"
    assert [t.node_id for t in mesh.started] == ["alive", "good"]
    assert mesh.suspected == []
    assert mesh.idle()


async def test_a_failing_suspect_hook_does_not_cost_the_retry(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {
        ("dead", "m"): backends["remote_m"].url,
        ("good", "m"): backends["local_m"].url,
    }
    mesh.broken = {"dead": "silent"}
    mesh.announced_load = {"good": 1}
    mesh.suspect_error = AttributeError("'Gossip' object has no attribute 'suspect'")
    client = await make_client(limits=FAST_ACK)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == "good"
    assert [node for node, _ in mesh.suspected] == ["dead"]


async def test_all_targets_dead_gives_502(mesh: MemoryMesh, make_client: MakeClient) -> None:
    mesh.replicas = {(SELF, "m"): DEAD_URL, ("peer", "m"): DEAD_URL, ("gone", "m"): DEAD_URL}
    mesh.unreachable = {"gone"}
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 502
    assert_openai_error(await resp.json())
    assert len(mesh.started) == 3
    assert mesh.idle()
    assert [node for node, _ in mesh.suspected] == ["gone"]  # "peer" only lost its backend


@pytest.mark.parametrize("node", [SELF, "peer"])
async def test_mid_stream_failure_ends_the_stream_with_an_error_event(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend], node: str
) -> None:
    url = backends["local_m" if node == SELF else "remote_m"].url
    mesh.replicas = {(node, "m"): url}
    client = await make_client()
    body = chat("a b c d", stream=True, fake={"chunks": 4, "abort_after": 2})
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    raw = await asyncio.wait_for(resp.read(), 5)
    events = sse_events(raw)
    assert len(events) == 3
    last = json.loads(events[-1][6:])
    assert_openai_error(last)
    assert all(b'"choices"' in e for e in events[:-1])
    assert mesh.idle()


async def test_mid_body_failure_of_a_json_answer_gives_502(
    mesh: MemoryMesh, make_client: MakeClient
) -> None:
    """A non-streamed answer is taken whole, so a break-off is still a clean error."""

    async def broken(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"partial": ')
        assert request.transport is not None
        request.transport.close()
        return resp

    backend_app = web.Application()
    backend_app.router.add_post("/v1/chat/completions", broken)
    async with TestServer(backend_app) as server:
        mesh.replicas = {("peer", "m"): str(server.make_url("")).rstrip("/")}
        client = await make_client()
        resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status == 502
        assert_openai_error(await resp.json())


# --- client disconnects -----------------------------------------------------------------------


@pytest.mark.parametrize("node", [SELF, "peer"])
async def test_client_disconnect_cancels_the_upstream_request(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend], node: str
) -> None:
    backend = backends["local_m" if node == SELF else "remote_m"]
    mesh.replicas = {(node, "m"): backend.url}
    client = await make_client()
    body = chat("x", stream=True, fake={"chunks": 200, "delay": 0.05})
    resp = await client.post("/v1/chat/completions", json=body)
    await resp.content.readuntil(b"\n\n")
    assert backend.in_flight == 1
    resp.close()  # drop the connection mid-stream
    await wait_for(lambda: backend.disconnects == 1 and backend.in_flight == 0)
    await wait_for(mesh.idle)


# --- request errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"[1, 2]", b'"text"', b'{"model": 7}', b"\xff\xfe"],
)
async def test_malformed_body_gives_400(
    mesh: MemoryMesh, make_client: MakeClient, data: bytes
) -> None:
    mesh.replicas = {(SELF, "m"): DEAD_URL}
    client = await make_client()
    resp = await client.post("/v1/chat/completions", data=data)
    assert resp.status == 400
    assert_openai_error(await resp.json())
    assert mesh.started == []


async def test_body_over_the_cap_gives_413(mesh: MemoryMesh, make_client: MakeClient) -> None:
    mesh.replicas = {(SELF, "m"): DEAD_URL}
    client = await make_client(max_body_bytes=1000)
    resp = await client.post("/v1/chat/completions", json=chat("x" * 2000))
    assert resp.status == 413
    assert_openai_error(await resp.json())

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(20):
            yield b" " * 100

    resp = await client.post("/v1/chat/completions", data=chunked())
    assert resp.status == 413
    assert mesh.started == []


async def test_nothing_served_gives_503_with_retry_after(
    mesh: MemoryMesh, make_client: MakeClient
) -> None:
    client = await make_client(retry_after_s=7)
    resp = await client.post("/v1/chat/completions", json=chat(model=None))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    assert_openai_error(await resp.json())


async def test_a_model_known_to_nobody_gives_404_at_once(
    mesh: MemoryMesh, make_client: MakeClient
) -> None:
    mesh.loading = {("peer", "other"): "starting"}  # something warms, but not this model
    client = await make_client(load_timeout=60)
    async with asyncio.timeout(5):
        resp = await client.post("/v1/chat/completions", json=chat(model="nobody-has-it"))
    assert resp.status == 404
    body = await resp.json()
    assert_openai_error(body)
    assert body["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("node", [SELF, "peer"])
async def test_a_request_waits_for_its_model_to_start(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend], node: str
) -> None:
    mesh.loading = {(node, "m"): "starting"}
    client = await make_client(load_timeout=60)
    request = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat("hi")))
    await asyncio.sleep(0.3)
    assert not request.done()  # held, not refused
    mesh.ready(node, "m", backends["local_m"].url)
    resp = await asyncio.wait_for(request, 30)
    assert resp.status == 200
    assert resp.headers[NODE_HEADER] == node
    assert (await resp.json())["choices"][0]["message"]["content"]


async def test_a_stream_waiting_for_its_model_gets_loading_comments_then_tokens(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.loading = {("peer", "m"): "fetching"}
    client = await make_client(load_timeout=60)
    resp = await client.post("/v1/chat/completions", json=chat("hi", stream=True))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
    assert first.startswith(b": loading m: fetching on peer")
    mesh.ready("peer", "m", backends["remote_m"].url)
    events = sse_events(first + await asyncio.wait_for(resp.read(), 30))
    comments = [e for e in events if e.startswith(b":")]
    data = [e for e in events if e.startswith(b"data:")]
    assert comments and events[: len(comments)] == comments  # all comments come first
    assert data[-1] == b"data: [DONE]" and len(data) > 2


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_still_loading_after_the_timeout_gives_503(
    mesh: MemoryMesh, make_client: MakeClient, stream: bool
) -> None:
    mesh.loading = {("peer", "m"): "starting"}
    client = await make_client(load_timeout=0.5, retry_after_s=9)
    resp = await client.post("/v1/chat/completions", json=chat(stream=stream))
    if not stream:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "9"
        assert "still loading" in (await resp.json())["error"]["message"]
    else:  # the SSE head went out with the first comment: the error is an event
        raw = await resp.read()
        assert raw.startswith(b": loading m")
        assert b'"error"' in raw and b"still loading" in raw
    assert mesh.started == []


async def test_a_model_that_failed_says_why(mesh: MemoryMesh, make_client: MakeClient) -> None:
    mesh.failed = {("peer", "m"): "SIGILL while loading, 3 starts in a row\nlog line"}
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 503
    message = (await resp.json())["error"]["message"]
    assert "failed on peer: SIGILL while loading, 3 starts in a row" in message
    assert "log line" not in message


async def test_a_cold_catalog_model_gives_503_not_another_model(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "other"): backends["remote_other"].url}
    mesh.cold = ["cold"]
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat(model="cold"))
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    assert "cold" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("model", ["no-such-model", None])
async def test_unknown_model_falls_back_and_says_which(
    mesh: MemoryMesh,
    make_client: MakeClient,
    backends: dict[str, FakeBackend],
    model: str | None,
) -> None:
    mesh.replicas = {("peer", "other"): backends["remote_other"].url}
    client = await make_client()
    resp = await client.post("/v1/chat/completions", json=chat("q", model=model))
    assert resp.status == 200
    assert resp.headers[MODEL_HEADER] == "other"
    assert (await resp.json())["model"] == "other"
    request = backends["remote_other"].last_request
    assert request is not None and request["model"] == "other"  # the body was rewritten


async def test_unknown_route_is_an_openai_404(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/v1/nothing")
    assert resp.status == 404
    assert_openai_error(await resp.json())


async def test_client_credentials_are_not_forwarded(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    client = await make_client()
    resp = await client.post(
        "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer sk-user"}
    )
    assert resp.status == 200
    assert "authorization" not in {k.lower() for k in backends["remote_m"].last_headers}


# --- with the openai SDK ------------------------------------------------------------------------


async def test_openai_sdk_streams_and_sees_mid_stream_errors(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    openai = pytest.importorskip("openai")
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    client = await make_client()
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="none", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi sdk"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "[m] hi sdk"

        stream = await sdk.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "a b c d"}],
            stream=True,
            extra_body={"fake": {"chunks": 4, "abort_after": 2}},
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    finally:
        await sdk.close()


async def test_a_backends_html_page_is_handed_on_as_plain_text(
    mesh: MemoryMesh, make_client: MakeClient
) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<script>steal()</script>", content_type="text/html")

    backend = web.Application()
    backend.router.add_post("/v1/chat/completions", page)
    async with TestServer(backend, host="127.0.0.1") as server:
        mesh.replicas = {(SELF, "m"): str(server.make_url("")).rstrip("/")}
        client = await make_client()
        resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await resp.text() == "<script>steal()</script>"
