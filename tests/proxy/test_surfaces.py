"""Ollama's and Anthropic's APIs through the proxy routes, over the in-memory mesh of
``tests/proxy/conftest.py``: answers and streams in each API's shape, and errors in
each API's shape."""

from __future__ import annotations

import json
from typing import Any

from meshllm.proxy import anthropic_surface, ollama_surface
from meshllm.testing import FakeBackend
from tests.proxy.conftest import SELF, MakeClient, MemoryMesh

SURFACES = {**ollama_surface.SURFACES, **anthropic_surface.SURFACES}


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_ollama_chat_whole_and_streamed_through_a_peer(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    client = await make_client(surfaces=SURFACES)
    messages = [{"role": "user", "content": "hello there"}]
    whole = await client.post("/api/chat", json={"model": "m:latest", "messages": messages,
                                                 "stream": False})  # fmt: skip
    assert whole.status == 200, await whole.text()
    answer = await whole.json()
    assert answer["done"] is True and answer["message"]["role"] == "assistant"
    assert answer["message"]["content"] and answer["model"] == "m"
    sent = backends["remote_m"].last_request
    assert sent is not None and sent["messages"] == messages  # translated for the backend

    streamed = await client.post("/api/chat", json={"model": "m", "messages": messages})
    assert streamed.headers["Content-Type"].startswith("application/x-ndjson")
    lines = ndjson(await streamed.text())
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(line["message"]["content"] for line in lines[:-1])
    assert lines[-1]["done_reason"] in ("stop", "length")


async def test_ollama_errors_are_ollamas_shape(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {(SELF, "m"): backends["local_m"].url}
    client = await make_client(surfaces=SURFACES)
    unknown = await client.post("/api/chat", json={"model": "nope", "messages": []})
    assert unknown.status == 404 and "nope" in (await unknown.json())["error"]
    for body in ({"messages": "hi"}, {"model": 3}, [1, 2]):
        bad = await client.post("/api/chat", data=json.dumps(body),
                                headers={"Content-Type": "application/json"})  # fmt: skip
        assert bad.status == 400 and isinstance((await bad.json())["error"], str)
    loaded = await client.post("/api/generate", json={"model": "m"})  # no prompt: a load
    assert loaded.status == 200 and (await loaded.json())["done_reason"] == "load"
    assert mesh.keep_alives[-1] is None
    # keep_alive 0: an unload, carried by the one-token request to the serving node.
    unload = await client.post("/api/generate", json={"model": "m", "keep_alive": 0})
    assert unload.status == 200 and (await unload.json())["done_reason"] == "unload"
    assert mesh.keep_alives[-1] == "0"


async def test_anthropic_messages_whole_and_streamed(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    client = await make_client(surfaces=SURFACES)
    request = {"model": "m", "max_tokens": 16, "system": "terse",
               "messages": [{"role": "user", "content": "hello there"}]}  # fmt: skip
    whole = await client.post("/v1/messages", json=request)
    assert whole.status == 200, await whole.text()
    message = await whole.json()
    assert message["type"] == "message" and message["content"][0]["type"] == "text"
    sent = backends["remote_m"].last_request
    assert sent is not None and sent["messages"][0] == {"role": "system", "content": "terse"}

    streamed = await client.post("/v1/messages", json={**request, "stream": True})
    events = sse_events(await streamed.text())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "content_block_delta" in names and "message_delta" in names
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == message["content"][0]["text"]


async def test_anthropic_errors_are_anthropics_shape(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {(SELF, "m"): backends["local_m"].url}
    client = await make_client(surfaces=SURFACES)
    no_max = await client.post("/v1/messages", json={"model": "m", "messages": []})
    body = await no_max.json()
    assert no_max.status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    hi = [{"role": "user", "content": "hi"}]
    unknown = await client.post("/v1/messages", json={"model": "nope", "max_tokens": 4,
                                                      "messages": hi})  # fmt: skip
    assert unknown.status == 404 and (await unknown.json())["error"]["type"] == "not_found_error"


async def test_rerank_is_routed_by_model_like_chat(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    client = await make_client()
    body = {"model": "m", "query": "red fox", "documents": ["a blue car", "the red fox"]}
    answer = await client.post("/v1/rerank", json=body)
    assert answer.status == 200 and answer.headers["x-meshllm-node"] == "peer"
    assert [r["index"] for r in (await answer.json())["results"]] == [1, 0]


async def test_a_backend_without_its_own_messages_route_gets_the_request_translated(
    mesh: MemoryMesh, make_client: MakeClient, backends: dict[str, FakeBackend]
) -> None:
    """A llama-server build without /v1/messages answers 404 there: asked again in the
    OpenAI shape, the client never sees it (the fake backend has no such route)."""
    mesh.replicas = {("peer", "m"): backends["remote_m"].url}
    mesh.native = {"peer": {"/v1/messages"}}
    client = await make_client(surfaces=SURFACES)
    request = {"model": "m", "max_tokens": 16,
               "messages": [{"role": "user", "content": "hello there"}]}  # fmt: skip
    for stream in (False, True):
        answer = await client.post("/v1/messages", json={**request, "stream": stream})
        assert answer.status == 200, await answer.text()
        assert (await answer.text()).count("message_start" if stream else '"message"') >= 1
    assert [t.node_id for t in mesh.started] == ["peer"] * 2  # one routing each, one target
