"""Cloud models by prefix end to end: real ``meshllm`` processes over QUIC, the key of each
provider in one node's environment only, a ``--client`` node driven by each API's
official client (``openai``, ``anthropic``, ``ollama``), and local servers that speak
each provider's documented API standing in for the providers (there is no internet
here), streaming included; the requests counted in metrics, history and usage, priced
by the table."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import AsyncExitStack

import anthropic
import ollama
import openai
import pytest

from meshllm.testing.cluster import Cluster, NodeProcess, wait_for
from meshllm.testing.fake_providers import FakeProvider, serve_provider

KEYS = {"openai": "sk-openai-held", "anthropic": "sk-ant-held", "google": "g-held"}
PRICES = """
[models."openai:gpt-test"]
input_per_mtok = 1000.0
output_per_mtok = 2000.0
"""
ASK = [{"role": "user", "content": "hello from the client"}]
ECHO = "echo: hello from the client"

pytestmark = pytest.mark.e2e
Mesh = tuple[NodeProcess, NodeProcess, "ProvidersInThread"]


class ProvidersInThread:
    """The three fakes, served by an event loop of their own (the test's code blocks)."""

    def __init__(self) -> None:
        self.fakes: dict[str, FakeProvider] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack = AsyncExitStack()

    def __enter__(self) -> ProvidersInThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        for kind, key in KEYS.items():
            self.fakes[kind] = await self._stack.enter_async_context(serve_provider(kind, key))

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NodeProcess, NodeProcess, ProvidersInThread]]:
    root = tmp_path_factory.mktemp("cloud")
    prices = root / "prices.toml"
    prices.write_text(PRICES)
    with ProvidersInThread() as providers, Cluster(root) as cluster:
        env = {
            "OPENAI_API_KEY": KEYS["openai"],
            "OPENAI_BASE_URL": providers.fakes["openai"].base_url,
            "ANTHROPIC_API_KEY": KEYS["anthropic"],
            "ANTHROPIC_BASE_URL": providers.fakes["anthropic"].base_url,
            "GOOGLE_API_KEY": KEYS["google"],
            "GOOGLE_GEMINI_BASE_URL": providers.fakes["google"].base_url,
        }
        holder = cluster.add("--price-file", str(prices), name="holder", env=env)
        client = cluster.add("--client", "--port", "0", name="client")
        wait_for(lambda: cluster.converged(), 60, what="the client to join")
        wait_for(
            lambda: _peer(client, holder)["providers"]
            == {"anthropic": "up", "google": "up", "openai": "up"},
            60, what="the holder's providers to reach the client",
        )  # fmt: skip
        yield holder, client, providers


def _peer(node: NodeProcess, other: NodeProcess) -> dict:
    return next(p for p in node.status()["peers"] if p["node_id"] == other.node_id)


