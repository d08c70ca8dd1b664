"""The OpenAI-compatible proxy across real ``meshllm`` processes (issue: OpenAI-compatible proxy).

Every node and every fake backend is its own process on 127.0.0.1: nodes front
the backends with ``--endpoint``, requests go to a node's HTTP port and reach
the backend locally or over a QUIC tunnel.  Processes started here are ended by
pid, in fixtures and ``finally`` blocks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from meshllm.testing.cluster import BackendProcess, Cluster, NodeProcess, wait_for

WARM = 30.0  # generous: a busy 2-core box; these are behaviour tests, timings live in the bench
READY = 30.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)


# --- fake backends as processes ------------------------------------------------------------


StartBackend = Callable[[str], BackendProcess]


def spawn_backend(model: str, log_path: Path) -> BackendProcess:
    """Launch a fake backend process for ``model`` (call ``wait_ready`` before use)."""
    return BackendProcess(log_path, [model]).start(wait=False)


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator[StartBackend]:
    """Start fake backend processes (``start_backend(model)``); all killed at the end."""
    started: list[BackendProcess] = []

    def start(model: str) -> BackendProcess:
        backend = spawn_backend(model, tmp_path / f"backend-{len(started)}-{model}.log")
        started.append(backend)
        backend.wait_ready()
        return backend

    try:
        yield start
    finally:
        for backend in started:
            backend.kill()


def new_cluster(root: Path) -> Cluster:
    """A cluster whose nodes scan an empty models dir: only ``--endpoint`` models exist."""
    empty = root / "no-models"
    empty.mkdir(parents=True, exist_ok=True)
    return Cluster(root, ["--models-dir", str(empty)])


def warm_nodes(node: NodeProcess, model: str) -> set[str]:
    """The node ids ``node``'s ``/v1/models`` lists as serving ``model`` (empty: cold/unknown)."""
    for entry in node.get("/v1/models")["data"]:
        if entry["id"] == model and entry["meshllm"]["warm"]:
            return set(entry["meshllm"]["nodes"])
    return set()


def wait_warm(node: NodeProcess, model: str, servers: list[NodeProcess]) -> None:
    want = {s.node_id for s in servers}
    wait_for(
        lambda: warm_nodes(node, model) == want,
        WARM,
        what=f"{model} warm on {len(want)} node(s) as seen from {node.state_dir.name}",
    )


# --- HTTP helpers ----------------------------------------------------------------------------


