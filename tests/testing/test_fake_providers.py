"""The fake providers speak their documented APIs: each is driven by the provider's
official SDK (``openai``, ``anthropic``, ``google-genai``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from meshllm.testing.fake_providers import FakeProvider, serve_provider

KEY = "test-key-123"
WAIT = 10.0  # seconds: generous bound on a condition a test waits for


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeProvider]:
    async with serve_provider("openai", KEY) as fake:
        yield fake


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeProvider]:
    async with serve_provider("anthropic", KEY) as fake:
        yield fake


@pytest.fixture
async def fake_google() -> AsyncIterator[FakeProvider]:
    async with serve_provider("google", KEY) as fake:
        yield fake


def openai_client(fake: FakeProvider, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=key, max_retries=0)


def anthropic_client(
    fake: FakeProvider, key: str = KEY, max_retries: int = 0
) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=key, max_retries=max_retries)


def google_client(
    fake: FakeProvider, key: str = KEY, api_version: str | None = None
) -> genai.Client:
    options = genai_types.HttpOptions(base_url=fake.base_url, api_version=api_version)
    return genai.Client(api_key=key, http_options=options)


async def wait_until(condition: object, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- OpenAI ---------------------------------------------------------------------------


async def test_openai_base_url_has_v1(fake_openai: FakeProvider) -> None:
    assert fake_openai.base_url == f"http://127.0.0.1:{fake_openai.port}/v1"


async def test_openai_chat_plain(fake_openai: FakeProvider) -> None:
    async with openai_client(fake_openai) as client:
        answer = await client.chat.completions.create(
            model="gpt-test",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
            ],
        )
    assert answer.object == "chat.completion"
    assert answer.model == "gpt-test"
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 3)
    assert answer.usage.total_tokens == 10
    seen = fake_openai.seen[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["model"] == "gpt-test"


async def test_openai_chat_max_tokens_cuts_with_length(fake_openai: FakeProvider) -> None:
    async with openai_client(fake_openai) as client:
        answer = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "one two three four"}],
            max_completion_tokens=2,
        )
    assert answer.choices[0].message.content == "echo: one"
    assert answer.choices[0].finish_reason == "length"


async def test_openai_chat_stream_with_usage(fake_openai: FakeProvider) -> None:
    async with openai_client(fake_openai) as client:
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "streamed words here"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-test" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: streamed words here"
    # role chunk, one per word, the finish chunk, the usage chunk
    assert len(chunks) == 1 + 4 + 1 + 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


async def test_openai_completions(fake_openai: FakeProvider) -> None:
    async with openai_client(fake_openai) as client:
        answer = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
        stream = await client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True
        )
        pieces = [c.choices[0].text async for c in stream]
    assert answer.object == "text_completion"
    assert answer.choices[0].text == "echo: say hi"
    assert "".join(pieces) == "echo: say hi"


async def test_openai_embeddings_deterministic(fake_openai: FakeProvider) -> None:
    async with openai_client(fake_openai) as client:
        # The SDK asks for base64 unless told otherwise; the fake answers both alike.
        first = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
        floats = await client.embeddings.create(
            model="text-embedding-3-small", input=["a", "b c"], encoding_format="float"
        )
        sized = await client.embeddings.create(model="m", input="a", dimensions=20)
    assert fake_openai.seen[0].body["encoding_format"] == "base64"
    assert [d.embedding for d in first.data] == [d.embedding for d in floats.data]
    assert len(first.data[0].embedding) == 8
    assert first.data[0].embedding != first.data[1].embedding
    assert first.usage.prompt_tokens == 3
    assert len(sized.data[0].embedding) == 20


async def test_openai_models(fake_openai: FakeProvider) -> None:
    async with openai_client(fake_openai) as client:
        models = [m.id async for m in client.models.list()]
    assert models == fake_openai.models


async def test_openai_wrong_key_is_authentication_error(fake_openai: FakeProvider) -> None:
    async with openai_client(fake_openai, key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"


async def test_openai_fail_next_rate_limit(fake_openai: FakeProvider) -> None:
    fake_openai.fail_next(429, "slow down", retry_after=7)
    async with openai_client(fake_openai) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.code == "rate_limit_exceeded"
        answer = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert answer.choices[0].message.content == "echo: x"


async def test_openai_stall_next_pauses_stream(fake_openai: FakeProvider) -> None:
    fake_openai.stall_next(after=2)
    async with openai_client(fake_openai) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        got = [await anext(aiter(stream)) for _ in range(2)]
        await wait_until(lambda: fake_openai.stalled == 1)
        fake_openai.resume()
        got += [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in got) == "echo: a b c"


# --- Anthropic ------------------------------------------------------------------------


async def test_anthropic_messages_create(fake_anthropic: FakeProvider) -> None:
    async with anthropic_client(fake_anthropic) as client:
        message = await client.messages.create(
            model="claude-test",
            max_tokens=100,
            system="be terse",
            messages=[
                {"role": "user", "content": "earlier"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "hi claude"}]},
            ],
        )
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "claude-test")
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hi claude"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 3)
    seen = fake_anthropic.seen[-1]
    assert seen.path == "/v1/messages"
    # anthropic>=2 sends the key as a bearer token, not in x-api-key.
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert "anthropic-version" in seen.headers


async def test_anthropic_max_tokens_stop_reason(fake_anthropic: FakeProvider) -> None:
    async with anthropic_client(fake_anthropic) as client:
        message = await client.messages.create(
            model="c", max_tokens=1, messages=[{"role": "user", "content": "a b"}]
        )
    assert message.content[0].text == "echo:"  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"


async def test_anthropic_stream_helper(fake_anthropic: FakeProvider) -> None:
    async with (
        anthropic_client(fake_anthropic) as client,
        client.messages.stream(
            model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "x y"}]
        ) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["echo:", " x", " y"]
    assert final.content[0].text == "echo: x y"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)


async def test_anthropic_raw_stream_event_sequence(fake_anthropic: FakeProvider) -> None:
    async with anthropic_client(fake_anthropic) as client:
        stream = await client.messages.create(
            model="claude-test",
            max_tokens=50,
            messages=[{"role": "user", "content": "one two"}],
            stream=True,
        )
        events = [event async for event in stream]
    # The SDK drops ping; the rest is the documented order.
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert all(d.type == "text_delta" for d in deltas)
    assert "".join(d.text for d in deltas) == "echo: one two"  # type: ignore[union-attr]
    last = events[-2]
    assert last.type == "message_delta"
    assert (last.delta.stop_reason, last.usage.output_tokens) == ("end_turn", 3)


async def test_anthropic_count_tokens(fake_anthropic: FakeProvider) -> None:
    async with anthropic_client(fake_anthropic) as client:
        counted = await client.messages.count_tokens(
            model="claude-test", system="sys", messages=[{"role": "user", "content": "a b c"}]
        )
    assert counted.input_tokens == 4
    assert fake_anthropic.seen[-1].path == "/v1/messages/count_tokens"


async def test_anthropic_wrong_key_is_authentication_error(fake_anthropic: FakeProvider) -> None:
    async with anthropic_client(fake_anthropic, key="wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


async def test_anthropic_fail_next_rate_limit(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.fail_next(429, "too many", retry_after=3)
    async with anthropic_client(fake_anthropic) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "too many"},
    }


async def test_anthropic_sdk_retries_overloaded(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.fail_next(529, "overloaded", retry_after=0)
    async with anthropic_client(fake_anthropic, max_retries=1) as client:
        message = await client.messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "again"}]
        )
    assert message.content[0].text == "echo: again"  # type: ignore[union-attr]
    assert len(fake_anthropic.seen) == 2


async def test_anthropic_invalid_requests(fake_anthropic: FakeProvider) -> None:
    url = f"{fake_anthropic.base_url}/v1/messages"
    auth = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    body = {"model": "c", "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=auth) as response:
            assert response.status == 400
            error = await response.json()
        async with session.post(url, json=body, headers={"x-api-key": KEY}) as response:
            assert response.status == 400
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in error["error"]["message"]


# --- Google Gemini --------------------------------------------------------------------


@pytest.mark.parametrize("api_version", [None, "v1beta"])
async def test_google_generate_content(fake_google: FakeProvider, api_version: str | None) -> None:
    async with google_client(fake_google, api_version=api_version).aio as client:
        answer = await client.models.generate_content(model="gemini-test", contents="hello gemini")
    assert answer.text == "echo: hello gemini"
    assert answer.candidates is not None
    assert answer.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert answer.model_version == "gemini-test"
    assert answer.response_id
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count) == (2, 3)
    assert usage.total_token_count == 5
    seen = fake_google.seen[-1]
    assert seen.path == f"/{api_version or 'v1'}/models/gemini-test:generateContent"
    assert seen.headers["x-goog-api-key"] == KEY


async def test_google_max_output_tokens(fake_google: FakeProvider) -> None:
    config = genai_types.GenerateContentConfig(max_output_tokens=2, system_instruction="sys")
    async with google_client(fake_google).aio as client:
        answer = await client.models.generate_content(
            model="gemini-test", contents="a b c", config=config
        )
    assert answer.text == "echo: a"
    assert answer.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS  # type: ignore[index]
    assert answer.usage_metadata.prompt_token_count == 4  # type: ignore[union-attr]


async def test_google_stream(fake_google: FakeProvider) -> None:
    async with google_client(fake_google).aio as client:
        stream = await client.models.generate_content_stream(
            model="gemini-test", contents="streamed gemini"
        )
        chunks = [chunk async for chunk in stream]
    assert [c.text for c in chunks] == ["echo:", " streamed", " gemini"]
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP  # type: ignore[index]
    assert chunks[-1].usage_metadata.candidates_token_count == 3  # type: ignore[union-attr]
    assert chunks[0].candidates[0].finish_reason is None  # type: ignore[index]
    assert fake_google.seen[-1].query == {"alt": "sse"}


async def test_google_count_tokens_and_models(fake_google: FakeProvider) -> None:
    async with google_client(fake_google).aio as client:
        counted = await client.models.count_tokens(
            model="gemini-test", contents="four words right here"
        )
        models = [m.name async for m in await client.models.list()]
    assert counted.total_tokens == 4
    assert models == ["models/gemini-2.5-flash"]


async def test_google_wrong_key_is_client_error(fake_google: FakeProvider) -> None:
    async with google_client(fake_google, key="wrong").aio as client:
        with pytest.raises(genai_errors.ClientError) as caught:
            await client.models.generate_content(model="gemini-test", contents="x")
    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


async def test_google_fail_next_rate_limit(fake_google: FakeProvider) -> None:
    fake_google.fail_next(429, "quota", retry_after=1)
    async with google_client(fake_google).aio as client:
        with pytest.raises(genai_errors.ClientError) as caught:
            await client.models.generate_content(model="gemini-test", contents="x")
    assert (caught.value.code, caught.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert caught.value.message == "quota"


async def test_google_key_in_query(fake_google: FakeProvider) -> None:
    url = f"{fake_google.base_url}/v1beta/models/gemini-test:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "q"}]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, params={"key": KEY}) as response:
            assert response.status == 200
            answer = await response.json()
        async with session.post(url, json=body) as response:
            assert response.status == 403
            assert (await response.json())["error"]["status"] == "PERMISSION_DENIED"
    assert answer["candidates"][0]["content"]["parts"][0]["text"] == "echo: q"


# --- runner ---------------------------------------------------------------------------


async def test_serve_provider_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown provider kind"):
        async with serve_provider("azure", KEY):
            pass


async def test_module_runs_as_process_and_stops_on_sigterm() -> None:
    args = ["--kind", "anthropic", "--key", KEY, "--port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshllm.testing.fake_providers", *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while "ready" not in lines:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), WAIT)
            assert line, f"exited early: {lines}"
            lines.append(line.strip())
        base_url = next(line.split()[1] for line in lines if line.startswith("base_url "))
        assert f"listening {base_url}" in lines
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key=KEY, max_retries=0)
        async with client:
            message = await client.messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "via process"}]
            )
        assert message.content[0].text == "echo: via process"  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
