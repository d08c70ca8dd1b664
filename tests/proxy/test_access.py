"""The access rules in-process: a real key book and rate limiter behind the node's app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshllm.access.keys import ApiKey, KeyBook, KeyRefused, create_statement, new_key
from meshllm.access.limits import RateLimiter, Refusal
from meshllm.config import Config
from meshllm.owner import OwnerKey
from meshllm.proxy import create_app
from meshllm.proxy.access import caller_of, model_refusal
from meshllm.proxy.guard import GuardSettings

ADMIN = "admin-secret"
OWNER = OwnerKey.generate()
MESH = "mesh-under-test"


@dataclass
class Policy:
    """An AccessPolicy over a real KeyBook and RateLimiter, on a clock the test moves."""

    listen_all: bool = False
    admin_token: str = ADMIN
    now: float = 1000.0
    book: KeyBook = field(default_factory=lambda: KeyBook(OWNER.public_key, MESH))
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(stale_after=6.0))
    refusals: list[tuple[int, str, str, str]] = field(default_factory=list)

    def add_key(self, **settings: Any) -> str:
        text, key = new_key(name="t", now=self.now, **{"scope": "inference", **settings})
        self.book.add(create_statement(OWNER, key, mesh_id=MESH, now=self.now), self.now)
        return text

    def keys_required(self) -> bool:
        return self.listen_all or bool(self.book)

    def authenticate(self, presented: str | None) -> ApiKey:
        return self.book.authenticate(presented, self.now)

    def refusal(self, key: ApiKey, scope: str, model: str | None) -> KeyRefused | None:
        return self.book.check(key, scope=scope, model=model)

    def admit(self, key: ApiKey) -> Refusal | None:
        refused = self.limiter.check(key, self.now)
        if refused is None:
            self.limiter.admit(key.id, self.now)
        return refused

    def tokens_used(self, key_id: str, tokens: int) -> None:
        self.limiter.tokens(key_id, tokens, self.now)

    def refused(self, status: int, reason: str, path: str, key_id: str) -> None:
        self.refusals.append((status, reason, path, key_id))


@dataclass
class Node:
    node_id: str = "n1"
    admin_token: str = ADMIN
    token: str = "mesh1-x"

    def status(self) -> dict[str, Any]:
        return {"node_id": self.node_id}


async def chat(request: web.Request) -> web.Response:
    """Stands in for the proxy: the model check it makes once the body is read."""
    body = await request.json()
    if (refused := model_refusal(request, body.get("model"))) is not None:
        return refused
    return web.json_response({"key": caller_of(request).key_id})


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, Policy]]:
    policy = Policy()
    app = create_app(Node(), None, GuardSettings.from_config(Config()), access=policy)
    app.router.add_post("/v1/chat/completions", chat)
    async with TestClient(TestServer(app)) as client:
        yield client, policy


async def post(client: TestClient, key: str | None, model: str = "m", header: str = "bearer"):
    headers = {}
    if key is not None and header == "x-api-key":
        headers = {"x-api-key": key}
    elif key is not None:
        headers = {"Authorization": f"Bearer {key}"}
    return await client.post("/v1/chat/completions", json={"model": model}, headers=headers)


async def error_code(response: Any) -> tuple[int, str]:
    return response.status, (await response.json())["error"]["code"]


async def test_an_open_loopback_node_ignores_dummy_keys_until_keys_exist(served: Any) -> None:
    client, policy = served
    assert (await post(client, None)).status == 200
    assert (await post(client, "sk-no-key-required")).status == 200  # what SDKs send
    policy.add_key()
    answer = await post(client, None)
    assert await error_code(answer) == (401, "missing_api_key")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert await error_code(await post(client, "sk-no-key-required")) == (401, "invalid_api_key")
    assert policy.refusals[-1][:3] == (401, "invalid_api_key", "/v1/chat/completions")


async def test_keys_by_either_header_with_scope_model_and_expiry(served: Any) -> None:
    client, policy = served
    key = policy.add_key(models=("allowed",), expires=policy.now + 60)
    ok = await post(client, key, "allowed", header="x-api-key")
    assert ok.status == 200 and (await ok.json())["key"] == key.split("-")[1]
    assert await error_code(await post(client, key, "other")) == (403, "model_not_allowed")
    secret_wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert await error_code(await post(client, secret_wrong, "allowed")) == (
        401, "invalid_api_key",
    )  # fmt: skip
    policy.now += 61
    assert await error_code(await post(client, key, "allowed")) == (401, "expired_api_key")


async def test_over_its_limit_a_key_gets_429_with_retry_after(served: Any) -> None:
    client, policy = served
    key = policy.add_key(rpm=2)
    assert [(await post(client, key)).status for _ in range(2)] == [200, 200]
    limited = await post(client, key)
    assert await error_code(limited) == (429, "rate_limit_exceeded")
    retry = int(limited.headers["Retry-After"])
    assert 1 <= retry <= 60
    policy.now += retry
    assert (await post(client, key)).status == 200


async def test_admin_routes_take_the_token_or_an_admin_key_never_an_inference_one(
    served: Any,
) -> None:
    client, policy = served
    inference, admin = policy.add_key(), policy.add_key(scope="admin")
    token = await client.get("/api/token", headers={"Authorization": f"Bearer {inference}"})
    assert await error_code(token) == (403, "insufficient_scope")
    token = await client.get("/api/token", headers={"Authorization": f"Bearer {admin}"})
    assert token.status == 200
    token = await client.get("/api/token", headers={"Authorization": f"Bearer {ADMIN}"})
    assert token.status == 200
    # The admin token is an admin key for inference too, from this machine.
    assert (await post(client, ADMIN)).status == 200
    # Read-only pages stay open to this machine, and /health to anyone.
    assert (await client.get("/api/status")).status == 200
    assert (await client.get("/health")).status == 200


async def test_listening_beyond_loopback_without_keys_refuses_inference(served: Any) -> None:
    client, policy = served
    policy.listen_all = True
    assert await error_code(await post(client, None)) == (401, "missing_api_key")