def chat(model: str | None, text: str, *, stream: bool = False, **fake: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if model is not None:
        body["model"] = model
    if stream:
        body["stream"] = True
    if fake:
        body["fake"] = fake
    return body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content(self) -> str:
        return self.json()["choices"][0]["message"]["content"]

    @property
    def node(self) -> str:
        return self.headers.get("x-meshllm-node", "")


async def post(
    session: aiohttp.ClientSession, url: str, body: Any = None, *, data: Any = None
) -> Answer:
    """POST ``body`` as JSON (or raw ``data``); a bare node URL means its chat route."""
    path = url if "/v1/" in url else url + "/v1/chat/completions"
    if data is not None:
        kwargs: dict[str, Any] = {"data": data, "headers": {"Content-Type": "application/json"}}
    else:
        kwargs = {"json": body}
    async with session.post(path, **kwargs) as resp:
        payload = await resp.read()
        headers = {k.lower(): v for k, v in resp.headers.items()}
        return Answer(resp.status, headers, payload)


def sse_data(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    out = []
    for event in raw.decode().split("\n\n"):
        if not event:
            continue
        lines = [line for line in event.split("\n") if line.startswith("data:")]
        assert len(lines) == 1, event
        out.append(lines[0][5:].strip())
    return out


# --- one mesh for the read-only tests --------------------------------------------------------


@dataclass
class Mesh:
    a: NodeProcess  # fronts model-a
    b: NodeProcess  # fronts model-b
    x1: NodeProcess  # fronts a model-x backend
    x2: NodeProcess  # fronts another model-x backend
    client: NodeProcess  # --client: proxy only


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("proxy-mesh")
    backends: list[BackendProcess] = []
    try:
        with new_cluster(root) as cluster:
            nodes = []
            for i, model in enumerate(["model-a", "model-b", "model-x", "model-x"]):
                backends.append(spawn_backend(model, root / f"backend-{i}-{model}.log"))
            for backend in backends:
                backend.wait_ready()
                nodes.append(cluster.add("--endpoint", backend.url))
            client = cluster.add("--client")
            m = Mesh(*nodes, client)
            for node in (m.a, m.b, m.client):
                wait_warm(node, "model-a", [m.a])
                wait_warm(node, "model-b", [m.b])
                wait_warm(node, "model-x", [m.x1, m.x2])
            yield m
    finally:
        for backend in backends:
            backend.kill()


# --- (a) routing -------------------------------------------------------------------------------


async def test_request_goes_to_the_node_serving_the_model(mesh: Mesh) -> None:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
        remote = await post(s, mesh.a.url, chat("model-b", "to b via a"))
        assert remote.status == 200, remote.body
        assert remote.content == "[model-b] to b via a"
        assert remote.node == mesh.b.node_id
        assert remote.headers["x-meshllm-model"] == "model-b"
        assert remote.json()["model"] == "model-b"

        local = await post(s, mesh.a.url, chat("model-a", "a stays home"))
        assert local.status == 200, local.body
        assert local.content == "[model-a] a stays home"
        assert local.node == mesh.a.node_id

        back = await post(s, mesh.b.url, chat("model-a", "to a via b"))
        assert (back.status, back.content, back.node) == (
            200,
            "[model-a] to a via b",
            mesh.a.node_id,
        )

        # The other inference routes take the same path.
        comp = await post(s, mesh.a.url + "/v1/completions", {"model": "model-b", "prompt": "p"})
        assert comp.status == 200, comp.body
        assert comp.json()["choices"][0]["text"] == "[model-b] p"
        assert comp.node == mesh.b.node_id
        emb = await post(s, mesh.b.url + "/v1/embeddings", {"model": "model-a", "input": ["x"]})
        assert emb.status == 200, emb.body
        assert len(emb.json()["data"]) == 1 and emb.node == mesh.a.node_id


# --- (b) spread --------------------------------------------------------------------------------


async def test_concurrent_requests_spread_over_both_replicas(mesh: Mesh) -> None:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
        # A little delay keeps requests in flight, so "least loaded" sees them.
        answers = await asyncio.gather(
            *(post(s, mesh.client.url, chat("model-x", f"r{i}", chunks=2, delay=0.1))
              for i in range(40))
        )  # fmt: skip
    assert [a.status for a in answers] == [200] * 40
    assert [a.content for a in answers] == [f"[model-x] r{i}" for i in range(40)]
    served = [a.node for a in answers]
    assert set(served) == {mesh.x1.node_id, mesh.x2.node_id}
    assert all(a.headers["x-meshllm-model"] == "model-x" for a in answers)


# --- (c) streaming ------------------------------------------------------------------------------


async def test_streaming_through_a_client_node_is_intact(mesh: Mesh) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    arrivals: list[float] = []
    raw = b""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
        body = chat("model-b", text, stream=True, chunks=6, delay=0.2)
        async with s.post(mesh.client.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["x-meshllm-node"] == mesh.b.node_id
            async for chunk in resp.content.iter_any():
                arrivals.append(loop.time())
                raw += chunk
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert len(events) == 6 + 1  # every content chunk, then the finish event with usage
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "model-b" for e in events)
    assert len({e["id"] for e in events}) == 1
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert content == f"[model-b] {text}"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" in events[-1]
    # Not buffered: events came over about a second (5 gaps of 0.2 s), not all at once.
    # A lower bound only, which a slow machine can only make larger.
    assert len(arrivals) >= 2 and arrivals[-1] - arrivals[0] >= 0.4


async def test_completions_stream_through_a_client_node(mesh: Mesh) -> None:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
        body = {"model": "model-x", "prompt": "abc def", "stream": True, "fake": {"chunks": 3}}
        resp = await post(s, mesh.client.url + "/v1/completions", body)
    assert resp.status == 200
    data = sse_data(resp.body)
    assert data[-1] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1]) == "[model-x] abc def"


# --- (d) the openai SDK --------------------------------------------------------------------------


def test_openai_sdk_through_a_client_node(mesh: Mesh) -> None:
    client = openai.OpenAI(base_url=mesh.client.url + "/v1", api_key="unused", max_retries=0)
    try:
        ids = {m.id for m in client.models.list()}
        assert {"model-a", "model-b", "model-x"} <= ids

        done = client.chat.completions.create(
            model="model-a", messages=[{"role": "user", "content": "plain"}]
        )
        assert done.choices[0].message.content == "[model-a] plain"
        assert done.model == "model-a"
        assert done.usage is not None and done.usage.total_tokens > 0

        raw = client.chat.completions.with_raw_response.create(
            model="model-b", messages=[{"role": "user", "content": "raw"}]
        )
        assert raw.headers["x-meshllm-node"] == mesh.b.node_id
        assert raw.parse().choices[0].message.content == "[model-b] raw"

        stream = client.chat.completions.create(
            model="model-x",
            messages=[{"role": "user", "content": "streamed words here"}],
            stream=True,
            extra_body={"fake": {"chunks": 5}},
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(pieces) == "[model-x] streamed words here"
        assert len(pieces) >= 5

        emb = client.embeddings.create(model="model-b", input=["one", "two"])
        assert [d.index for d in emb.data] == [0, 1]

        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=["not", "a", "string"], messages=[])  # type: ignore[arg-type]
    finally:
        client.close()


