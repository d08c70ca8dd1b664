"""The HTTP-over-stream tunnel end to end over memory streams, with a FakeBackend behind it.

Also the Forwarder the tunnel's server side relays through (model renaming, header filtering).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from meshllm.errors import PeerError
from meshllm.proxy import (
    BackendUnavailable,
    Forwarder,
    HttpBackends,
    HttpLimits,
    TunnelBroken,
    TunnelUnavailable,
    open_tunnel_request,
    serve_tunnel,
)
from meshllm.proxy.forward import split_events
from meshllm.testing import FakeBackend
from meshllm.wire import Frame, FrameType, MemoryFrameStream, make_frame, memory_stream_pair

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}


def chat_body(text: str = "hello", model: str = "m", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    async with FakeBackend(models=["m"], chunks=5) as fb:
        yield fb


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    async with Forwarder(connect_timeout=2.0, read_timeout=10.0) as fwd:
        yield fwd


Tunnel = Callable[..., Awaitable[tuple[MemoryFrameStream, "asyncio.Task[None]"]]]


@pytest.fixture
async def tunnel(forwarder: Forwarder) -> AsyncIterator[Tunnel]:
    """Make a stream pair whose server end is served as the node's dispatcher would."""
    tasks: list[asyncio.Task[None]] = []

    async def make(base_url: str | None) -> tuple[MemoryFrameStream, asyncio.Task[None]]:
        client, server = memory_stream_pair("client", "server")

        async def dispatch() -> None:
            head = await server.recv()
            assert head is not None and head["t"] == FrameType.TUNNEL
            await serve_tunnel(server, head, HttpBackends(forwarder, lambda model: base_url))

        task = asyncio.create_task(dispatch())
        tasks.append(task)
        return client, task

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_tunnel_non_streaming_round_trip(backend: FakeBackend, tunnel: Tunnel) -> None:
    client, server_task = await tunnel(backend.url)
    resp = await open_tunnel_request(client, "POST", CHAT, JSON, chat_body("hi there"), model="m")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    answer = json.loads(await resp.read())
    assert answer["model"] == "m"
    assert answer["choices"][0]["message"]["content"] == "[m] hi there"
    await asyncio.wait_for(server_task, 5)


async def test_tunnel_streaming_passes_every_event_then_done(
    backend: FakeBackend, tunnel: Tunnel
) -> None:
    client, server_task = await tunnel(backend.url)
    body = chat_body("one two three four five", stream=True)
    resp = await open_tunnel_request(client, "POST", CHAT, JSON, body, model="m")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = b"".join([chunk async for chunk in resp.iter_chunks()])
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert len(chunks) == 5 + 1  # five content pieces, then the finish chunk
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "[m] one two three four five"
    await asyncio.wait_for(server_task, 5)


async def test_tunnel_streams_chunks_as_they_come(backend: FakeBackend, tunnel: Tunnel) -> None:
    client, _ = await tunnel(backend.url)
    body = chat_body("slow", stream=True, fake={"chunks": 3, "delay": 0.3})
    resp = await open_tunnel_request(client, "POST", CHAT, JSON, body, model="m")
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = await anext(resp.iter_chunks())
    assert b"data: " in first
    assert loop.time() - start < 0.25  # the first event came before the rest were made
    resp.close()


async def test_tunnel_client_reset_cancels_upstream(backend: FakeBackend, tunnel: Tunnel) -> None:
    client, server_task = await tunnel(backend.url)
    body = chat_body("x", stream=True, fake={"chunks": 100, "delay": 0.05})
    resp = await open_tunnel_request(client, "POST", CHAT, JSON, body, model="m")
    chunks = resp.iter_chunks()
    await anext(chunks)
    await wait_for(lambda: backend.in_flight == 1)
    resp.close()
    await wait_for(lambda: backend.disconnects == 1 and backend.in_flight == 0)
    await asyncio.wait_for(server_task, 5)  # serve_tunnel returns, raising nothing


