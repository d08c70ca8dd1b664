"""The node's HTTP app in-process, over a fake NodeAPI: status, token, drop, health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from meshllm.config import Config
from meshllm.errors import AuthError
from meshllm.proxy import create_app
from meshllm.proxy.guard import GuardSettings

ADMIN = "admin-secret"


@dataclass
class FakeNode:
    """A NodeAPI: a status to show, drops to record."""

    node_id: str = "n1"
    admin_token: str = ADMIN
    token: str = "mesh1-secret-token"
    served_here: set[str] = field(default_factory=lambda: {"here"})
    served_elsewhere: set[str] = field(default_factory=lambda: {"there"})
    dropped: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "peers": [], "catalog": []}

    async def drop(self, model: str) -> list[str]:
        if model in self.served_elsewhere:
            raise AuthError("only the mesh owner can drop a model on other nodes")
        if model not in self.served_here:
            return []
        self.dropped.append(model)
        return [self.node_id]


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, FakeNode]]:
    node = FakeNode()
    app = create_app(node, None, GuardSettings.from_config(Config()))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, node


async def test_status_and_health_come_from_the_node(client: Any) -> None:
    http, node = client
    assert (await (await http.get("/api/status")).json())["node_id"] == node.node_id
    assert (await (await http.get("/health")).json()) == {"ok": True, "node_id": "n1"}
    assert (await http.post("/v1/chat/completions", json={})).status == 404  # no proxy routes


async def test_token_and_drop_need_the_admin_token(client: Any) -> None:
    http, node = client
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert (await http.get("/api/token")).status == 401
    assert (await (await http.get("/api/token", headers=auth)).json()) == {"token": node.token}
    assert (await http.post("/api/drop", json={"model": "here"})).status == 401
    resp = await http.post("/api/drop", json={"model": "here"}, headers=auth)
    assert resp.status == 200 and node.dropped == ["here"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "there"}, 403, "not_mesh_owner"),
        ({"model": "nowhere"}, 404, "model_not_found"),
        ({"model": ""}, 400, "invalid_request"),
        ([1, 2], 400, "invalid_request"),
    ],
)
async def test_drop_errors(client: Any, body: Any, status: int, code: str) -> None:
    http, node = client
    resp = await http.post("/api/drop", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    assert node.dropped == []
