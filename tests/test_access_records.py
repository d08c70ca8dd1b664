"""API keys, rate limits, metrics and the request history with real nodes: real QUIC
between real processes, OpenAI-shaped fake backends behind ``--endpoint``, the real
``meshllm`` CLI and the ``openai`` SDK, and ``promtool`` for the metrics."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshllm.testing.cluster import BackendProcess, Cluster, NodeProcess, wait_for

FAST = ["--endpoint-poll-interval", "0.5", "--usage-interval", "0.5"]


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshllm", *args, "--port", str(node.http_port),
         "--state-dir", str(node.state_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def create_key(node: NodeProcess, *args: str) -> str:
    made = cli(node, "keys", "create", *args)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def call(
    node: NodeProcess, path: str, key: str | None = None, body: Any = None, admin: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One request: its status, headers and body (errors included)."""
    headers = {"Content-Type": "application/json"}
    if admin:
        key = (node.state_dir / "admin_token").read_text().strip()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(node.url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def chat(node: NodeProcess, model: str, key: str | None = None) -> tuple[int, dict, dict]:
    status, headers, body = call(
        node, "/v1/chat/completions", key,
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )  # fmt: skip
    return status, headers, json.loads(body)


def routes(node: NodeProcess, model: str) -> bool:
    """Whether ``node`` answers ``model`` itself (an unknown one falls back to another)."""
    status, headers, _ = chat(node, model)
    return status == 200 and headers.get("x-meshllm-model") == model


def error_code(answer: tuple[int, dict, dict]) -> tuple[int, str]:
    return answer[0], answer[2]["error"]["code"]


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[BackendProcess]]:
    started = [
        BackendProcess(tmp_path / f"backend-{name}.log", [f"model-{name}"]).start()
        for name in "abc"
    ]
    yield started
    for backend in started:
        backend.kill()


def test_listen_all_without_keys_refuses_to_start_and_starts_with_one(tmp_path: Path) -> None:
    with Cluster(tmp_path, FAST) as mesh:
        node = mesh.add("--listen-all", wait=False, name="open")
        assert node.proc is not None and node.proc.wait(60) == 2
        assert "meshllm keys create" in node.log()
        # The seed made its mesh and owner key: a key can be created before it runs.
        key = create_key(node, "--scope", "inference")
        assert key.startswith("mk-")
        node.start()
        assert error_code(chat(node, "any")) == (401, "missing_api_key")
        assert error_code(chat(node, "any", key)) == (404, "model_not_found")  # let in


