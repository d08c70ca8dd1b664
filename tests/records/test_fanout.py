"""Mesh-wide records queries over frame streams: answers merged, the silent named."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from meshllm.errors import PeerError
from meshllm.records.fanout import MAX_ANSWER_BYTES, answer_peer, ask_peers, fit_rows
from meshllm.wire import FrameStream, memory_stream_pair


def peers(answers: dict[str, Any]):  # type: ignore[no-untyped-def]
    """An open_stream for nodes answering with ``answers[node]`` (rows, an exception to
    raise from the query, "silent", or "down": no stream at all)."""
    tasks: list[asyncio.Task[None]] = []

    async def open_stream(node_id: str) -> FrameStream:
        behaviour = answers[node_id]
        if behaviour == "down":
            raise PeerError(f"no link to {node_id}")
        client, server = memory_stream_pair()

        async def query(q: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
            if isinstance(behaviour, Exception):
                raise behaviour
            return [{**row, "q": q, "params": dict(params)} for row in behaviour]

        async def serve() -> None:
            head = await server.recv()
            if behaviour != "silent" and head is not None:
                await answer_peer(server, head, query)

        tasks.append(asyncio.ensure_future(serve()))
        return client

    return open_stream, tasks


async def test_every_answer_is_kept_and_every_silence_named() -> None:
    open_stream, tasks = peers(
        {
            "b": [{"request_id": "1", "prompt": "secret", "answer": "also"}],
            "c": "silent",
            "d": "down",
            "e": ValueError("bad query: since after until"),
        }
    )
    result = await ask_peers("bcde", open_stream, "history", {"model": "m"}, timeout=0.3)
    assert result.rows == {"b": [{"request_id": "1", "q": "history", "params": {"model": "m"}}]}
    assert result.missing["c"] == "no answer within 0.3 s"
    assert "no link to d" in result.missing["d"]
    assert "since after until" in result.missing["e"]
    for task in tasks:
        task.cancel()


async def test_a_hostile_query_is_refused_and_a_big_answer_cut_to_one_frame() -> None:
    client, server = memory_stream_pair()
    called: list[str] = []

    async def query(q: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        called.append(q)
        return []

    for head in (
        {"t": "records", "q": "drop tables"},
        {"t": "records", "q": "history", "params": {"x": 1}},
        {"t": "records", "q": "history", "params": {str(i): "v" for i in range(100)}},
        {"t": "records", "q": "history", "params": {"model": "m" * 1000}},
    ):
        await answer_peer(server, head, query)
        reply = await client.recv()
        assert reply is not None and reply["ok"] is False and reply["message"]
        client, server = memory_stream_pair()
    assert called == []
    rows = [{"request_id": str(i), "error": "x" * 1000} for i in range(5000)]
    kept = fit_rows(rows, MAX_ANSWER_BYTES)
    assert 0 < len(kept) < len(rows) and kept == rows[: len(kept)]