# --- (f) malformed input, fallbacks, errors -------------------------------------------------


async def test_malformed_input_gets_openai_errors_and_the_node_stays_healthy(mesh: Mesh) -> None:
    url = mesh.client.url
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
        bad = await post(s, url + "/v1/chat/completions", data=b'{"model": "model-a", "messa')
        assert bad.status == 400
        assert set(bad.json()["error"]) >= {"message", "type", "code"}
        assert bad.json()["error"]["type"] == "invalid_request_error"

        empty = await post(s, url + "/v1/chat/completions", data=b"")
        assert empty.status == 400 and "error" in empty.json()
        not_object = await post(s, url + "/v1/chat/completions", [1, 2])
        assert not_object.status == 400 and "error" in not_object.json()
        bad_model = await post(s, url + "/v1/chat/completions", {"model": 7, "messages": []})
        assert bad_model.status == 400 and "error" in bad_model.json()

        # Over the 32 MiB cap: with a Content-Length, and chunked without one.
        huge = b'{"model": "model-a", "pad": "' + b"x" * (33 * 1024 * 1024) + b'"}'

        async def chunked() -> AsyncIterator[bytes]:
            for i in range(0, len(huge), 1 << 20):
                yield huge[i : i + (1 << 20)]

        for data in (huge, chunked()):
            too_big = await post(s, url + "/v1/chat/completions", data=data)
            assert too_big.status == 413, too_big.body[:200]
            assert too_big.json()["error"]["type"] == "invalid_request_error"

        async with s.get(url + "/v1/nothing-here") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["type"] == "not_found_error"
        async with s.post(url + "/v2/chat/completions", json={}) as resp:
            assert resp.status == 404 and "error" in await resp.json()

        unknown = await post(s, url, chat("no-such-model", "who answers"))
        assert unknown.status == 200, unknown.body
        used = unknown.headers["x-meshllm-model"]
        assert used == "model-x"  # the first available target: the model with most replicas
        assert unknown.content == f"[{used}] who answers"
        missing = await post(s, url, chat(None, "no model named"))
        assert missing.status == 200 and missing.headers["x-meshllm-model"] == used

        # Still healthy and still routing.
        async with s.get(url + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["ok"]
        ok = await post(s, url, chat("model-b", "after abuse"))
        assert (ok.status, ok.content) == (200, "[model-b] after abuse")


async def test_nothing_served_gives_503_with_retry_after(tmp_path: Path) -> None:
    with new_cluster(tmp_path) as cluster:
        lonely = cluster.add()
        client = cluster.add("--client")
        wait_for(cluster.converged, WARM, what="the client to join")
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
            for node in (lonely, client):
                answer = await post(s, node.url, chat(None, "hello?"))
                assert answer.status == 503, answer.body
                assert int(answer.headers["retry-after"]) > 0
                error = answer.json()["error"]
                assert error["message"] and error["type"] == "server_error"
                # A model nobody has heard of is not coming: 404 at once, no Retry-After.
                answer = await post(s, node.url, chat("anything", "hello?"))
                assert answer.status == 404, answer.body
                assert "retry-after" not in answer.headers
                assert answer.json()["error"]["code"] == "model_not_found"
                async with s.get(node.url + "/health") as resp:
                    assert resp.status == 200


# --- (e) a replica killed under load ------------------------------------------------------------


@pytest.mark.parametrize("victim", ["node", "backend"])
async def test_kill_9_of_a_replica_under_load_loses_no_request(
    victim: str, tmp_path: Path, start_backend: StartBackend
) -> None:
    with new_cluster(tmp_path) as cluster:
        backends = [start_backend("model-x") for _ in range(2)]
        replicas = [cluster.add("--endpoint", b.url) for b in backends]
        # Requests already acknowledged by the doomed node when it dies wait on the client's
        # own verdict: another node's "dead" notice only makes it probe at once (a report is
        # a suspicion, never a removal), and its link is closed when its suspicion ends.
        client = cluster.add("--client")
        wait_warm(client, "model-x", replicas)
        doomed, survivor = replicas
        doomed_backend = backends[0]

        n = 50
        # Answers take 3 s, plus about 2 s to notice the death: 30 s is far more than enough.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            # Each answer takes 3 s at the backend: all of them are in flight at the kill.
            tasks = [
                asyncio.ensure_future(
                    post(s, client.url, chat("model-x", f"q{i}", chunks=2, delay=3.0))
                )
                for i in range(n)
            ]

            def doomed_is_busy() -> bool:
                # The node's own load: requests at its backend right now.
                return doomed.status()["load"] >= 10

            await asyncio.to_thread(wait_for, doomed_is_busy, WARM, 0.05, "requests in flight")
            if victim == "node":
                doomed.kill()
            else:
                doomed_backend.kill()
            answers = await asyncio.gather(*tasks)

        assert [a.status for a in answers] == [200] * n, [a.body[:200] for a in answers]
        assert [a.content for a in answers] == [f"[model-x] q{i}" for i in range(n)]
        assert {a.node for a in answers} == {survivor.node_id}
        assert client.alive() and survivor.alive()
        assert client.get("/health")["ok"]


# --- (g) a replica killed between requests: the data path notices -----------------------------


async def test_requests_right_after_a_kill_9_finish_on_the_survivor(
    tmp_path: Path, start_backend: StartBackend
) -> None:
    """A node killed with ``kill -9`` still has its QUIC link open here: nothing closed it.
    A request sent to it gets no acknowledgement within ``tunnel_ack_timeout``, so it goes
    to the other replica and the dead node is suspected (DESIGN.md §5).  Probes are slowed
    on every node so that the data path, not the probes, is what notices."""
    slow_probes = ("--probe-interval", "60", "--probe-timeout", "30")
    with new_cluster(tmp_path) as cluster:
        backends = [start_backend("model-x") for _ in range(2)]
        replicas = [cluster.add("--endpoint", b.url, *slow_probes) for b in backends]
        client = cluster.add("--client", *slow_probes)
        wait_warm(client, "model-x", replicas)
        survivor, doomed = replicas  # the seed survives: its token is the mesh's way in
        loop = asyncio.get_running_loop()

        async def timed(s: aiohttp.ClientSession, text: str) -> tuple[Answer, float]:
            start = loop.time()
            # A little delay keeps answers in flight, so "least loaded" spreads the requests.
            answer = await post(s, client.url, chat("model-x", text, chunks=2, delay=0.2))
            return answer, loop.time() - start

        results: list[tuple[Answer, float]] = []
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as s:
            # Both replicas answer once first, so the client holds a link to each: the
            # dead node's requests then meet the ack deadline, not a dial (routes tests).
            answered: set[str] = set()
            for _ in range(10):
                warmup = await asyncio.gather(*(timed(s, "warm-up") for _ in range(6)))
                answered |= {a.node for a, _ in warmup}
                if answered == {survivor.node_id, doomed.node_id}:
                    break
            assert answered == {survivor.node_id, doomed.node_id}
            doomed.kill()
            for wave in range(3):
                results += await asyncio.gather(*(timed(s, f"w{wave} q{i}") for i in range(10)))
        answers = [a for a, _ in results]
        took = sorted(t for _, t in results)
        print(
            f"\nafter kill -9: {len(took)} requests, slowest {took[-1]:.2f} s, "
            f"median {took[len(took) // 2]:.2f} s, "
            f"{sum(t >= 1.0 for t in took)} waited out the 1 s ack timeout"
        )
        assert [a.status for a in answers] == [200] * len(answers), [a.body[:200] for a in answers]
        assert [a.content for a in answers] == [
            f"[model-x] w{w} q{i}" for w in range(3) for i in range(10)
        ]
        assert {a.node for a in answers} == {survivor.node_id}
        # Some went to the dead node first and were given up on after the ack timeout (a
        # lower bound: a slow machine only makes it larger); none waited for the QUIC link
        # to time out (60 s) or for the 660 s answer timeout.
        assert took[-1] >= 1.0
        assert took[-1] < 20.0
        # The proxy reported the broken data path: the client suspects the dead node (or,
        # once the suspicion timed out, has removed it), long before its next probe.
        peers = {p["node_id"]: p for p in client.status()["peers"]}
        assert doomed.node_id not in peers or peers[doomed.node_id]["suspect"], peers
        assert client.alive() and survivor.alive()
