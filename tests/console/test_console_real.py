"""The console against real ``meshllm`` nodes: a fake OpenAI backend behind one node,
the real llama-server with the default model behind another."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Select

from meshllm.console import MeshConsole
from meshllm.console.widgets import ChatMessage, ConfirmDrop, ModelsTable, NodesTable
from meshllm.serving import ModelFile
from meshllm.testing.cluster import BackendProcess, Cluster, wait_for

GEMMA = "gemma-3-270m-q4_k_m"
FAKE = "fake-a"
TIMEOUT = 120.0  # llama-server start on a busy CI box; the console itself follows in ~1 s


async def until(pilot: Pilot, condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def rows(table: ModelsTable | NodesTable) -> list[str]:
    return [
        " ".join(str(getattr(c, "plain", c)) for c in table.get_row_at(i))
        for i in range(table.row_count)
    ]


@pytest.fixture
def backend(tmp_path: Path):
    fake = BackendProcess(tmp_path / "backend.log", [FAKE], ["--chunks", "6"]).start()
    yield fake.url
    fake.kill()


async def test_console_follows_a_real_mesh(
    tmp_path: Path, backend: str, default_model: ModelFile, llama_server_bin: Path
) -> None:
    models_dir = tmp_path / "b-models"
    models_dir.mkdir()
    os.link(default_model.path, models_dir / f"{GEMMA}.gguf")
    with Cluster(tmp_path) as cluster:
        a = await asyncio.to_thread(cluster.add, "--endpoint", backend, name="a")
        app = MeshConsole(port=a.http_port, state_dir=a.state_dir, poll_interval=0.5)
        app.animation_level = "none"
        async with app.run_test(size=(80, 24)) as pilot:
            models, nodes = app.query_one(ModelsTable), app.query_one(NodesTable)
            await until(pilot, lambda: any(FAKE in r and "● hot" in r for r in rows(models)),
                        "the endpoint's model, hot")  # fmt: skip
            await until(pilot, lambda: nodes.row_count == 1, "this node's row")

            # A node serving the default model with llama-server joins.
            b = await asyncio.to_thread(
                cluster.add, "--model", GEMMA, "--models-dir", str(models_dir),
                "--llama-server", str(llama_server_bin), name="b",
            )  # fmt: skip
            await until(pilot, lambda: nodes.row_count == 2, "the new node's row")
            assert any(b.node_id[:6] in r for r in rows(nodes))
            await until(pilot, lambda: any(GEMMA in r and "● hot" in r for r in rows(models)),
                        "the default model, hot")  # fmt: skip

            # A third node joins, then dies: the table follows both.
            c = await asyncio.to_thread(cluster.add, name="c")
            await until(pilot, lambda: nodes.row_count == 3, "the third node")
            await asyncio.to_thread(c.kill)
            await until(pilot, lambda: nodes.row_count == 2, "the dead node gone")

            # A chat streams through the mesh.
            await pilot.press("3")
            app.query_one("#chat-model", Select).value = FAKE
            await pilot.press(*"hello mesh", "enter")

            def answer() -> str:
                msgs = [m for m in app.query(ChatMessage) if m.role == "assistant"]
                return msgs[-1].text if msgs else ""

            await until(pilot, lambda: answer() == f"[{FAKE}] hello mesh", "the answer")

            # Drop the default model, confirmed: B stops serving and exits.
            await pilot.press("escape", "1")  # keys back from the chat prompt
            index = next(i for i, r in enumerate(rows(models)) if GEMMA in r)
            models.move_cursor(row=index)
            await pilot.press("d")
            assert isinstance(app.screen, ConfirmDrop) and app.screen.model == GEMMA
            await pilot.press("y")
            # Cold, or gone from the catalog once B (its only copy) has left.
            await until(pilot, lambda: not any(GEMMA in r and "● hot" in r for r in rows(models)),
                        "the default model, no longer hot")  # fmt: skip
            await asyncio.to_thread(wait_for, lambda: not b.alive(), 60, 0.1, "B to exit")
            await until(pilot, lambda: nodes.row_count == 1, "B gone")
