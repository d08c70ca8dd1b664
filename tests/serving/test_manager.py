"""ServingManager in-process, over a fake of its mesh port and a fake llama-server.

The manager reaches the mesh only through ``MeshPort``: here a small in-memory
port records what it publishes, holds peers the test sets, and has no links.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from meshllm.errors import PeerError
from meshllm.gossip.announcement import PeerAnnouncement
from meshllm.identity import Identity
from meshllm.serving.manager import ServingManager
from meshllm.serving.port import ServingSettings
from meshllm.wire import FrameStream
from tests.serving.fake_llama import until
from tests.serving.test_catalog import make_gguf

GIB = 1 << 30


class FakeMeshPort:
    """A MeshPort in memory: ``publish`` updates ``me``; peers are whatever the test says."""

    def __init__(self) -> None:
        self.me = PeerAnnouncement("me", "mesh", memory_bytes=8 * GIB, memory_kind="ram")
        self.peer_table: dict[str, PeerAnnouncement] = {}
        self.published: list[dict[str, Any]] = []

    def peers(self) -> Mapping[str, PeerAnnouncement]:
        return self.peer_table

    def publish(self, **changes: Any) -> None:
        self.published.append(changes)
        self.me = self.me.bump(**changes)

    async def open_stream(self, node_id: str) -> FrameStream:
        raise PeerError(f"no link to {node_id} in this test")

    def file_address(self, node_id: str) -> tuple[str, int]:
        raise PeerError(f"no link to {node_id} in this test")


@pytest.fixture
def settings(tmp_path: Path, fake_binary: Path) -> ServingSettings:
    models = tmp_path / "models"
    models.mkdir()
    make_gguf(models / "tiny.gguf")
    return ServingSettings(
        models_dir=models,
        state_dir=tmp_path / "state",
        llama_server=str(fake_binary),
        auto_install=False,
    )


@pytest.fixture
async def run() -> AsyncIterator[Callable[..., Any]]:
    managers: list[ServingManager] = []

    async def start(settings: ServingSettings, port: FakeMeshPort) -> ServingManager:
        changed: list[None] = []
        manager = ServingManager(
            settings,
            port,
            Identity.generate(),
            b"s" * 32,
            on_serving_changed=lambda: changed.append(None),
        )
        managers.append(manager)
        await manager.start()
        return manager

    yield start
    for manager in managers:
        await manager.stop()


async def test_a_requested_model_is_offered_served_and_hashed(
    settings: ServingSettings, run: Callable[..., Any], tmp_path: Path
) -> None:
    port = FakeMeshPort()
    elsewhere = tmp_path / "elsewhere" / "by-path.gguf"
    elsewhere.parent.mkdir()
    make_gguf(elsewhere)
    settings = dataclasses.replace(settings, models=(str(elsewhere), "tiny"))
    manager = await run(settings, port)

    # Both the models-dir model and the one given by path are offered, with their sizes.
    assert port.me.available_models == {
        "tiny": (settings.models_dir / "tiny.gguf").stat().st_size,
        "by-path": elsewhere.stat().st_size,
    }
    await until(lambda: port.me.serving.get("by-path") == "ready")
    assert port.me.role == "host" and port.me.requested_models == ["tiny"]
    assert manager.local_base_url("by-path") is not None
    digest = hashlib.sha256(elsewhere.read_bytes()).hexdigest()
    await until(lambda: port.me.model_sha256.get("by-path") == digest)
    await until(lambda: len(port.me.model_sha256) == 2)


async def test_a_model_that_cannot_start_is_published_failed_with_its_cause(
    settings: ServingSettings, run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SIGNAL", "SIGBUS")
    port = FakeMeshPort()
    manager = await run(dataclasses.replace(settings, models=("tiny",)), port)
    await until(lambda: "tiny" in port.me.failures, timeout=120)
    assert port.me.serving["tiny"] == "failed"
    assert port.me.failures["tiny"].startswith("SIGBUS while loading, 3 starts in a row")
    assert port.me.role == "worker"  # a failed model is not served
    assert manager.local_base_url("tiny") is None


async def test_a_missing_model_without_peers_fails_at_once(
    settings: ServingSettings, run: Callable[..., Any]
) -> None:
    port = FakeMeshPort()
    await run(dataclasses.replace(settings, models=("nowhere",)), port)
    await until(lambda: "nowhere" in port.me.failures)
    assert "no peer has it" in port.me.failures["nowhere"]


async def test_a_joined_node_with_nothing_to_serve_says_why_and_looks_again(
    settings: ServingSettings, run: Callable[..., Any], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    port = FakeMeshPort()
    manager = await run(dataclasses.replace(settings, models_dir=empty, joined=True), port)
    await until(lambda: manager.idle_reason is not None)
    assert manager.idle_reason.startswith("the mesh has no models yet")

    # A peer announces a model nobody has a copy of: the reason changes at once.
    port.peer_table["p"] = PeerAnnouncement("p", "mesh", requested_models=["ghost"])
    manager.mesh_changed()
    await until(lambda: manager.idle_reason == "no node has a copy of ghost", timeout=5)


def peer(node_id: str, **fields: Any) -> PeerAnnouncement:
    """A peer that serves models, with plenty of memory for them."""
    fields = {"memory_bytes": 8 * GIB, "pool_room": 8 * GIB, **fields}
    return PeerAnnouncement(node_id, "mesh", **fields)


async def test_a_model_whose_host_died_while_pinned_is_taken_over_here(
    settings: ServingSettings, run: Callable[..., Any]
) -> None:
    port = FakeMeshPort()
    manager = await run(settings, port)  # "tiny" on disk, nothing loaded
    size = port.me.available_models["tiny"]
    port.me = port.me.bump(pool_room=8 * GIB)
    gone = peer(
        "dead", serving={"tiny": "ready"}, pool={"tiny": {"state": "hot", "since": 1,
        "pinned": True}}, available_models={"tiny": size},
    )  # fmt: skip
    # Another live node with the file and less room: placement weighs room, so it is
    # the ranking that decides; whichever it names loads it, the other does not.
    assert manager.heal(gone) == ["tiny"]
    await until(lambda: port.me.serving.get("tiny") == "ready")
    assert port.me.pool["tiny"]["pinned"] is True


async def test_a_model_nobody_used_is_not_healed_and_a_live_claim_stops_it(
    settings: ServingSettings, run: Callable[..., Any]
) -> None:
    port = FakeMeshPort()
    manager = await run(settings, port)
    size = port.me.available_models["tiny"]
    idle = peer("dead", serving={"tiny": "ready"}, available_models={"tiny": size})
    assert manager.heal(idle) == []  # neither pinned nor routed lately
    used = peer(
        "dead", serving={"tiny": "ready"}, available_models={"tiny": size},
        demand={"tiny": {"rpm": 3.0, "last": int(time.time() * 1000)}},
    )  # fmt: skip
    port.peer_table["other"] = peer("other", serving={"tiny": "starting"})
    assert manager.heal(used) == []  # another node already loads it
    del port.peer_table["other"]
    assert manager.heal(used) == ["tiny"]
    await until(lambda: port.me.serving.get("tiny") == "ready")


async def test_a_model_in_high_demand_gets_a_replica_where_placement_says(
    settings: ServingSettings, run: Callable[..., Any]
) -> None:
    port = FakeMeshPort()
    manager = await run(settings, port)
    size = port.me.available_models["tiny"]
    port.me = port.me.bump(pool_room=8 * GIB)
    busy = {"tiny": {"rpm": 40.0, "last": int(time.time() * 1000)}}
    port.peer_table["host"] = peer(
        "host", serving={"tiny": "ready"}, available_models={"tiny": size}, demand=busy
    )
    assert manager.add_replicas() == ["tiny"]  # the only node with room that lacks it
    await until(lambda: port.me.serving.get("tiny") == "ready")
    assert manager.add_replicas() == []  # it has one now

    # Low demand: no replica.
    calm = {"tiny": {"rpm": 4.0, "last": int(time.time() * 1000)}}
    port.peer_table["host"] = peer("host", serving={"tiny": "ready"}, demand=calm)
    manager.runner.unload("tiny", "test")
    await until(lambda: "tiny" not in port.me.serving)
    assert manager.add_replicas() == []


async def test_a_peer_asks_a_load_only_of_a_node_its_placement_ranks_high(
    settings: ServingSettings, run: Callable[..., Any]
) -> None:
    port = FakeMeshPort()
    manager = await run(settings, port)
    size = port.me.available_models["tiny"]
    port.me = port.me.bump(pool_room=1 << 30)
    for i in range(5):  # five nodes with the file and far more room than this one
        port.peer_table[f"p{i}"] = peer(
            f"p{i}", available_models={"tiny": size}, pool_room=1 << 40, memory_bytes=1 << 40
        )
    refused = manager.load_for_peer("tiny")
    assert refused is not None and "placement puts tiny on p" in refused
    assert "tiny" not in port.me.serving
    port.peer_table.clear()  # alone now: placement names this node
    assert manager.load_for_peer("tiny") is None
    await until(lambda: port.me.serving.get("tiny") == "ready")
    assert manager.load_for_peer("tiny") is None  # loaded already: yes, at once
