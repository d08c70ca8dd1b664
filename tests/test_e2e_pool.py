"""The model pool end to end: real nodes, the real llama-server, the default model's GGUF.

A second (third, ...) model is the default model's file linked under another name: the
pool, placement and llama-server treat it as a model of its own.  Covered: a cold model
loads on its first request (with SSE ``: loading`` comments while it warms) and cools
off by its TTL on every node's view; ``--max-loaded 1`` evicts the idle model, never a
busy one; two nodes asked at once load a model once; a pinned model whose host is
killed with -9 is loaded again elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from meshllm.serving import ModelFile
from meshllm.testing.cluster import Cluster, NodeProcess, wait_for
from meshllm.testing.pool import (
    chat_stream_request,
    linked_models_dir,
    llama_aliases,
    llama_servers_under,
    pool_state,
)

MODEL = "gemma-3-270m-q4_k_m"
SLOW = 300.0  # a load takes seconds here; CI machines are slow and shared
FAST_MESH = ["--probe-interval", "0.5", "--probe-timeout", "0.5"]


def models_dir(root: Path, default_model: ModelFile, *names: str) -> Path:
    return linked_models_dir(root, default_model.path, *names)


class EventLog:
    """``GET /api/events`` of a node, read on a thread into ``events`` until the node ends."""

    def __init__(self, node: NodeProcess) -> None:
        self.events: list[dict[str, Any]] = []
        self._resp = urllib.request.urlopen(f"{node.url}/api/events", timeout=SLOW)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind = None
        try:
            for raw in self._resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind is not None:
                    self.events.append(json.loads(line[6:]))
        except (OSError, ValueError):
            pass

    def states(self, node: NodeProcess, model: str) -> list[str]:
        """The states ``model`` went through on ``node``, in order, as the events said."""
        return [
            e["state"]
            for e in self.events
            if e.get("type") == "model_state" and e["node_id"] == node.node_id
            and e["model"] == model
        ]  # fmt: skip


def meshllm_cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshllm", *args, "--port", str(node.http_port),
         "--state-dir", str(node.state_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def chat(node: NodeProcess, model: str, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", timeout=SLOW)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, **extra
    )


def raw_stream(node: NodeProcess, model: str, max_tokens: int = 8, **extra: Any) -> list[str]:
    """A streamed chat read line by line, SSE comments included."""
    req = chat_stream_request(node, model, max_tokens, **extra)
    with urllib.request.urlopen(req, timeout=SLOW) as resp:
        return [line.decode().rstrip("\n") for line in resp]


@pytest.fixture
def mesh(tmp_path: Path, llama_server_bin: Path):
    with Cluster(tmp_path, ["--llama-server", str(llama_server_bin), *FAST_MESH]) as cluster:
        yield cluster
    assert llama_servers_under(tmp_path) == [], "a llama-server outlived its node"


def test_a_cold_model_loads_on_its_first_request_and_cools_off_everywhere(
    mesh: Cluster, default_model: ModelFile, tmp_path: Path
) -> None:
    # A has the default model and a second one; B has only the default model.
    a_dir = models_dir(tmp_path / "a-models", default_model, MODEL, "second")
    b_dir = models_dir(tmp_path / "b-models", default_model, MODEL)
    a = mesh.add("--model", MODEL, "--models-dir", str(a_dir), "--ttl", "6s", name="a")
    b = mesh.add("--model", MODEL, "--models-dir", str(b_dir), "--ttl", "6s", name="b")
    wait_for(lambda: pool_state(b, a, "second") == "cold", 60, what="B to see A's cold model")
    assert "second" not in llama_aliases(a)
    events = EventLog(b)

    # Asked on B, whose disk lacks it: placed on A, which loads it; B's stream waits
    # with ": loading" comments, then the answer comes from A.
    lines = raw_stream(b, "second")
    assert any(line.startswith(": loading second") for line in lines), lines[:5]
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks and all(c["model"] == "second" for c in chunks)
    assert lines[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in lines
    assert "second" in llama_aliases(a)
    assert pool_state(a, a, "second") in ("hot", "cooling")

    # The warm model answers the official client at once, through B.
    reply = chat(b, "second")
    assert reply.model == "second" and reply.choices[0].message.content is not None
    models = {m["id"]: m for m in b.get("/v1/models")["data"]}
    assert models["second"]["meshllm"]["warm"] is True
    assert models["second"]["meshllm"]["state"] == "hot"  # hot or cooling somewhere
    detail = {(n["node_id"], n["state"]) for n in models["second"]["meshllm"]["pool"]}
    assert detail <= {(a.node_id, "hot"), (a.node_id, "cooling")} and detail

    # After its TTL it unloads: cold in A's view and in B's, its server gone.
    for viewer in (a, b):
        wait_for(
            lambda v=viewer: pool_state(v, a, "second") == "cold",
            60,
            what=f"{viewer.state_dir.name} to see the model cold",
        )
    wait_for(lambda: "second" not in llama_aliases(a), 30, what="A's server for it to stop")

    # B's /api/events told the whole story of A's model: warming, loaded, unloaded.
    wait_for(lambda: events.states(a, "second")[-1:] == ["cold"], 30, what="the cold event")
    story = events.states(a, "second")
    assert story[0] == "warming" and "unloading" in story, story
    assert {"hot", "cooling"} & set(story), story
    assert events.events[0]["type"] == "snapshot"


def test_pool_commands_here_and_owner_signed_on_other_nodes(
    mesh: Cluster, default_model: ModelFile, tmp_path: Path
) -> None:
    a_dir = models_dir(tmp_path / "a-models", default_model, MODEL, "second")
    b_dir = models_dir(tmp_path / "b-models", default_model, MODEL, "other")
    a = mesh.add("--model", MODEL, "--models-dir", str(a_dir), name="a")  # the seed: owner
    b = mesh.add("--model", MODEL, "--models-dir", str(b_dir), name="b")
    wait_for(lambda: pool_state(b, a, "second") == "cold", 60, what="B to see A's models")
    wait_for(lambda: pool_state(a, b, "other") == "cold", 60, what="A to see B's models")

    # A load with no node is what a request does: any member may ask; placement picks A.
    out = meshllm_cli(b, "load", "second")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: pool_state(b, a, "second") in ("hot", "cooling"), SLOW, what="the load")

    # Unloading on another node takes the owner key, which only the seed holds.
    out = meshllm_cli(b, "unload", "second")
    assert out.returncode != 0 and "only the mesh owner" in out.stderr
    assert "second" in llama_aliases(a)

    # The owner pins a model on B: an owner-signed statement; B loads and keeps it.
    out = meshllm_cli(a, "pin", "other", "--node", b.node_id)
    assert out.returncode == 0, out.stderr
    assert f"pin other: {b.node_id}" in out.stdout
    wait_for(lambda: pool_state(a, b, "other") == "hot", SLOW, what="B to load the pinned model")
    entry = next(m for m in a.get("/api/models")["models"] if m["model"] == "other")
    assert [(n["node_id"], n["state"], n["pinned"]) for n in entry["nodes"]] == [
        (b.node_id, "hot", True)
    ]
    out = meshllm_cli(a, "extend-ttl", "other", "60", "--node", b.node_id)
    assert out.returncode == 0, out.stderr

    # Unload here and everywhere: A's own model at once, B's by the owner's word.
    out = meshllm_cli(a, "unload", "second")
    assert out.returncode == 0, out.stderr
    out = meshllm_cli(a, "unload", "other")
    assert out.returncode == 0, out.stderr
    for node, model in ((a, "second"), (b, "other")):
        wait_for(
            lambda n=node, m=model: pool_state(a, n, m) == "cold", 60, what=f"{model} unloaded"
        )
    assert llama_aliases(a) == [MODEL] and llama_aliases(b) == [MODEL]

    # Bad commands get 4xx answers that say what is wrong.
    token = (a.state_dir / "admin_token").read_text().strip()
    for path, body, status in (
        ("/api/models/second/explode", b"{}", 400),
        ("/api/models/nonesuch/load", b"{}", 404),
        ("/api/models/second/extend-ttl", b'{"seconds": -5}', 400),
        ("/api/models/second/load", b'{"node": "nobody"}', 404),
    ):
        req = urllib.request.Request(
            f"{a.url}{path}", data=body, method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == status, (path, err.value.read())


def test_max_loaded_evicts_the_idle_model_never_a_busy_one(
    mesh: Cluster, default_model: ModelFile, tmp_path: Path
) -> None:
    a_dir = models_dir(tmp_path / "a-models", default_model, "first", "other")
    a = mesh.add("--model", "first", "--models-dir", str(a_dir), "--max-loaded", "1", name="a")
    a.wait_serving("first", SLOW)

    # While a long request keeps "first" busy, "other" cannot evict it: 503, says why.
    # 400 tokens, the end token ignored: busy for seconds whatever the model says.
    streamed: list[str] = []

    def long_request() -> None:
        req = chat_stream_request(a, "first", 400, ignore_eos=True)
        with urllib.request.urlopen(req, timeout=SLOW) as resp:
            for line in resp:  # as they come: the test goes on while it streams
                streamed.append(line.decode().rstrip("\n"))

    busy = threading.Thread(target=long_request)
    busy.start()
    # Streaming, so busy: the node's announced load may show it a moment late.
    wait_for(
        lambda: sum(line.startswith("data: {") for line in streamed) >= 3, 60,
        what="the long request to be streaming",
    )  # fmt: skip
    with pytest.raises(openai.APIStatusError) as refused:
        chat(a, "other")
    assert refused.value.status_code == 503
    assert "max_loaded" in str(refused.value) or "no node" in str(refused.value)
    assert llama_aliases(a) == ["first"]
    busy.join(SLOW)
    assert sum(line.startswith("data: {") for line in streamed) > 100  # it was busy all along

    # Idle now: "other" evicts it and answers.
    reply = chat(a, "other")
    assert reply.model == "other"
    assert llama_aliases(a) == ["other"]
    assert pool_state(a, a, "first") == "cold"


def test_two_nodes_asked_at_once_load_a_cold_model_once(
    mesh: Cluster, default_model: ModelFile, tmp_path: Path
) -> None:
    a = mesh.add(
        "--model", MODEL, "--models-dir",
        str(models_dir(tmp_path / "a-models", default_model, MODEL, "shared")), name="a",
    )  # fmt: skip
    b = mesh.add(
        "--model", MODEL, "--models-dir",
        str(models_dir(tmp_path / "b-models", default_model, MODEL, "shared")), name="b",
    )  # fmt: skip
    wait_for(lambda: pool_state(a, b, "shared") == "cold", 60, what="A to see B's models")
    wait_for(lambda: pool_state(b, a, "shared") == "cold", 60, what="B to see A's models")

    replies: dict[str, Any] = {}

    def ask(node: NodeProcess) -> None:
        replies[node.state_dir.name] = chat(node, "shared")

    threads = [threading.Thread(target=ask, args=(n,)) for n in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SLOW)
    assert {r.model for r in replies.values()} == {"shared"}, replies
    loads = llama_aliases(a).count("shared") + llama_aliases(b).count("shared")
    assert loads == 1
    logs = a.log().count("loading shared") + b.log().count("loading shared")
    assert logs == 1, "the model was started more than once"


def test_a_pinned_model_whose_host_is_killed_loads_elsewhere(
    mesh: Cluster, default_model: ModelFile, tmp_path: Path
) -> None:
    a = mesh.add(
        "--pin", "pinned", "--models-dir",
        str(models_dir(tmp_path / "a-models", default_model, "pinned")), name="a",
    )  # fmt: skip
    a.wait_serving("pinned", SLOW)
    assert pool_state(a, a, "pinned") == "hot"
    b = mesh.add(
        "--model", MODEL, "--models-dir",
        str(models_dir(tmp_path / "b-models", default_model, MODEL, "pinned")), name="b",
    )  # fmt: skip
    b.wait_serving(MODEL, SLOW)
    wait_for(lambda: pool_state(b, a, "pinned") == "hot", 60, what="B to see A's pinned model")
    assert "pinned" not in llama_aliases(b)

    a.kill()
    b.wait_serving("pinned", SLOW)
    assert pool_state(b, b, "pinned") == "hot"
    assert b.status()["pool"]["pinned"].get("pinned") is True
    reply = chat(b, "pinned")
    assert reply.model == "pinned" and reply.choices[0].message.content is not None
