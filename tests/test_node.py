"""Node built in-process: every part made in one place, ports bound, the app over them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from meshllm.config import Config
from meshllm.node import Node
from meshllm.paths import StatePaths


def config(tmp_path: Path, **changes: object) -> Config:
    return Config(
        state_dir=tmp_path / "state",
        models_dir=tmp_path / "models",
        bind="127.0.0.1:0",
        port=0,
        auto_install=False,
        **changes,  # type: ignore[arg-type]
    )


async def test_a_node_starts_answers_and_stops_in_process(tmp_path: Path) -> None:
    node = Node(config(tmp_path))
    assert node.serving is not None and node.proxy_mesh.serving is node.serving
    await node.start()
    try:
        assert node.http_port and node.quic_addr and node.token.startswith("mesh1-")
        me = node.state.me
        assert me.addrs == [f"127.0.0.1:{node.quic_addr[1]}"] and me.http_port == node.http_port
        assert me.memory_kind in ("ram", "vram") and me.resources["cpu_count"] >= 1
        url = f"http://127.0.0.1:{node.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/status") as resp:
                status = await resp.json()
            assert status["node_id"] == node.node_id and "token" not in status
            headers = {"Authorization": f"Bearer {node.admin_token}"}
            async with http.get(url + "/api/token", headers=headers) as resp:
                assert (await resp.json())["token"] == node.token
            async with http.get(url + "/health") as resp:
                assert resp.status == 200
        assert StatePaths(tmp_path / "state").admin_token.read_text() == node.admin_token
    finally:
        await node.stop()
    assert node.stopped.is_set()


async def test_a_client_node_has_no_serving_part(tmp_path: Path) -> None:
    seed = Node(config(tmp_path / "seed"))
    await seed.start()
    try:
        client = Node(config(tmp_path / "client", client=True, join=seed.token))
        assert client.serving is None and client.admin_token == ""
        await client.start()
        try:
            assert client.state.me.role == "client"
            assert client.status()["idle_reason"] is None
        finally:
            await client.stop()
    finally:
        await seed.stop()


async def test_a_node_stops_at_once_with_an_event_stream_open(tmp_path: Path) -> None:
    """A dashboard tab left open holds /api/events: stopping must end that stream, not
    wait on it (aiohttp's shutdown would give it a minute)."""
    node = Node(config(tmp_path, mdns=False, auto_endpoints=False))
    await node.start()
    url = f"http://127.0.0.1:{node.http_port}/api/events"
    async with aiohttp.ClientSession() as http, http.get(url) as stream:
        assert (await stream.content.readuntil(b"\n\n")).startswith(b"event: snapshot")
        await asyncio.wait_for(node.stop(), 30)  # not aiohttp's 60 s grace for it
        assert await asyncio.wait_for(stream.content.read(), 5) == b""  # it ended