def test_a_key_works_mesh_wide_is_limited_mesh_wide_and_revoked_mesh_wide(
    tmp_path: Path, backends: list[BackendProcess]
) -> None:
    with Cluster(tmp_path, FAST) as mesh:
        a = mesh.add("--endpoint", backends[0].url, name="a")
        b = mesh.add("--endpoint", backends[1].url, name="b")
        wait_for(mesh.converged, 60, what="the mesh to converge")
        wait_for(lambda: routes(b, "model-a"), 60, what="b to route to model-a")

        key = create_key(a, "--rpm", "4", "--name", "ci")
        narrow = create_key(a, "--models", "model-b")
        # Created on A, usable on B once the statement reached it: no key is 401 there now.
        wait_for(lambda: chat(b, "model-a", key)[0] == 200, 30, what="the key to reach b")
        assert error_code(chat(b, "model-a")) == (401, "missing_api_key")
        assert error_code(chat(a, "model-a", key[:-2] + "xx")) == (401, "invalid_api_key")
        assert error_code(chat(b, "model-a", narrow)) == (403, "model_not_allowed")
        status, _, body = call(b, "/api/history", key)  # an inference key on an admin route
        assert (status, json.loads(body)["error"]["code"]) == (403, "insufficient_scope")
        assert chat(a, "model-b", narrow)[0] == 200
        client = openai.OpenAI(base_url=f"{a.url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(
            model="model-b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert answer.choices[0].message.content

        # 4 a minute, mesh-wide: requests at A and B count against one budget.  Before
        # the nodes hear of each other's use (a report every 0.5 s here) each may admit
        # up to the limit itself (the documented bound): by the 9th, one must refuse.
        def limited() -> tuple[int, dict, dict]:
            for node in (a, b) * 5:
                answer = chat(node, "model-a", key)
                if answer[0] == 429:
                    return answer
            raise AssertionError("never limited")

        refused = limited()
        assert error_code(refused) == (429, "rate_limit_exceeded")
        assert 1 <= int(refused[1]["Retry-After"]) <= 60
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="model-a", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )

        # Revoked on B (which imports the owner key), refused on A within seconds.
        exported = subprocess.run(
            [sys.executable, "-m", "meshllm", "owner", "export", "--state-dir", str(a.state_dir)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        imported = subprocess.run(
            [sys.executable, "-m", "meshllm", "owner", "import", "--state-dir", str(b.state_dir),
             "--", exported],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        narrow_id = narrow.split("-")[1]
        revoked = cli(b, "keys", "revoke", narrow_id)
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        wait_for(
            lambda: chat(a, "model-b", narrow)[0] == 401, 15, interval=0.05,
            what="the revocation to reach a",
        )  # fmt: skip
        print(f"revocation on b refused on a after {time.monotonic() - started:.3f} s")
        assert error_code(chat(a, "model-b", narrow)) == (401, "revoked_api_key")
        listing = cli(a, "keys", "ls")
        assert narrow_id in listing.stdout and "revoked" in listing.stdout
        assert key.split("-")[2] not in listing.stdout  # never a secret

        # A key kept on disk: a restarted node still knows it, and its revocation.
        a.terminate()
        a.start()
        assert error_code(chat(a, "model-b", narrow)) == (401, "revoked_api_key")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_counted(text: str, model: str) -> float:
    return sum(
        value
        for (name, labels), value in samples(text).items()
        if name == "meshllm_requests_total" and ("model", model) in labels
    )


def test_metrics_pass_promtool_and_move_with_traffic(
    tmp_path: Path, backends: list[BackendProcess]
) -> None:
    with Cluster(tmp_path, FAST) as mesh:
        a = mesh.add("--endpoint", backends[0].url, name="a")
        mesh.add("--endpoint", backends[1].url, name="b")
        wait_for(mesh.converged, 60, what="the mesh to converge")
        wait_for(lambda: routes(a, "model-b"), 60, what="a to route to model-b")
        before = call(a, "/metrics")[2].decode()
        for model in ("model-a", "model-b", "model-b"):
            assert chat(a, model)[0] == 200
        status, headers, body = call(a, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        text = body.decode()
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout
        assert requests_counted(text, "model-b") == requests_counted(before, "model-b") + 2
        assert requests_counted(text, "model-a") >= 1
        seen = samples(text)
        assert seen[("meshllm_peers", (("state", "alive"),))] == 1
        frames = [v for (n, _), v in seen.items() if n == "meshllm_gossip_frames_total"]
        assert sum(frames) > 0
        tokens = [
            v for (n, labels), v in seen.items()
            if n == "meshllm_tokens_total" and ("direction", "in") in labels
        ]  # fmt: skip
        assert sum(tokens) > 0
        assert any(n == "meshllm_time_to_first_token_seconds_count" for n, _ in seen)


def test_history_is_mesh_wide_survives_a_restart_and_is_pruned_past_retention(
    tmp_path: Path, backends: list[BackendProcess]
) -> None:
    with Cluster(tmp_path, FAST) as mesh:
        nodes = [mesh.add("--endpoint", bk.url, name=f"n{i}") for i, bk in enumerate(backends)]
        a, b, c = nodes
        wait_for(mesh.converged, 60, what="the mesh to converge")
        for model in ("model-b", "model-c"):
            wait_for(lambda m=model: routes(a, m), 60, what=f"a to route to {model}")
        wait_for(lambda: routes(b, "model-a"), 60, what="b to route to model-a")
        assert chat(c, "model-c")[0] == 200  # entered and answered at c

        page = json.loads(call(a, "/api/history?limit=1000", admin=True)[2])
        assert page["missing"] == {} and set(page["nodes"]) == {a.node_id, b.node_id, c.node_id}
        answered = {row["serving_node"] for row in page["rows"] if row["status"] == 200}
        assert answered == {a.node_id, b.node_id, c.node_id}
        routed_b = [r for r in page["rows"] if r["entry_node"] == a.node_id
                    and r["serving_node"] == b.node_id]  # fmt: skip
        assert routed_b and set(routed_b[0]["seen_by"]) == {a.node_id, b.node_id}
        assert routed_b[0]["tokens_in"] > 0 and routed_b[0]["ttft_ms"] is not None
        ids = [row["request_id"] for row in page["rows"]]
        assert len(ids) == len(set(ids))  # a request two nodes saw is one row

        # Filters, and CSV that Python's csv module reads back.
        status, headers, body = call(
            a, "/api/history?model=model-c&status=200&format=csv", admin=True
        )
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert rows and {r["model"] for r in rows} == {"model-c"}
        assert {r["serving_node"] for r in rows} == {c.node_id}
        out = cli(a, "history", "--since", "1h", "--model", "model-c", "--format", "csv")
        assert out.returncode == 0 and list(csv.DictReader(io.StringIO(out.stdout)))
        table = cli(a, "history", "--since", "1h")
        assert table.returncode == 0 and "model-b" in table.stdout
        assert call(a, "/api/history?since=yesterday", admin=True)[0] == 400
        assert call(a, "/api/history")[0] == 401  # the history takes the admin token

        usage = json.loads(call(a, "/api/usage?since=1h", admin=True)[2])
        assert usage["totals"]["requests"] >= 4 and usage["totals"]["tokens_in"] > 0
        assert {g["model"] for g in usage["usage"]} >= {"model-a", "model-b", "model-c"}

        # A peer that does not answer in time (frozen: its link stays up) is named.
        os.kill(c.pid, signal.SIGSTOP)
        try:
            page = json.loads(call(a, "/api/history?limit=5", admin=True)[2])
        finally:
            os.kill(c.pid, signal.SIGCONT)
        assert c.node_id in page["missing"] and c.node_id not in page["nodes"]
        assert page["rows"]  # the others' rows all the same

        # The history survives a restart ...
        a.terminate()
        a.start()
        local = json.loads(call(a, "/api/history?scope=local&limit=1000", admin=True)[2])
        assert {r["request_id"] for r in local["rows"]} >= {r["request_id"] for r in routed_b}
        # ... and what is past its retention is pruned.
        a.terminate()
        time.sleep(1.5)
        a.args += ["--history-days", "0.00001"]  # 0.86 s
        a.start()
        wait_for(
            lambda: not json.loads(call(a, "/api/history?scope=local", admin=True)[2])["rows"],
            30, what="the old history to be pruned",
        )  # fmt: skip
