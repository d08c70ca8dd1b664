"""Keys, history, usage and cost end to end with the real llama-server on the default
model: a key made on the seed streams a chat through a ``--client`` node with the
``openai`` SDK, and the mesh's records say what it took."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest

from meshllm.serving import ModelFile
from meshllm.testing.cluster import Cluster, NodeProcess, wait_for

MODEL = "gemma-3-270m-q4_k_m"
SLOW = 300.0  # llama-server loads in seconds here, but CI machines are slow and shared

pytestmark = pytest.mark.e2e


def admin_get(node: NodeProcess, path: str) -> dict:
    token = (node.state_dir / "admin_token").read_text().strip()
    req = urllib.request.Request(node.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_a_keyed_stream_through_a_client_is_counted_timed_and_costed(
    tmp_path: Path, llama_server_bin: Path, default_model: ModelFile
) -> None:
    models = tmp_path / "seed-models"
    models.mkdir()
    os.link(default_model.path, models / f"{MODEL}.gguf")
    with Cluster(tmp_path, ["--llama-server", str(llama_server_bin)]) as mesh:
        seed = mesh.add("--model", MODEL, "--models-dir", str(models), "--log-prompts",
                        "--cpu-watts", "50", "--price-kwh", "0.5", name="seed")  # fmt: skip
        seed.wait_serving(MODEL, SLOW)
        client_node = mesh.add("--client", "--port", "0", name="client")
        wait_for(lambda: mesh.converged(), 60, what="the client to join")

        made = subprocess.run(
            [sys.executable, "-m", "meshllm", "keys", "create", "--tpm", "100000",
             "--name", "e2e", "--port", str(seed.http_port), "--state-dir", str(seed.state_dir)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        key = made.stdout.strip()
        key_id = key.split("-")[1]
        client = openai.OpenAI(base_url=f"{client_node.url}/v1", api_key=key, timeout=120)
        wait_for(lambda: _key_works(client), 60, what="the key to reach the client node")
        stranger = openai.OpenAI(base_url=f"{client_node.url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):  # once a key exists, one is needed
            stranger.chat.completions.create(model=MODEL, messages=[], max_tokens=1)

        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text

        # The seed served it: its history has the row, with tokens, TTFT, energy and text.
        def served_row() -> dict | None:
            rows = admin_get(seed, "/api/history?scope=local&kind=served")["rows"]
            streamed = [r for r in rows if r["stream"]]
            return streamed[0] if streamed else None

        row = wait_for(served_row, 30, what="the seed's record of the request")
        assert row["key_id"] == key_id and row["model"] == MODEL and row["status"] == 200
        assert row["entry_node"] == client_node.node_id and row["stream"] is True
        assert row["tokens_in"] > 0 and 0 < row["tokens_out"] <= 8
        assert 0 < row["ttft_ms"] <= row["latency_ms"]
        assert row["energy_j"] > 0
        assert row["answer"] == text and "Say hello." in row["prompt"]

        # Mesh-wide, asked at the seed: one request, seen by both nodes, costed by energy.
        page = admin_get(seed, f"/api/history?key={key_id}&search={row['request_id']}")
        assert [set(r["seen_by"]) for r in page["rows"]] == [{seed.node_id, client_node.node_id}]
        assert page["rows"][0]["prompt"] == row["prompt"]  # the seed's own record: it may
        usage = admin_get(seed, f"/api/usage?since=1h&key={key_id}")
        (group,) = usage["usage"]
        assert group["requests"] >= 2 and group["tokens_out"] >= row["tokens_out"]
        assert group["cost_source"] == "energy" and group["energy_j"] >= row["energy_j"]
        assert group["cost"] == pytest.approx(group["energy_j"] / 3.6e6 * 0.5)
        assert group["cost_per_mtok"] > 0


def _key_works(client: openai.OpenAI) -> bool:
    try:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    except openai.AuthenticationError:
        return False
    return True
