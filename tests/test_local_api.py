"""The local API rules on a real node: each browser attack reproduced, and refused.

One ``meshllm`` process fronts a fake backend (``--endpoint``) that sends a cookie and
``Access-Control-Allow-Origin: *`` on every response, and allows the web origin
``http://ok.example``.  The backend runs in this process, on its own event loop in a
thread, so a test can tell whether a refused request reached it.  Requests go out with
``http.client``, which sends exactly the headers given (a ``Host`` of our choosing, no
``Content-Type`` unless asked).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from meshllm.join_token import JoinToken
from meshllm.testing import FakeBackend
from meshllm.testing.cluster import Cluster, NodeProcess, wait_for

MODEL = "model-a"
OK_ORIGIN = "http://ok.example"
EVIL_ORIGIN = "http://evil.example"
BACKEND_HEADERS = {
    "Set-Cookie": "session=from-the-backend; Path=/",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Credentials": "true",
}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        return self.json()["error"]["code"]


@dataclass
class Local:
    node: NodeProcess
    backend: FakeBackend

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request with exactly ``headers`` (a default ``Host`` of 127.0.0.1:port)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.node.http_port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def admin_token(self) -> str:
        return (self.node.state_dir / "admin_token").read_text().strip()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    root = tmp_path_factory.mktemp("local-api")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    backend = FakeBackend([MODEL], headers=BACKEND_HEADERS)
    asyncio.run_coroutine_threadsafe(backend.start(), loop).result(timeout=10)
    try:
        empty = root / "no-models"
        empty.mkdir()
        with Cluster(root, ["--models-dir", str(empty)]) as cluster:
            node = cluster.add("--endpoint", backend.url, "--cors-origin", OK_ORIGIN)

            def warm() -> bool:
                data = node.get("/v1/models")["data"]
                return any(m["id"] == MODEL and m["meshllm"]["warm"] for m in data)

            wait_for(warm, 30, what=f"{MODEL} warm")
            yield Local(node, backend)
    finally:
        asyncio.run_coroutine_threadsafe(backend.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def assert_openai_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.body[:300]
    error = answer.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Access-Control-Allow-Origin"] is None


def test_dns_rebinding_host_gets_421(local: Local) -> None:
    before = local.backend.requests
    rebound = {"Host": "evil.example"}
    assert_openai_error(
        local.request("GET", "/api/status", headers=rebound), 421, "misdirected_request"
    )
    chat = local.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(CHAT),
        {**rebound, "Content-Type": "application/json"},
    )
    assert_openai_error(chat, 421, "misdirected_request")
    assert_openai_error(
        local.request("GET", "/v1/models", headers={"Host": "evil.example:9337"}),
        421,
        "misdirected_request",
    )
    assert local.backend.requests == before
    port = local.node.http_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert local.request("GET", "/health", headers={"Host": host}).status == 200


def test_cross_site_text_plain_and_form_posts_get_415_and_never_reach_the_backend(
    local: Local,
) -> None:
    before = local.backend.requests
    plain = local.request(
        "POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "text/plain"}
    )
    assert_openai_error(plain, 415, "unsupported_media_type")
    form = local.request(
        "POST",
        "/v1/chat/completions",
        "model=model-a&messages=hello",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_openai_error(form, 415, "unsupported_media_type")
    bare = local.request("POST", "/v1/chat/completions", json.dumps(CHAT))  # no Content-Type
    assert_openai_error(bare, 415, "unsupported_media_type")
    drop = local.request(
        "POST",
        "/api/drop",
        json.dumps({"model": MODEL}),
        {"Content-Type": "text/plain", "Authorization": f"Bearer {local.admin_token()}"},
    )
    assert_openai_error(drop, 415, "unsupported_media_type")
    assert local.backend.requests == before
    assert local.node.alive()


def test_foreign_origin_is_refused(local: Local) -> None:
    before = local.backend.requests
    evil = {"Origin": EVIL_ORIGIN}
    assert_openai_error(
        local.request("GET", "/api/status", headers=evil), 403, "origin_not_allowed"
    )
    chat = local.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(CHAT),
        {**evil, "Content-Type": "application/json"},
    )
    assert_openai_error(chat, 403, "origin_not_allowed")
    preflight = local.request(
        "OPTIONS",
        "/v1/chat/completions",
        headers={**evil, "Access-Control-Request-Method": "POST"},
    )
    assert_openai_error(preflight, 403, "origin_not_allowed")
    assert local.backend.requests == before


def test_configured_origin_gets_its_preflight_answered(local: Local) -> None:
    preflight = local.request(
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            "Origin": OK_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == OK_ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"]

    chat = local.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(CHAT),
        {"Origin": OK_ORIGIN, "Content-Type": "application/json"},
    )
    assert chat.status == 200, chat.body[:300]
    assert chat.headers.get_all("Access-Control-Allow-Origin") == [OK_ORIGIN]  # never "*"
    assert "Origin" in chat.headers["Vary"]
    assert chat.headers["Access-Control-Allow-Credentials"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_backend_cookie_and_cors_grant_do_not_reach_the_client(local: Local, stream: bool) -> None:
    before = local.backend.requests
    answer = local.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({**CHAT, "stream": stream}),
        {"Content-Type": "application/json"},
    )
    assert answer.status == 200, answer.body[:300]
    assert local.backend.requests == before + 1  # it did reach the backend, which sent them
    assert answer.headers["Set-Cookie"] is None
    assert answer.headers["Access-Control-Allow-Origin"] is None
    assert answer.headers["Access-Control-Allow-Credentials"] is None
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert f"[{MODEL}] hello".encode() in answer.body or stream


def test_status_carries_no_secret(local: Local) -> None:
    answer = local.request("GET", "/api/status")
    assert answer.status == 200
    status = answer.json()
    assert "token" not in status
    token = local.node.token
    secret = JoinToken.decode(token).secret
    text = answer.body.decode()
    forms = {
        token,
        token.removeprefix("mesh1-"),
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
    }
    forms |= {f.rstrip("=") for f in forms}
    for form in forms:
        assert form not in text
    # Nor in what the console and `meshllm status` read besides.
    for path in ("/v1/models", "/health"):
        assert token not in local.request("GET", path).body.decode()


def test_join_token_needs_the_admin_token(local: Local) -> None:
    assert_openai_error(local.request("GET", "/api/token"), 401, "unauthorized")
    wrong = local.request("GET", "/api/token", headers={"Authorization": "Bearer nope"})
    assert_openai_error(wrong, 401, "unauthorized")
    ok = local.request(
        "GET", "/api/token", headers={"Authorization": f"Bearer {local.admin_token()}"}
    )
    assert ok.status == 200 and ok.json() == {"token": local.node.token}


def meshllm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshllm", *args], capture_output=True, text=True, timeout=60
    )


def test_meshllm_token_prints_the_banner_token(local: Local, tmp_path: Path) -> None:
    port = str(local.node.http_port)
    out = meshllm("token", "--port", port, "--state-dir", str(local.node.state_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == local.node.token
    wrong = meshllm("token", "--port", port, "--state-dir", str(tmp_path / "elsewhere"))
    assert wrong.returncode != 0 and "no admin token" in wrong.stderr


def test_deeply_nested_json_gets_400_not_500(local: Local) -> None:
    before = local.backend.requests
    json_type = {"Content-Type": "application/json"}
    for body in ("[" * 100_000, '{"model": "model-a", "messages": ' + "[" * 100_000):
        answer = local.request("POST", "/v1/chat/completions", body, json_type)
        assert_openai_error(answer, 400, "invalid_json")
    drop = local.request(
        "POST",
        "/api/drop",
        "[" * 100_000,
        {**json_type, "Authorization": f"Bearer {local.admin_token()}"},
    )
    assert_openai_error(drop, 400, "invalid_json")
    assert local.backend.requests == before
    assert local.node.alive()
    assert local.request("GET", "/health").status == 200


def test_the_openai_sdk_works_unchanged(local: Local) -> None:
    client = openai.OpenAI(base_url=local.node.url + "/v1", api_key="unused", max_retries=0)
    try:
        assert MODEL in {m.id for m in client.models.list()}
        done = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "via the sdk"}]
        )
        assert done.choices[0].message.content == f"[{MODEL}] via the sdk"
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(pieces) == f"[{MODEL}] streamed"
    finally:
        client.close()


def test_slow_heads_do_not_lock_out_a_real_node(local: Local) -> None:
    """Slowloris: 600 connections that never finish their request head, more than the
    node's connection cap (512).  The node keeps answering: the longest-waiting slow
    heads make room for new connections, and the rest are cut at the header timeout."""
    node_proc = psutil.Process(local.node.pid)
    slow = []
    try:
        for _ in range(600):
            s = socket.create_connection(("127.0.0.1", local.node.http_port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(s)
        assert local.request("GET", "/health").status == 200
        assert local.request("GET", "/api/status").status == 200
        # Not one connection per slow head is held: the node stays under its cap.
        assert len(node_proc.net_connections(kind="tcp")) < 600
    finally:
        for s in slow:
            s.close()
    wait_for(lambda: local.request("GET", "/health").status == 200, 30, what="the node")
