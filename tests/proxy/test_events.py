"""``GET /api/events`` on a real aiohttp server: snapshot, events, heartbeat, budgets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from meshllm.events import MAX_QUEUED_EVENTS, MAX_SUBSCRIBERS, EventHub, snapshot_events
from meshllm.gossip import PeerAnnouncement
from meshllm.proxy.events import HEARTBEAT_S, add_event_routes

NOW = 1_700_000_000_000
ADMIN_TOKEN = "the-admin-token"


@dataclass
class FakeSource:
    """An EventSource over a fixed mesh view."""

    hub: EventHub = field(default_factory=EventHub)
    heartbeat_s: float = HEARTBEAT_S
    anns: dict[str, PeerAnnouncement] = field(
        default_factory=lambda: {
            "n1": PeerAnnouncement(
                node_id="n1",
                mesh_id="mesh",
                pool={"m": {"state": "hot", "since": 5}},
                available_models={"m": 10, "c": 3},
            )
        }
    )

    def snapshot(self) -> list[dict[str, Any]]:
        return snapshot_events(self.anns, NOW)


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, FakeSource]]:
    source = FakeSource()
    app = web.Application()
    add_event_routes(app, source, ADMIN_TOKEN)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, source


async def read_frame(resp: ClientResponse, timeout: float = 5.0) -> str:
    """The next SSE frame (up to its blank line), without the blank line."""
    raw = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout)
    return raw.decode()[:-2]


def parse(frame: str) -> tuple[str, dict[str, Any]]:
    """``(event type, data)`` of an event frame."""
    event_line, data_line = frame.split("\n")
    assert event_line.startswith("event: ") and data_line.startswith("data: ")
    return event_line[len("event: ") :], json.loads(data_line[len("data: ") :])


async def wait_for_subscribers(hub: EventHub, count: int) -> None:
    for _ in range(500):
        if len(hub) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(hub)} subscribers, not {count}")


async def test_snapshot_first_then_published_events(client: Any) -> None:
    http, source = client
    async with http.get("/api/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        kind, snap = parse(await read_frame(resp))
        assert kind == "snapshot" and snap["at"] == NOW
        assert [(m["model"], m["state"]) for m in snap["models"]] == [("c", "cold"), ("m", "hot")]
        event = {"type": "node_left", "node_id": "n2", "at": NOW + 1}
        source.hub.publish([event, {"type": "note", "text": "two\nlines"}])
        assert parse(await read_frame(resp)) == ("node_left", event)
        assert parse(await read_frame(resp))[1]["text"] == "two\nlines"  # one data line


async def test_heartbeat_in_quiet(client: Any) -> None:
    http, source = client
    source.heartbeat_s = 0.05
    async with http.get("/api/events") as resp:
        await read_frame(resp)  # the snapshot
        assert await read_frame(resp) == ": ping"
        source.hub.publish([{"type": "x"}])
        frames = [await read_frame(resp) for _ in range(3)]
        assert 'event: x\ndata: {"type":"x"}' in frames


async def test_overflow_ends_the_stream_with_an_overflow_event(client: Any) -> None:
    http, source = client
    async with http.get("/api/events") as resp:
        await read_frame(resp)
        source.hub.publish([{"type": "x"}] * (MAX_QUEUED_EVENTS + 1))
        assert parse(await read_frame(resp)) == ("overflow", {"type": "overflow"})
        assert await asyncio.wait_for(resp.content.read(), 5.0) == b""  # the end
    assert len(source.hub) == 0


async def test_a_full_hub_answers_503_and_a_leaving_client_frees_its_slot(client: Any) -> None:
    http, source = client
    source.heartbeat_s = 0.05
    streams = [await http.get("/api/events") for _ in range(MAX_SUBSCRIBERS)]
    try:
        assert all(s.status == 200 for s in streams)
        assert len(source.hub) == MAX_SUBSCRIBERS
        refused = await http.get("/api/events")
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "5"
        assert (await refused.json())["error"]["code"] == "server_busy"
        streams.pop().close()  # the client goes away
        await wait_for_subscribers(source.hub, MAX_SUBSCRIBERS - 1)
        async with http.get("/api/events") as again:
            assert again.status == 200
            assert parse(await read_frame(again))[0] == "snapshot"
    finally:
        for stream in streams:
            stream.close()
    await wait_for_subscribers(source.hub, 0)


async def test_request_events_go_only_to_the_historys_readers(
    client: tuple[TestClient, FakeSource],
) -> None:
    """A request event is a history row (it names its key): a caller without the admin
    token gets the model events around it, never it."""
    test_client, source = client
    admin = await test_client.get("/api/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    anyone = await test_client.get("/api/events")
    for resp in (admin, anyone):
        assert parse(await read_frame(resp))[0] == "snapshot"
    await wait_for_subscribers(source.hub, 2)
    row = {"request_id": "r1", "model": "m", "key_id": "k1"}
    source.hub.publish([{"type": "request", "private": True, "row": row}])
    source.hub.publish([{"type": "node_left", "node_id": "n9"}])
    assert parse(await read_frame(admin)) == ("request", {"type": "request", "row": row})
    assert parse(await read_frame(admin))[0] == "node_left"
    assert parse(await read_frame(anyone))[0] == "node_left"  # the request event skipped
    wrong = await test_client.get("/api/events", headers={"Authorization": "Bearer nope"})
    assert parse(await read_frame(wrong))[0] == "snapshot"
    await wait_for_subscribers(source.hub, 3)
    source.hub.publish([{"type": "request", "private": True, "row": row}])
    source.hub.publish([{"type": "node_left", "node_id": "n8"}])
    assert parse(await read_frame(wrong))[0] == "node_left"
    for resp in (admin, anyone, wrong):
        resp.close()
