"""End to end with the real llama-server and the default model (Gemma 3 270M).

Node A serves the model from its disk; node B joins with no --model and an
empty models dir, is auto-assigned the model, fetches the GGUF from A over the
mesh, verifies it and serves it; a --client node streams a chat through the
mesh with the real openai SDK; ``meshllm drop`` on A stops A and leaves B serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import psutil
import pytest

from meshllm.serving import ModelFile
from meshllm.serving.digests import FileDigests
from meshllm.testing.cluster import Cluster, NodeProcess, wait_for

MODEL = "gemma-3-270m-q4_k_m"
SLOW = 300.0  # llama-server loads in seconds here, but CI machines are slow and shared


def llama_children(node: NodeProcess) -> list[psutil.Process]:
    try:
        kids = psutil.Process(node.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in kids if "llama-server" in p.name()]


def serving_state(node: NodeProcess) -> str | None:
    return node.status()["serving"].get(MODEL)


def replicas(node: NodeProcess) -> list[str]:
    """Node ids serving the model, as ``node``'s /v1/models lists them (none until gossip)."""
    entries = [m for m in node.get("/v1/models")["data"] if m["id"] == MODEL]
    return entries[0]["meshllm"]["nodes"] if entries else []


def sha256(path: Path) -> str:
    return FileDigests(None).digest(path).hex()


@pytest.fixture
def mesh(tmp_path: Path, llama_server_bin: Path):
    env_bin = ["--llama-server", str(llama_server_bin)]
    with Cluster(tmp_path, env_bin) as cluster:
        yield cluster
    leftovers = [p for p in psutil.process_iter(["name", "cmdline"])
                 if "llama-server" in (p.info["name"] or "")
                 and str(tmp_path) in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    assert leftovers == [], "a llama-server outlived its node"


def test_serve_fetch_stream_and_drop(mesh: Cluster, default_model: ModelFile, tmp_path: Path):
    a_models = tmp_path / "a-models"
    a_models.mkdir()
    os.link(default_model.path, a_models / f"{MODEL}.gguf")
    a = mesh.add("--model", MODEL, "--models-dir", str(a_models), name="a")
    a.wait_serving(MODEL, SLOW)

    # A answers through its own port, with the mesh model name.
    client = openai.OpenAI(base_url=f"{a.url}/v1", api_key="unused", timeout=120)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
    )
    assert reply.model == MODEL
    assert reply.choices[0].message.content

    # B joins with nothing: auto-assigned, fetches the GGUF from A, serves it.
    b_models = tmp_path / "b-models"
    b = mesh.add("--models-dir", str(b_models), name="b")
    b.wait_serving(MODEL, SLOW)
    copied = b_models / f"{MODEL}.gguf"
    assert copied.stat().st_size == default_model.size_bytes
    assert sha256(copied) == sha256(default_model.path)
    assert not list(b_models.glob("*.part"))
    assert "fetching gemma-3-270m-q4_k_m: 100%" in b.log()

    # A lite client sees both replicas and streams a chat through the mesh.
    c = mesh.add("--client", name="c")
    wait_for(lambda: len(replicas(c)) == 2, 60, what="client to see both replicas")
    client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="unused", timeout=120)
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from one to five."}],
            max_tokens=32,
            stream=True,
        )
        if chunk.choices
    ]
    assert len(pieces) > 3 and "".join(pieces).strip()

    # drop on A: A stops serving, kills its llama-server and exits; B keeps serving.
    a_llama = [p.pid for p in llama_children(a)]
    assert len(a_llama) == 1
    out = subprocess.run(
        [sys.executable, "-m", "meshllm", "drop", MODEL, "--port", str(a.http_port),
         "--state-dir", str(a.state_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"dropped {MODEL} on {a.node_id}" in out.stdout
    assert a.proc is not None and a.proc.wait(60) == 0
    assert not psutil.pid_exists(a_llama[0]) or psutil.Process(a_llama[0]).status() == "zombie"
    wait_for(lambda: replicas(c) == [b.node_id], 30, what="the catalog to show only B")
    assert serving_state(b) == "ready"
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert reply.choices[0].message.content is not None

    # kill -9 of B's daemon takes its llama-server with it.
    b_llama = [p.pid for p in llama_children(b)]
    assert len(b_llama) == 1
    b.kill()
    wait_for(lambda: not psutil.pid_exists(b_llama[0]), 30, what="B's llama-server to die")


def test_drop_needs_the_admin_token(mesh: Cluster, tmp_path: Path):
    a = mesh.add("--models-dir", str(tmp_path / "empty"), name="a")
    out = subprocess.run(
        [sys.executable, "-m", "meshllm", "drop", MODEL, "--port", str(a.http_port),
         "--state-dir", str(tmp_path / "wrong")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0 and "no admin token" in out.stderr
    import urllib.request

    req = urllib.request.Request(
        f"{a.url}/api/drop", data=b'{"model": "x"}', method="POST",
        headers={"Authorization": "Bearer nope", "Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    assert a.alive()
