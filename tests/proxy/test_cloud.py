"""Cloud models by prefix through the proxy, in memory: the official ``openai`` SDK asks a
node, the node that holds the provider's key (itself, or a peer through the tunnel)
sends it on to a fake of the provider's documented API, and the answer comes back in
OpenAI's shape, streaming included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from aiohttp.test_utils import TestClient

from meshllm.cloud import KINDS, Provider
from meshllm.proxy import anthropic_surface
from meshllm.proxy.cloud import CloudBackends, UsageFolder
from meshllm.testing.fake_providers import FakeProvider, serve_provider
from tests.proxy.conftest import SELF, MakeClient, MemoryMesh

KEY = "sk-the-holders-own-key"
PEER = "peer"
ASK = [{"role": "user", "content": "hello from the mesh"}]
SURFACES = anthropic_surface.SURFACES


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, FakeProvider]]:
    async with (
        serve_provider("openai", KEY) as fake_openai,
        serve_provider("anthropic", KEY) as fake_anthropic,
        serve_provider("google", KEY) as fake_google,
    ):
        yield {"openai": fake_openai, "anthropic": fake_anthropic, "google": fake_google}


def cloud(fakes: dict[str, FakeProvider], *names: str, key: str = KEY) -> CloudBackends:
    return CloudBackends({n: Provider(KINDS[n], fakes[n].url, key) for n in names})


@pytest.fixture
async def clouds(mesh: MemoryMesh) -> AsyncIterator[list[CloudBackends]]:
    made: list[CloudBackends] = []
    yield made
    for backends in made:
        await backends.close()


def hold(mesh: MemoryMesh, clouds: list[CloudBackends], node: str, backends: CloudBackends) -> None:
    mesh.clouds[node] = backends
    clouds.append(backends)


def sdk(client: TestClient[Any, Any]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")), api_key="mesh-key", max_retries=0
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
@pytest.mark.parametrize("holder", [SELF, PEER])
async def test_a_cloud_model_answers_through_the_node_that_holds_its_key(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
    provider: str,
    holder: str,
) -> None:
    hold(mesh, clouds, holder, cloud(fakes, provider))
    model = f"{provider}:model-x"
    client = sdk(await make_client())

    answer = await client.chat.completions.create(model=model, messages=ASK)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "echo: hello from the mesh"
    assert answer.model == model
    assert answer.usage is not None and answer.usage.prompt_tokens == 4
    assert answer.usage.completion_tokens == 5

    seen = fakes[provider].seen[-1]
    if provider == "google":
        assert seen.path.endswith("/models/model-x:generateContent")
        assert seen.headers["x-goog-api-key"] == KEY
    else:
        assert seen.body["model"] == "model-x"  # the prefix is the mesh's, not the provider's
        auth = seen.headers.get("authorization", "") + seen.headers.get("x-api-key", "")
        assert KEY in auth and "mesh-key" not in auth  # the holder's key, not the client's
    assert not any(h.startswith("x-meshllm") for h in seen.headers)  # no mesh ids leave it


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
async def test_a_streamed_cloud_answer_comes_event_by_event_with_its_usage(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
    provider: str,
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, provider))
    client = sdk(await make_client())
    stream = await client.chat.completions.create(
        model=f"{provider}:model-x",
        messages=ASK,
        stream=True,
        max_tokens=3,  # type: ignore[arg-type]
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["echo:", "hello", "from"]  # cut to 3 words
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    # The client asked no usage: no chunk without choices trips it, but the usage rides
    # on the finish chunk, for the records to price it.
    assert all(c.choices for c in chunks)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens == 3 and usage[-1].prompt_tokens == 4


async def test_openai_streams_ask_for_usage_and_keep_the_clients_own_request(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, SELF, cloud(fakes, "openai"))
    client = sdk(await make_client())
    stream = await client.chat.completions.create(
        model="openai:gpt-x",
        messages=ASK,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert fakes["openai"].seen[-1].body["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # as OpenAI sends it


async def test_a_key_the_provider_refuses_sends_the_request_to_another_holder(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    wrong = cloud(fakes, "anthropic", key="sk-revoked")
    hold(mesh, clouds, SELF, wrong)  # tried first: local, and equally loaded
    hold(mesh, clouds, PEER, cloud(fakes, "anthropic"))
    client = sdk(await make_client())
    answer = await client.chat.completions.create(model="anthropic:claude-x", messages=ASK)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "echo: hello from the mesh"
    assert wrong.states() == {"anthropic": "refused"}  # announced, so others skip it


async def test_when_every_key_is_refused_the_client_hears_why(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, "google", key="sk-wrong"))
    client = sdk(await make_client())
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="google:gemini-x", messages=ASK)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert "key was refused" in caught.value.message


async def test_provider_errors_keep_their_meaning_for_the_client(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, "anthropic"))
    client = sdk(await make_client())
    fakes["anthropic"].fail_next(429, "slow down", retry_after=7)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="anthropic:claude-x", messages=ASK)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "7"
    assert "slow down" in limited.value.message

    fakes["anthropic"].fail_next(500, "it broke")
    with pytest.raises(openai.APIStatusError) as broken:
        await client.chat.completions.create(model="anthropic:claude-x", messages=ASK)  # type: ignore[arg-type]
    assert broken.value.status_code == 502 and "it broke" in broken.value.message

    fakes["anthropic"].fail_next(529, "overloaded")
    with pytest.raises(openai.APIStatusError) as overloaded:
        await client.chat.completions.create(model="anthropic:claude-x", messages=ASK)  # type: ignore[arg-type]
    assert overloaded.value.status_code == 503


async def test_what_a_provider_cannot_take_is_a_400_before_it_leaves(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, "anthropic", "google"))
    client = sdk(await make_client())
    with pytest.raises(openai.BadRequestError, match="one choice"):
        await client.chat.completions.create(model="anthropic:claude-x", messages=ASK, n=2)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="chat completions"):
        await client.embeddings.create(model="google:text-embedding-x", input="hi")
    assert fakes["anthropic"].seen == [] and fakes["google"].seen == []


async def test_no_holder_is_a_404_that_says_which_variable_to_set(
    mesh: MemoryMesh, make_client: MakeClient
) -> None:
    client = sdk(await make_client())
    with pytest.raises(openai.NotFoundError, match="ANTHROPIC_API_KEY"):
        await client.chat.completions.create(model="anthropic:claude-x", messages=ASK)  # type: ignore[arg-type]
    mesh.refused["anthropic"] = {PEER: "refused"}
    with pytest.raises(openai.APIStatusError, match="refused the API key") as caught:
        await client.chat.completions.create(model="anthropic:claude-x", messages=ASK)  # type: ignore[arg-type]
    assert caught.value.status_code == 502


async def test_a_provider_model_name_that_is_no_model_id_is_refused(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, "google"))
    client = sdk(await make_client())
    with pytest.raises(openai.BadRequestError, match="model id"):
        await client.chat.completions.create(model="google:../../v1beta/files", messages=ASK)  # type: ignore[arg-type]
    assert fakes["google"].seen == []


async def test_embeddings_pass_through_to_openai(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, "openai"))
    client = sdk(await make_client())
    answer = await client.embeddings.create(model="openai:embed-x", input=["a", "b"])
    assert len(answer.data) == 2 and answer.model == "openai:embed-x"
    assert fakes["openai"].seen[-1].body["model"] == "embed-x"


async def test_an_anthropic_client_reaches_an_anthropic_model_untranslated(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    """What the OpenAI shape cannot say (top_k, metadata, cache_control, a beta) reaches
    Anthropic as the client said it, and the answer comes back as Anthropic sent it."""
    hold(mesh, clouds, PEER, cloud(fakes, "anthropic"))
    client = await make_client(surfaces=SURFACES)
    base = str(client.make_url("")).rstrip("/")
    sdk_client = anthropic.AsyncAnthropic(base_url=base, api_key="mesh-key", max_retries=0)
    system = [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]
    message = await sdk_client.messages.create(
        model="anthropic:claude-x", max_tokens=64, system=system,  # type: ignore[arg-type]
        metadata={"user_id": "u1"}, messages=ASK,  # type: ignore[arg-type]
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
        extra_body={"top_k": 5},
    )  # fmt: skip
    assert message.content[0].text == "echo: hello from the mesh"  # type: ignore[union-attr]
    seen = fakes["anthropic"].seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.body["model"] == "claude-x" and seen.body["system"] == system
    assert seen.body["top_k"] == 5 and seen.body["metadata"] == {"user_id": "u1"}
    assert seen.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert seen.headers["x-api-key"] == KEY and "mesh-key" not in str(seen.headers)

    async with sdk_client.messages.stream(
        model="anthropic:claude-x", max_tokens=2, messages=ASK,  # type: ignore[arg-type]
    ) as stream:  # fmt: skip
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text.split() == ["echo:", "hello"] and final.usage.output_tokens == 2
    assert fakes["anthropic"].seen[-1].body["stream"] is True


async def test_an_anthropic_client_hears_anthropics_own_errors(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, "anthropic"))
    client = await make_client(surfaces=SURFACES)
    base = str(client.make_url("")).rstrip("/")
    sdk_client = anthropic.AsyncAnthropic(base_url=base, api_key="mesh-key", max_retries=0)
    fakes["anthropic"].fail_next(529, "Overloaded")
    with pytest.raises(anthropic.APIStatusError) as caught:
        await sdk_client.messages.create(model="anthropic:claude-x", max_tokens=8, messages=ASK)  # type: ignore[arg-type]
    assert caught.value.status_code == 529 and "Overloaded" in caught.value.message


async def test_anthropic_counts_the_tokens_of_its_own_models(
    mesh: MemoryMesh,
    make_client: MakeClient,
    fakes: dict[str, FakeProvider],
    clouds: list[CloudBackends],
) -> None:
    hold(mesh, clouds, PEER, cloud(fakes, "anthropic"))
    client = await make_client(surfaces=SURFACES)
    base = str(client.make_url("")).rstrip("/")
    sdk_client = anthropic.AsyncAnthropic(base_url=base, api_key="mesh-key", max_retries=0)
    counted = await sdk_client.messages.count_tokens(model="anthropic:claude-x", messages=ASK)  # type: ignore[arg-type]
    assert counted.input_tokens == 4
    seen = fakes["anthropic"].seen[-1]
    assert seen.path == "/v1/messages/count_tokens" and "stream" not in seen.body
    assert seen.body["model"] == "claude-x"


def test_the_usage_fold_puts_the_usage_on_the_finish_chunk_whatever_the_pieces() -> None:
    """OpenAI's stream as a provider sends it, comments and CRLF included, cut anywhere:
    the usage-only chunk is gone and its usage rides on the finish chunk."""
    events = [
        b": keep-alive",  # a comment: no data line
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
        b"data: [DONE]",
    ]
    stream = b"\r\n\r\n".join(events) + b"\r\n\r\n"
    for cut in range(len(stream)):
        folder = UsageFolder()
        out = folder.feed(stream[:cut]) + folder.feed(stream[cut:]) + folder.end()
        data = [e for e in out.split(b"\n\n") if e.startswith(b"data: {")]
        chunks = [json.loads(e[6:]) for e in data]
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"], cut
        assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1}
        assert out.endswith(b"data: [DONE]\n\n") and b": keep-alive" in out
