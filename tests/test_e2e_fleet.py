"""The fleet registry end to end: real nodes, an Ollama-shaped and an OpenAI-shaped server
(real processes speaking each API), endpoints added at run time, routed to through other
nodes, health that goes down and comes back, and the fleet summary."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from meshllm.testing.cluster import BackendProcess, Cluster, NodeProcess, wait_for

KEY = "sk-ollama-test-key"
FAST_POLLS = ["--endpoint-poll-interval", "0.5"]


def meshllm_cli(
    node: NodeProcess, *args: str, admin: bool = True
) -> subprocess.CompletedProcess[str]:
    state = ["--state-dir", str(node.state_dir)] if admin else []
    return subprocess.run(
        [sys.executable, "-m", "meshllm", *args, "--port", str(node.http_port), *state],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def catalog(node: NodeProcess) -> dict[str, Any]:
    return {m["id"]: m["meshllm"] for m in node.get("/v1/models")["data"]}


def endpoint_state(node: NodeProcess, owner: NodeProcess) -> str | None:
    """The state ``node`` sees of ``owner``'s endpoint (one each here)."""
    found = [e for e in node.get("/api/endpoints")["endpoints"] if e["node_id"] == owner.node_id]
    return found[0]["state"] if found else None


def post(node: NodeProcess, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    token = (node.state_dir / "admin_token").read_text().strip()
    req = urllib.request.Request(
        f"{node.url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def servers(tmp_path: Path):
    ollama = BackendProcess(
        tmp_path / "ollama.log", ["llama3:8b", "codellama:7b"],
        ["--warm", "llama3:8b", "--require-key", KEY], module="meshllm.testing.fake_ollama",
    ).start()  # fmt: skip
    openai_server = BackendProcess(tmp_path / "openai.log", ["gpt-fake"]).start()
    yield ollama, openai_server
    ollama.kill()
    openai_server.kill()


def test_endpoints_added_at_run_time_are_routed_to_mesh_wide_and_healed(
    tmp_path: Path, servers: tuple[BackendProcess, BackendProcess]
) -> None:
    ollama, openai_server = servers
    with Cluster(tmp_path, FAST_POLLS) as mesh:
        a, b, c = mesh.add(name="a"), mesh.add(name="b"), mesh.add(name="c")
        wait_for(mesh.converged, 60, what="the mesh to converge")

        # A fronts the Ollama server (its key from a file), B the OpenAI one.
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "\n")
        out = meshllm_cli(a, "endpoints", "add", ollama.url, "--kind", "ollama",
                          "--name", "lab-ollama", "--api-key-file", str(key_file))  # fmt: skip
        assert out.returncode == 0, out.stderr
        status, added = post(b, "/api/endpoints", {"url": openai_server.url, "kind": "auto"})
        assert status == 201 and added["endpoint"]["node_id"] == b.node_id, added
        # On another node only with the mesh owner key: B lacks it, A (the seed) holds it.
        status, refused = post(b, "/api/endpoints", {"url": ollama.url, "node": c.node_id})
        assert status == 403 and "only the mesh owner" in refused["error"]["message"]
        status, sent = post(a, "/api/endpoints", {"url": openai_server.url, "node": c.node_id})
        assert status == 201 and sent["endpoint"]["pending"] is True, sent
        wait_for(lambda: endpoint_state(a, c) == "up", 60, what="C to front the owner's endpoint")
        stored = a.state_dir / "endpoints.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert KEY in stored.read_text() and KEY not in json.dumps(a.get("/api/endpoints"))

        # Their models appear mesh-wide within a poll, and C routes to both.
        wanted = {"llama3:8b", "codellama:7b", "gpt-fake"}
        wait_for(lambda: wanted <= {m for m, e in catalog(c).items() if e["warm"]}, 60,
                 what="the endpoints' models in C's catalog")  # fmt: skip
        client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="the-clients-own", timeout=60)
        reply = client.chat.completions.create(
            model="llama3:8b", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert reply.model == "llama3:8b"  # the fake Ollama answered: it got A's key
        reply = client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert reply.choices[0].message.content
        listed = meshllm_cli(c, "endpoints", "ls", "--refresh")
        assert listed.returncode == 0 and "ollama" in listed.stdout, listed.stderr
        ollama_entry = next(
            e for e in c.get("/api/endpoints")["endpoints"] if e["node_id"] == a.node_id
        )
        models = ollama_entry["models"]
        assert models["llama3:8b"]["warm"] is True and models["codellama:7b"]["warm"] is False
        assert models["llama3:8b"].get("family")

        # The fleet summary, as `meshllm fleet` prints it.
        fleet = meshllm_cli(c, "fleet", admin=False)
        assert fleet.returncode == 0, fleet.stderr
        print(fleet.stdout)
        assert "llama3:8b" in fleet.stdout and "gpt-fake" in fleet.stdout
        assert c.get("/api/fleet")["hosts"]

        # A stopped endpoint goes down (not routed to) and comes back by itself.
        ollama.kill()
        wait_for(lambda: endpoint_state(c, a) == "down", 60, what="the endpoint down")
        wait_for(lambda: not catalog(c).get("llama3:8b", {}).get("warm"), 30,
                 what="its models off the routes")  # fmt: skip
        ollama.start()  # on the same port
        wait_for(lambda: endpoint_state(c, a) == "up", 60, what="the endpoint back up")
        wait_for(lambda: catalog(c).get("llama3:8b", {}).get("warm"), 30, what="routed again")

        # Removed at run time: its models leave the mesh; and it stays removed.
        endpoint_id = next(e["id"] for e in a.get("/api/endpoints")["endpoints"]
                           if e["node_id"] == a.node_id)  # fmt: skip
        out = meshllm_cli(a, "endpoints", "rm", endpoint_id)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: "llama3:8b" not in catalog(c), 30, what="the model gone from C")
        assert endpoint_id not in stored.read_text()


def test_bad_endpoints_are_refused_with_a_clear_4xx(tmp_path: Path) -> None:
    with Cluster(tmp_path) as mesh:
        a = mesh.add(name="a")
        for body, code in (
            ({"url": "ftp://x"}, 400),
            ({"url": "http://user:pw@10.0.0.1"}, 400),
            ({"url": "http://10.0.0.1", "kind": "vllm"}, 400),
            ({"url": "http://10.0.0.1", "api_key": "a\nb"}, 400),
            ({"url": "http://10.0.0.1", "surprise": 1}, 400),
            ({"url": "http://10.0.0.1", "node": "nobody"}, 404),
        ):
            status, answer = post(a, "/api/endpoints", body)
            assert status == code, (body, answer)
        token = (a.state_dir / "admin_token").read_text().strip()
        req = urllib.request.Request(
            f"{a.url}/api/endpoints/nonesuch", method="DELETE",
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 404