def _admin_get(node: NodeProcess, path: str) -> dict:
    token = (node.state_dir / "admin_token").read_text().strip()
    req = urllib.request.Request(node.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_the_openai_sdk_reaches_each_provider_through_the_holder(mesh: Mesh, provider: str) -> None:
    _, client_node, _ = mesh
    client = openai.OpenAI(base_url=client_node.url + "/v1", api_key="unused", max_retries=0)
    model = f"{provider}:{provider}-test"
    answer = client.chat.completions.create(model=model, messages=ASK)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == ECHO
    assert answer.model == model

    stream = client.chat.completions.create(model=model, messages=ASK, stream=True)  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == ECHO and len([p for p in pieces if p]) >= 4  # word by word


def test_the_anthropic_sdk_speaks_messages_to_an_anthropic_model_in_the_cloud(
    mesh: Mesh,
) -> None:
    _, client_node, _ = mesh
    client = anthropic.Anthropic(base_url=client_node.url, api_key="unused", max_retries=0)
    message = client.messages.create(
        model="anthropic:claude-test", max_tokens=64, messages=ASK,  # type: ignore[arg-type]
    )  # fmt: skip
    assert message.content[0].text == ECHO  # type: ignore[union-attr]
    assert message.usage.output_tokens == 5

    with client.messages.stream(
        model="anthropic:claude-test", max_tokens=2, messages=ASK,  # type: ignore[arg-type]
    ) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.split() == ["echo:", "hello"] and final.stop_reason == "max_tokens"


def test_the_ollama_client_chats_with_a_gemini_model(
    mesh: Mesh,
) -> None:
    _, client_node, _ = mesh
    client = ollama.Client(host=client_node.url)
    answer = client.chat(model="google:gemini-test", messages=ASK)
    assert answer.message.content == ECHO
    streamed = "".join(
        part.message.content or ""
        for part in client.chat(model="google:gemini-test", messages=ASK, stream=True)
    )
    assert streamed == ECHO


def test_the_key_stays_on_its_node_and_every_request_carried_it(
    mesh: Mesh,
) -> None:
    holder, client_node, providers = mesh
    client = openai.OpenAI(base_url=client_node.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="openai:gpt-test", messages=ASK)  # type: ignore[arg-type]
    for node in (holder, client_node):
        shown = json.dumps(node.status()) + json.dumps(node.get("/v1/models"))
        shown += urllib.request.urlopen(node.url + "/metrics", timeout=30).read().decode()
        assert not any(key in shown for key in KEYS.values())
        assert not any(key in node.log() for key in KEYS.values())
    for kind, fake in providers.fakes.items():
        for seen in fake.seen:
            carried = " ".join(seen.headers.values()) + " ".join(seen.query.values())
            assert KEYS[kind] in carried
            assert not any(h.startswith("x-meshllm") for h in seen.headers)


def test_cloud_requests_are_counted_in_metrics_history_and_usage_at_their_price(
    mesh: Mesh,
) -> None:
    holder, client_node, _ = mesh
    client = openai.OpenAI(base_url=client_node.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="openai:gpt-test", messages=ASK, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ECHO

    metrics = urllib.request.urlopen(client_node.url + "/metrics", timeout=30).read().decode()
    routed = re.search(
        r'meshllm_requests_total\{[^}]*model="openai:gpt-test"[^}]*route="routed"[^}]*\} (\S+)',
        metrics,
    )
    assert routed is not None and float(routed.group(1)) >= 1

    def usage() -> dict | None:
        groups = _admin_get(holder, "/api/usage?since=1h&model=openai:gpt-test")["usage"]
        return groups[0] if groups and groups[0]["requests"] >= 2 else None

    group = wait_for(usage, 30, what="the cloud requests in the mesh's usage")
    assert group["cost_source"] == "price_table" and group["currency"] == "USD"
    assert group["tokens_in"] > 0 and group["tokens_out"] > 0
    expected = (group["tokens_in"] * 1000.0 + group["tokens_out"] * 2000.0) / 1e6
    assert group["cost"] == pytest.approx(expected)
    assert group["energy_j"] is None  # the provider's compute, not this mesh's

    rows = _admin_get(holder, "/api/history?model=openai:gpt-test&limit=10")["rows"]
    streamed = next(r for r in rows if r["stream"])
    assert streamed["serving_node"] == holder.node_id and streamed["status"] == 200
    assert (streamed["tokens_in"], streamed["tokens_out"]) == (4, 5)  # the provider's usage
    assert set(streamed["seen_by"]) == {holder.node_id, client_node.node_id}


def test_the_priced_cloud_models_are_listed_while_a_node_holds_their_key(mesh: Mesh) -> None:
    holder, client_node, _ = mesh

    def listed(node: NodeProcess) -> dict[str, openai.types.Model]:
        client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
        return {m.id: m for m in client.models.list()}

    # Each node lists the models of its own price table (the holder's --price-file adds
    # one) whose provider some node holds a key for.
    at_client, at_holder = listed(client_node), listed(holder)
    shipped = at_client["anthropic:claude-sonnet-4-5"]
    assert shipped.owned_by == "anthropic"
    assert shipped.meshllm == {  # type: ignore[attr-defined]
        "warm": True, "nodes": [holder.node_id], "state": "cloud", "pool": [],
    }  # fmt: skip
    assert "openai:gpt-test" in at_holder and "openai:gpt-test" not in at_client
    assert "google:gemini-2.5-flash" in at_client
    names = {m.model for m in ollama.Client(host=client_node.url).list().models}
    assert {"openai:gpt-4o-mini", "openai:gpt-4o-mini:latest"} & names
    assert not any(
        m.model.startswith(("openai:", "anthropic:", "google:"))
        for m in ollama.Client(host=client_node.url).ps().models
    )  # nothing of the cloud's is loaded in the mesh
