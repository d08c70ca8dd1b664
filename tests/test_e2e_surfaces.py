"""Ollama's and Anthropic's APIs end to end, each driven by its official client through
a ``--client`` node, against the real llama-server on the default model: the request
is translated to the OpenAI shape the mesh speaks, tunnelled to the serving node over
QUIC, and the answer translated back, streaming included."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import ollama
import openai
import pytest

from meshllm.serving import ModelFile
from meshllm.testing.cluster import Cluster, NodeProcess, wait_for

MODEL = "gemma-3-270m-q4_k_m"
SLOW = 300.0  # llama-server loads in seconds here, but CI machines are slow and shared

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, default_model: ModelFile
) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    root = tmp_path_factory.mktemp("surfaces")
    models = root / "seed-models"
    models.mkdir()
    os.link(default_model.path, models / f"{MODEL}.gguf")
    with Cluster(root, ["--llama-server", str(llama_server_bin)]) as cluster:
        seed = cluster.add(
            "--model", MODEL, "--models-dir", str(models), "--embeddings", name="seed"
        )  # fmt: skip
        seed.wait_serving(MODEL, SLOW)
        client = cluster.add("--client", "--port", "0", name="client")
        wait_for(lambda: cluster.converged(), 60, what="the client to join")
        wait_for(
            lambda: any(m["id"] == MODEL and m["meshllm"]["warm"]
                        for m in client.get("/v1/models")["data"]),
            60, what="the model to be warm at the client",
        )  # fmt: skip
        yield seed, client


def test_the_ollama_client_lists_chats_generates_and_streams(mesh) -> None:  # type: ignore[no-untyped-def]
    _, client_node = mesh
    client = ollama.Client(host=client_node.url)
    names = [m.model for m in client.list().models]
    assert f"{MODEL}:latest" in names  # Ollama's names carry a tag; either form is asked
    loaded = [m.model for m in client.ps().models]
    assert f"{MODEL}:latest" in loaded  # hot on the seed
    assert client.show(MODEL).details is not None

    answer = client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
        options={"num_predict": 8},
    )  # fmt: skip
    assert answer.done and answer.message.role == "assistant" and answer.message.content
    assert answer.eval_count and 0 < answer.eval_count <= 8 and answer.prompt_eval_count

    parts = list(
        client.chat(
            model=MODEL, messages=[{"role": "user", "content": "Count: one, two,"}],
            options={"num_predict": 8}, stream=True,
        )
    )  # fmt: skip
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert "".join(p.message.content for p in parts)

    generated = client.generate(model=MODEL, prompt="The sky is", options={"num_predict": 6})
    assert generated.done and generated.response
    streamed = list(
        client.generate(model=MODEL, prompt="One, two,", options={"num_predict": 6}, stream=True)
    )
    assert streamed[-1].done and "".join(p.response for p in streamed)

    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404 and "no-such-model" in missing.value.error

    embedded = client.embed(model=MODEL, input=["a red fox", "a blue car"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 100

    # No prompt: a load (one token asked of the serving node, so its keep_alive goes too).
    assert client.generate(model=MODEL).done_reason == "load"


def test_the_anthropic_sdk_creates_streams_and_counts_tokens(mesh) -> None:  # type: ignore[no-untyped-def]
    _, client_node = mesh
    client = anthropic.Anthropic(base_url=client_node.url, api_key="unused", max_retries=0)
    message = client.messages.create(
        model=MODEL, max_tokens=8, system="You are terse.",
        messages=[{"role": "user", "content": "Say hello."}],
    )  # fmt: skip
    assert message.role == "assistant" and message.content[0].type == "text"
    assert message.content[0].text and message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 8 and message.usage.input_tokens > 0
    # llama-server's own /v1/messages answered, untranslated: its ids are its completions'
    # (the mesh's translation names a message msg_…).
    assert message.id.startswith("chatcmpl-")

    with client.messages.stream(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "One, two,"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")

    counted = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "How many tokens is this?"}]
    )
    assert counted.input_tokens > 0

    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=0, messages=[])


def test_the_openai_sdk_gets_embeddings_from_a_generative_model(mesh) -> None:  # type: ignore[no-untyped-def]
    _, client_node = mesh
    client = openai.OpenAI(base_url=f"{client_node.url}/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model=MODEL, input=["a red fox", "a red fox", "tax law"])
    fox, same, law = (item.embedding for item in answer.data)
    assert len(fox) > 100 and fox == same  # the same text, the same vector

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / (
            sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5
        )

    assert cosine(fox, same) > cosine(fox, law)
    assert answer.usage.prompt_tokens > 0
