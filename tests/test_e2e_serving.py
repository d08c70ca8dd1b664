"""Serving as a first-time user meets it: real daemons, real llama-server, real clients.

- a llama-server that dies of SIGILL is given up on and the cause is shown everywhere;
- a request sent right after ``ready`` waits for the model to warm and answers 200, and a
  streaming one gets ``: loading`` comments, then tokens;
- a chat without ``max_tokens`` ends within the node's cap;
- a model given by a path outside the models dir is offered, copied by a joiner and
  served there;
- a node with nothing to serve says why.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from meshllm.serving import ModelFile
from meshllm.serving.digests import FileDigests
from meshllm.testing.cluster import Cluster, NodeProcess, wait_for

MODEL = "gemma-3-270m-q4_k_m"
SLOW = 300.0  # generous: CI machines are slow and shared; nothing here waits it out


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as cluster:
        yield cluster


def models_dir_with_default(root: Path, default_model: ModelFile) -> Path:
    models = root / "models"
    models.mkdir(parents=True)
    os.link(default_model.path, models / f"{MODEL}.gguf")
    return models


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def cli(node: NodeProcess, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "meshllm", *args, "--port", str(node.http_port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def sha256(path: Path) -> str:
    return FileDigests(None).digest(path).hex()


def test_a_llama_server_dying_of_sigill_is_reported_failed_with_its_cause(
    mesh: Cluster, default_model: ModelFile, tmp_path: Path
) -> None:
    crasher = script(tmp_path / "llama-server", "#!/bin/sh\necho 'ggml: tilezero'\nkill -ILL $$\n")
    models = models_dir_with_default(tmp_path / "a", default_model)
    a = mesh.add("--model", MODEL, "--models-dir", str(models), "--llama-server", str(crasher))

    # The helper fails at once with the node's cause: a hang would be a TimeoutError.
    with pytest.raises(RuntimeError, match="gave up on gemma-3-270m-q4_k_m: SIGILL") as info:
        a.wait_serving(MODEL, SLOW)
    assert "ggml: tilezero" in str(info.value)  # the last log lines come with it
    status = a.status()
    assert status["serving"][MODEL] == "failed"
    assert status["failures"][MODEL].startswith("SIGILL while loading, 3 starts in a row")
    assert "retrying with --no-repack" in a.log()  # the fallback was tried first
    assert f"failed: {MODEL} on {a.node_id}: SIGILL" in cli(a, "status")
    assert "failed" in cli(a, "models") and "SIGILL" in cli(a, "models")

    # A peer sees the cause too, and a request for the model says why it cannot be had.
    b = mesh.add("--client")
    wait_for(lambda: MODEL in (b.status()["peers"] or [{}])[0].get("failures", {}), 60)
    client = openai.OpenAI(base_url=f"{b.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert err.value.status_code == 503 and "SIGILL" in err.value.message


@pytest.mark.e2e
def test_requests_sent_right_after_ready_wait_for_the_model(
    mesh: Cluster, default_model: ModelFile, llama_server_bin: Path, tmp_path: Path
) -> None:
    # A real llama-server that takes 3 s longer to start, as a big model would.
    slow = script(tmp_path / "slow-llama", f'#!/bin/sh\nsleep 3\nexec "{llama_server_bin}" "$@"\n')
    models = models_dir_with_default(tmp_path / "a", default_model)
    a = mesh.add("--model", MODEL, "--models-dir", str(models), "--llama-server", str(slow))
    assert a.status()["serving"][MODEL] == "starting"  # ready is printed before the model is

    def stream() -> list[bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", a.http_port, timeout=SLOW)
        body = {
            "model": MODEL, "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hi."}],
        }  # fmt: skip
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        return [e for e in resp.read().split(b"\n\n") if e.strip()]

    def chat() -> openai.types.chat.ChatCompletion:
        client = openai.OpenAI(base_url=f"{a.url}/v1", api_key="unused", timeout=SLOW)
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
        )

    with ThreadPoolExecutor(2) as pool:
        streamed, answered = pool.submit(stream), pool.submit(chat)
        events, reply = streamed.result(), answered.result()
    assert reply.model == MODEL and reply.choices[0].message.content is not None
    comments = [e for e in events if e.startswith(b":")]
    assert comments and comments[0].startswith(f": loading {MODEL}: starting on".encode())
    assert events[: len(comments)] == comments  # progress first, then the answer
    data = [e for e in events[len(comments) :] if e.startswith(b"data:")]
    assert data[-1] == b"data: [DONE]" and len(data) >= 3


@pytest.mark.e2e
def test_a_chat_without_max_tokens_ends_within_the_cap(
    mesh: Cluster, default_model: ModelFile, llama_server_bin: Path, tmp_path: Path
) -> None:
    models = models_dir_with_default(tmp_path / "a", default_model)
    a = mesh.add(
        "--model", MODEL, "--models-dir", str(models), "--llama-server", str(llama_server_bin),
        "--max-tokens-default", "24",
    )  # fmt: skip
    a.wait_serving(MODEL, SLOW)
    client = openai.OpenAI(base_url=f"{a.url}/v1", api_key="unused", timeout=SLOW)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}]
    )
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 24
    # The base model has no chat template: the node gave it Gemma's and said so.
    assert "has no chat template; using llama.cpp's built-in 'gemma'" in a.log()
    # An explicit max_tokens still wins over the default.
    longer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to a hundred."}], max_tokens=40
    )
    assert longer.usage is not None and longer.usage.completion_tokens > 24


@pytest.mark.e2e
def test_a_model_given_by_path_is_copied_by_a_joiner_and_served_there(
    mesh: Cluster, default_model: ModelFile, llama_server_bin: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = elsewhere / f"{MODEL}.gguf"
    os.link(default_model.path, path)
    binary = ["--llama-server", str(llama_server_bin)]
    a = mesh.add("--model", str(path), "--models-dir", str(tmp_path / "a-empty"), *binary)
    a.wait_serving(MODEL, SLOW)
    digest = sha256(path)
    wait_for(lambda: a.status()["model_sha256"].get(MODEL) == digest, 60, what="A's digest")
    assert a.status()["available_models"] == {MODEL: default_model.size_bytes}

    b_models = tmp_path / "b-models"
    b = mesh.add("--models-dir", str(b_models), *binary)
    b.wait_serving(MODEL, SLOW)
    copied = b_models / f"{MODEL}.gguf"
    assert sha256(copied) == digest
    wait_for(lambda: b.status()["model_sha256"].get(MODEL) == digest, 60, what="B's digest")
    assert b.status()["idle_reason"] is None


def test_a_node_with_nothing_to_serve_says_why(mesh: Cluster, tmp_path: Path) -> None:
    a = mesh.add("--models-dir", str(tmp_path / "a-empty"))
    b = mesh.add("--models-dir", str(tmp_path / "b-empty"))
    wait_for(lambda: b.status()["idle_reason"], 60, what="B's idle reason")
    assert (
        b.status()["idle_reason"] == "the mesh has no models yet (start a node with --model NAME)"
    )
    assert "serves nothing yet: the mesh has no models yet" in cli(b, "status")
    assert b.log().count("nothing to serve yet") == 1  # said once, not at every retry
    assert a.alive()
