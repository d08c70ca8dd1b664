"""Asking a peer to load a model, and answering: over in-memory frame streams."""

from __future__ import annotations

import asyncio

from meshllm.serving.pool_load import MAX_MESSAGE_CHARS, answer_load_request, ask_to_load
from meshllm.wire import FrameType, make_frame, memory_stream_pair


async def ask(model: str, load) -> str | None:  # type: ignore[no-untyped-def]
    client, server = memory_stream_pair()

    async def serve() -> None:
        head = await server.recv()
        assert head is not None
        await answer_load_request(server, head, load)

    task = asyncio.ensure_future(serve())
    try:
        return await ask_to_load(client, model)
    finally:
        await task


async def test_a_load_under_way_is_a_yes_and_a_refusal_says_why() -> None:
    asked: list[str] = []
    assert await ask("gemma", lambda m: asked.append(m)) is None
    assert asked == ["gemma"]
    assert await ask("big", lambda m: f"{m} needs 80 GB; the budget is 8 GB") == (
        "big needs 80 GB; the budget is 8 GB"
    )
    long = await ask("x", lambda m: "y" * 10_000)
    assert long is not None and len(long) == MAX_MESSAGE_CHARS


async def test_a_name_that_is_not_a_model_name_is_refused_unasked() -> None:
    asked: list[str] = []
    for bad in ("../etc/passwd", "", "a" * 500, "x\r\ny"):
        assert await ask(bad, lambda m: asked.append(m)) == "not a model name"
    assert asked == []


async def test_a_silent_or_wrong_peer_is_a_refusal_not_a_hang() -> None:
    client, server = memory_stream_pair()
    assert await ask_to_load(client, "m", timeout=0.2) == "no answer within 0.2 s"
    client, server = memory_stream_pair()
    await server.send(make_frame(FrameType.FILE, ok=True))  # another kind of answer
    assert await ask_to_load(client, "m") == "no answer"
    client, server = memory_stream_pair()
    await server.send(make_frame(FrameType.LOAD, ok="yes"))  # not exactly true
    assert await ask_to_load(client, "m") == "refused"
