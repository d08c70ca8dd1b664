"""What the translator tests share: an official SDK answered by canned bytes, OpenAI SSE
read back through the openai SDK's types, and a fuzzer's mutation of a JSON value."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletionChunk


def sdk_client(body: bytes, content_type: str, sdk: Any = openai.OpenAI, status: int = 200) -> Any:
    """An official SDK client (``sdk``) whose every request is answered with ``body``."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type})

    http = httpx2.Client(transport=httpx2.MockTransport(answer))
    return sdk(api_key="test", base_url="http://mesh.test", http_client=http, max_retries=0)


def openai_chunks(sse: bytes, comments: bool = False) -> list[ChatCompletionChunk]:
    """OpenAI SSE as chunks, checked by the openai SDK's types, up to ``[DONE]``;
    ``comments``: SSE comment lines may come between them (else they fail the test)."""
    chunks = []
    for raw in sse.split(b"\n\n"):
        if not raw or (comments and raw.startswith(b":")):
            continue
        assert raw.startswith(b"data: "), raw
        if raw == b"data: [DONE]":
            break
        chunks.append(ChatCompletionChunk.model_validate(json.loads(raw[6:])))
    return chunks


def mutate(value: Any, rng: random.Random, junk: Any) -> Any:
    """``value`` with one node somewhere replaced by ``junk`` (or a key dropped)."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = mutate(value[key], rng, junk)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return [*value[:i], mutate(value[i], rng, junk), *value[i + 1 :]]
    return junk