async def test_tunnel_cancel_while_waiting_for_head_cancels_upstream(
    backend: FakeBackend, tunnel: Tunnel
) -> None:
    client, server_task = await tunnel(backend.url)
    body = chat_body("x", fake={"chunks": 100, "delay": 0.05})  # non-streamed, 5 s to answer
    opening = asyncio.create_task(open_tunnel_request(client, "POST", CHAT, JSON, body))
    await wait_for(lambda: backend.in_flight == 1)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    await wait_for(lambda: backend.disconnects == 1 and backend.in_flight == 0)
    await asyncio.wait_for(server_task, 5)


async def test_tunnel_backend_down_is_unavailable_before_first_byte(tunnel: Tunnel) -> None:
    client, server_task = await tunnel("http://127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(TunnelUnavailable, match="did not answer"):
        await open_tunnel_request(client, "POST", CHAT, JSON, chat_body(), model="m")
    await asyncio.wait_for(server_task, 5)


async def test_tunnel_model_not_served_here_is_unavailable(tunnel: Tunnel) -> None:
    client, _ = await tunnel(None)
    with pytest.raises(TunnelUnavailable, match="not served here") as info:
        await open_tunnel_request(client, "POST", CHAT, JSON, chat_body(), model="m")
    assert not isinstance(info.value, TunnelBroken)  # a clean refusal: the node is alive


async def test_tunnel_reset_before_head_is_broken() -> None:
    client, server = memory_stream_pair()
    server.reset()
    with pytest.raises(TunnelBroken):
        await open_tunnel_request(client, "POST", CHAT, JSON, chat_body())


# --- the acknowledgement ----------------------------------------------------------------------

FAST_ACK = HttpLimits(tunnel_ack_timeout=0.2, tunnel_response_idle_timeout=30.0)
BIG = 100 * 64 * 1024  # 100 body frames: more than a memory stream's inbox holds


async def test_serve_tunnel_acks_the_head_before_reading_the_body(
    backend: FakeBackend, forwarder: Forwarder
) -> None:
    client, server = memory_stream_pair()
    head = make_frame(FrameType.TUNNEL, k="head", method="POST", path=CHAT, headers=JSON, model="m")
    serving = asyncio.create_task(
        serve_tunnel(server, head, HttpBackends(forwarder, lambda m: backend.url))
    )
    try:
        ack = await asyncio.wait_for(client.recv(), 5)  # no body sent yet
        assert ack is not None and (ack["t"], ack["k"]) == (FrameType.TUNNEL, "ack")
        assert backend.requests == 0
        await client.send(make_frame(FrameType.TUNNEL, k="body", d=chat_body("acked")))
        await client.send(make_frame(FrameType.TUNNEL, k="end"))
        answer = await asyncio.wait_for(client.recv(), 5)
        assert answer is not None and (answer["k"], answer["status"]) == ("head", 200)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def test_serve_tunnel_acks_before_refusing_a_model_it_does_not_serve(
    forwarder: Forwarder,
) -> None:
    client, server = memory_stream_pair()
    head = make_frame(FrameType.TUNNEL, k="head", method="POST", path=CHAT, model="m")
    await client.send(make_frame(FrameType.TUNNEL, k="end"))
    await serve_tunnel(server, head, HttpBackends(forwarder, lambda m: None))
    kinds = []
    while (frame := await client.recv()) is not None:
        kinds.append(frame["k"])
    assert kinds == ["ack", "error"]


async def _read_head_then(server: MemoryFrameStream, then: str) -> None:
    """A serving node that takes the head and then goes silent, or acks and goes silent,
    or acks and resets: what a dead node or a broken link looks like from the client."""
    head = await server.recv()
    assert head is not None and head["k"] == "head"
    if then != "silent":
        await server.send(make_frame(FrameType.TUNNEL, k="ack"))
    if then == "reset":
        server.reset()
    await asyncio.Event().wait()


@pytest.mark.parametrize("size", [100, BIG], ids=["small-body", "big-body"])
async def test_a_node_that_never_acks_is_broken_within_the_ack_timeout(size: int) -> None:
    client, server = memory_stream_pair()
    silent = asyncio.create_task(_read_head_then(server, "silent"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        # The big body fills the stream: its sending stalls, as on a dead QUIC peer.
        with pytest.raises(TunnelBroken, match="no acknowledgement"):
            await open_tunnel_request(client, "POST", CHAT, JSON, b"x" * size, limits=FAST_ACK)
        assert loop.time() - start < 10  # about 0.2 s; far below the 30 s for the answer
    finally:
        silent.cancel()
        await asyncio.gather(silent, return_exceptions=True)


async def test_after_the_ack_the_head_may_take_the_response_idle_timeout() -> None:
    client, server = memory_stream_pair()
    acked = asyncio.create_task(_read_head_then(server, "ack"))
    limits = HttpLimits(tunnel_ack_timeout=0.1, tunnel_response_idle_timeout=1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with pytest.raises(TunnelBroken, match="no response head"):
            await open_tunnel_request(client, "POST", CHAT, JSON, chat_body(), limits=limits)
        assert loop.time() - start >= 0.9  # the ack deadline was over once the ack came
    finally:
        acked.cancel()
        await asyncio.gather(acked, return_exceptions=True)


async def test_a_stream_reset_after_the_ack_is_broken() -> None:
    client, server = memory_stream_pair()
    resetting = asyncio.create_task(_read_head_then(server, "reset"))
    try:
        with pytest.raises(TunnelBroken):
            await open_tunnel_request(client, "POST", CHAT, JSON, chat_body(), limits=FAST_ACK)
    finally:
        resetting.cancel()
        await asyncio.gather(resetting, return_exceptions=True)


class _SlowReader:
    """A server stream end that takes each frame ``delay`` s after the previous one."""

    def __init__(self, stream: MemoryFrameStream, delay: float) -> None:
        self._stream, self._delay = stream, delay
        self.peer_id = stream.peer_id

    async def recv(self) -> Frame | None:
        await asyncio.sleep(self._delay)
        return await self._stream.recv()

    async def send(self, frame: Frame) -> None:
        await self._stream.send(frame)

    async def end(self) -> None:
        await self._stream.end()

    def reset(self) -> None:
        self._stream.reset()

    def limit_buffer(self, max_bytes: int) -> None:
        self._stream.limit_buffer(max_bytes)


async def test_the_ack_deadline_does_not_fire_for_a_slow_big_body(
    backend: FakeBackend, forwarder: Forwarder
) -> None:
    client, server = memory_stream_pair()
    slow = _SlowReader(server, 0.01)  # 100 body frames: a second to take them all

    async def dispatch() -> None:
        head = await slow.recv()
        assert head is not None
        await serve_tunnel(slow, head, HttpBackends(forwarder, lambda m: backend.url))  # type: ignore[arg-type]

    serving = asyncio.create_task(dispatch())
    inputs = ["w" * (64 * 1024)] * 100
    body = json.dumps({"model": "m", "input": inputs}).encode()
    assert len(body) >= BIG
    loop = asyncio.get_running_loop()
    start = loop.time()
    resp = await open_tunnel_request(
        client, "POST", "/v1/embeddings", JSON, body, model="m", limits=FAST_ACK
    )
    assert loop.time() - start >= 1.0  # well past the 0.2 s ack deadline, and no harm done
    assert resp.status == 200
    assert len(json.loads(await resp.read())["data"]) == 100
    await asyncio.wait_for(serving, 5)


async def test_a_clean_refusal_before_the_ack_is_unavailable_not_broken() -> None:
    client, server = memory_stream_pair()

    async def refuse() -> None:
        await server.recv()
        await server.send(make_frame(FrameType.TUNNEL, k="error", message="go elsewhere"))
        await server.end()

    task = asyncio.create_task(refuse())
    with pytest.raises(TunnelUnavailable, match="go elsewhere") as info:
        await open_tunnel_request(client, "POST", CHAT, JSON, chat_body(), limits=FAST_ACK)
    assert not isinstance(info.value, TunnelBroken)
    await task


async def test_tunnel_backend_breaking_mid_stream_raises_peer_error(
    backend: FakeBackend, tunnel: Tunnel
) -> None:
    client, server_task = await tunnel(backend.url)
    body = chat_body("a b c d", stream=True, fake={"chunks": 4, "abort_after": 2})
    resp = await open_tunnel_request(client, "POST", CHAT, JSON, body, model="m")
    assert resp.status == 200
    got: list[bytes] = []
    with pytest.raises(PeerError) as info:
        async for chunk in resp.iter_chunks():
            got.append(chunk)
    assert not isinstance(info.value, TunnelUnavailable)
    assert b"".join(got).count(b"data: ") == 2
    await asyncio.wait_for(server_task, 5)


async def test_tunnel_large_body_goes_in_many_frames(backend: FakeBackend, tunnel: Tunnel) -> None:
    client, _ = await tunnel(backend.url)
    big = ["w" * 1000] * 300  # about 300 KB: five body frames
    body = json.dumps({"model": "m", "input": big}).encode()
    resp = await open_tunnel_request(client, "POST", "/v1/embeddings", JSON, body, model="m")
    assert resp.status == 200
    answer = json.loads(await resp.read())
    assert len(answer["data"]) == 300
    assert backend.last_request is not None and backend.last_request["input"] == big


async def test_tunnel_model_is_read_from_the_body_when_the_head_has_none(
    backend: FakeBackend, forwarder: Forwarder
) -> None:
    client, server = memory_stream_pair()
    asked: list[str] = []

    def base_url_for(model: str) -> str:
        asked.append(model)
        return backend.url

    async def dispatch() -> None:
        head = await server.recv()
        assert head is not None
        await serve_tunnel(server, head, HttpBackends(forwarder, base_url_for))

    task = asyncio.create_task(dispatch())
    resp = await open_tunnel_request(client, "POST", CHAT, JSON, chat_body(model="from-body"))
    await resp.read()
    await task
    assert set(asked) == {"from-body"}  # asked whether served, then where


async def test_tunnel_refuses_routes_outside_the_inference_api(
    backend: FakeBackend, tunnel: Tunnel
) -> None:
    client, _ = await tunnel(backend.url)
    resp = await open_tunnel_request(client, "POST", "/slots/0?action=erase", JSON, b"", model="m")
    assert resp.status == 404
    assert "error" in json.loads(await resp.read())


async def test_serve_tunnel_resets_a_stream_with_bad_frames(forwarder: Forwarder) -> None:
    client, server = memory_stream_pair()
    await client.send(make_frame(FrameType.TUNNEL, k="head", method="POST", path=CHAT))
    await client.send(make_frame(FrameType.TUNNEL, k="body", d="not bytes"))
    head = await server.recv()
    assert head is not None
    await serve_tunnel(server, head, HttpBackends(forwarder, lambda model: "http://127.0.0.1:1"))
    with pytest.raises(PeerError):
        await client.recv()


async def test_serve_tunnel_resets_a_bad_head(forwarder: Forwarder) -> None:
    client, server = memory_stream_pair()
    head = make_frame(FrameType.TUNNEL, k="head", method="POST", path=CHAT, headers=["x"])
    await serve_tunnel(server, head, HttpBackends(forwarder, lambda model: None))
    with pytest.raises(PeerError):
        await client.recv()


async def test_tunnel_response_without_end_frame_is_a_peer_error() -> None:
    client, server = memory_stream_pair()

    async def fake_server() -> None:
        await server.send(make_frame(FrameType.TUNNEL, k="ack"))
        while (await server.recv())["k"] != "end":  # type: ignore[index]
            pass
        await server.send(make_frame(FrameType.TUNNEL, k="head", status=200, headers={}))
        await server.send(make_frame(FrameType.TUNNEL, k="body", d=b"partial"))
        await server.end()

    task = asyncio.create_task(fake_server())
    resp = await open_tunnel_request(client, "POST", CHAT, JSON, b"{}")
    with pytest.raises(PeerError, match="before its end"):
        await resp.read()
    await task


# --- the Forwarder ---------------------------------------------------------------------------


async def test_forwarder_backend_down_raises_backend_unavailable(forwarder: Forwarder) -> None:
    with pytest.raises(BackendUnavailable):
        await forwarder.forward("http://127.0.0.1:1", "POST", CHAT, JSON, chat_body())


async def test_forwarder_sends_a_backends_own_credentials_never_the_clients(
    backend: FakeBackend,
) -> None:
    keys = {backend.url: {"Authorization": "Bearer endpoint-key"}}
    async with Forwarder(backend_headers=lambda url: keys.get(url, {})) as forwarder:
        headers = {**JSON, "Authorization": "Bearer the-clients-own"}
        resp = await forwarder.forward(backend.url, "POST", CHAT, headers, chat_body())
        await resp.read()
        resp.close()
        assert backend.last_headers["Authorization"] == "Bearer endpoint-key"
        keys.clear()  # a backend without credentials gets none, not the client's
        resp = await forwarder.forward(backend.url, "POST", CHAT, headers, chat_body())
        await resp.read()
        resp.close()
        assert "authorization" not in {k.lower() for k in backend.last_headers}


async def test_forwarder_drops_hop_by_hop_and_credentials(
    backend: FakeBackend, forwarder: Forwarder
) -> None:
    headers = {
        **JSON,
        "Authorization": "Bearer sk-secret",
        "Connection": "keep-alive, x-foo",
        "X-Request-Id": "r1",
    }
    resp = await forwarder.forward(backend.url, "POST", CHAT, headers, chat_body())
    await resp.read()
    resp.close()
    sent = {k.lower(): v for k, v in backend.last_headers.items()}
    assert "authorization" not in sent
    assert sent["x-request-id"] == "r1"
    assert not {"content-length", "transfer-encoding", "date", "server"} & {
        k.lower() for k in resp.headers
    }


async def test_forwarder_renames_the_model_both_ways() -> None:
    async with (
        FakeBackend(models=["llama3:8b"], chunks=3) as fb,
        Forwarder(backend_model=lambda m: {"mesh-llama": "llama3:8b"}.get(m, m)) as fwd,
    ):
        resp = await fwd.forward(
            fb.url, "POST", CHAT, JSON, chat_body(model="mesh-llama"), model="mesh-llama"
        )
        assert fb.last_request is not None and fb.last_request["model"] == "llama3:8b"
        assert json.loads(await resp.read())["model"] == "mesh-llama"
        resp.close()

        body = chat_body(model="mesh-llama", stream=True)
        resp = await fwd.forward(fb.url, "POST", CHAT, JSON, body, model="mesh-llama")
        raw = await resp.read()
        resp.close()
        events = [e for e in raw.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert all(json.loads(e[6:])["model"] == "mesh-llama" for e in events[:-1])


async def test_forwarder_reports_the_mesh_name_when_the_backend_differs(
    backend: FakeBackend, forwarder: Forwarder
) -> None:
    # The fake answers "m" whatever it is asked, like llama-server without --alias.
    resp = await forwarder.forward(
        backend.url, "POST", CHAT, JSON, chat_body(model="mesh-name"), model="mesh-name"
    )
    assert json.loads(await resp.read())["model"] == "mesh-name"
    resp.close()


@pytest.mark.parametrize(
    ("pending", "chunk", "complete", "rest"),
    [
        (b"", b"data: 1\n\n", b"data: 1\n\n", b""),
        (b"", b"data: 1\n\ndata: 2", b"data: 1\n\n", b"data: 2"),
        (b"data: 2", b"\n\n", b"data: 2\n\n", b""),
        (b"", b"data: 1\n", b"", b"data: 1\n"),
        (b"", b"data: 1\r\n\r\ndata", b"data: 1\r\n\r\n", b"data"),
        (b"", b"", b"", b""),
    ],
)
def test_split_events_table(pending: bytes, chunk: bytes, complete: bytes, rest: bytes) -> None:
    assert split_events(pending, chunk) == (complete, rest)


def test_a_peers_deeply_nested_body_names_no_model() -> None:
    from meshllm.proxy.tunnel import _model_of

    assert _model_of(b"[" * 100_000) is None
    assert _model_of(b'{"model": "m"}') == "m"
