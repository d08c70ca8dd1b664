"""Behaviour of the console, driven headless with Pilot against the fake node API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Select, Static

from meshllm.console import NodeAPIError, NodeClient, NodeUnreachable
from meshllm.console.client import parse_status
from meshllm.console.widgets import (
    ChatMessage,
    ConfirmDrop,
    FailureDetail,
    IdleNotice,
    ModelsTable,
    NodeDownBanner,
    NodesTable,
)
from meshllm.console.widgets.models_table import state_cell
from meshllm.election.pool_view import pool_view

from .fake_node import (
    ADMIN_TOKEN,
    ANSWER,
    GEMMA,
    GIB,
    IDLE_REASON,
    JOIN_TOKEN,
    LLAMA,
    NOW_MS,
    PHI,
    QWEN,
    SIGILL,
    FakeNode,
    idle_status,
    peer,
    pool_status,
    resources,
    sample_status,
)
from .helpers import app_for, free_port, row_texts, vram_cells, wait_for


async def test_console_tables_show_status(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        models = app.query_one(ModelsTable)
        await wait_for(pilot, lambda: models.row_count == 3, "the models")
        rows = row_texts(models)
        assert rows[0].startswith(GEMMA) and "● hot" in rows[0] and "3 hot" in rows[0]
        assert "◐ warming" in rows[1] and "1 warming, 1 fetching" in rows[1]
        assert rows[2].startswith(LLAMA) and "✖ failed" in rows[2]
        # The CPU-only peer gave up on llama: the first line of its cause, cut to the cell.
        assert "1 failed: SIGILL while l…" in rows[2]

        await pilot.press("2")
        nodes = app.query_one(NodesTable)
        assert nodes.has_focus
        rows = row_texts(nodes)
        assert len(rows) == 5
        assert rows[0].startswith("▶a1b2c3d") and "host" in rows[0] and "self" in rows[0]
        assert all(not r.startswith("▶") for r in rows[1:])
        assert "127.0.0.1:9342" in rows[2] and "12ms" in rows[2] and "88%" in rows[2]
        # The peer that reported no resources shows dashes, not numbers.
        unknown = next(r for r in rows if r.lstrip().startswith("d0f15e6"))
        assert unknown.count("—") == 3 and "%" not in unknown
        assert "client" in rows[4]
        # VRAM: a bar for GPU nodes (self: 9.1 of 24 GiB), "no GPU" for CPU-only ones.
        assert vram_cells(nodes) == ["38%", "no GPU", "85%", "—", "no GPU"]


async def test_console_fleet_line(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.status is not None, "a status")
        fleet = app.query_one("#fleet", Static).content.plain
        assert fleet.splitlines() == [
            # The fleet view's summary: qwen is only warming and fetching, not hot yet.
            f"3 hosts have {GEMMA}",
            # Live figures: two GPU nodes' VRAM, the CPU-only node's RAM, each by name.
            "VRAM 18.4/48.0 GiB free on 2 nodes · RAM 10.4/15.6 GiB free on 1 node",
            "1 host, 3 workers, 1 client · 1 stale, 1 unknown · no endpoints",
        ]
        assert app.fleet is not None and app.fleet["summary"] == f"3 hosts have {GEMMA}"


def cpu_only_status() -> dict[str, Any]:
    """The sample mesh without its GPU nodes: this node and one peer lend RAM."""
    status = sample_status()
    status.update(
        memory_bytes=20 * GIB,
        memory_kind="ram",
        resources=resources(23.0, 9.0, 31.3, []),
    )
    status["peers"] = [p for p in status["peers"] if not (p["resources"] or {}).get("gpus")]
    return status


async def fleet_and_vram_column(node: FakeNode, state_dir: Path) -> tuple[str, list[str]]:
    """The fleet lines and the VRAM column the console shows for `node`."""
    await node.start()
    try:
        app = app_for(node.port, state_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.query_one(NodesTable)
            expected = 1 + len(node.status["peers"])
            await wait_for(pilot, lambda: table.row_count == expected, "the nodes")
            return app.query_one("#fleet", Static).content.plain, vram_cells(table)
    finally:
        await node.stop()


async def test_console_cpu_only_fleet_is_ram_never_vram(state_dir: Path) -> None:
    status = cpu_only_status()
    assert [p["node_id"][:4] for p in status["peers"]] == ["b7e4", "d0f1", "e55a"]
    fleet, vram = await fleet_and_vram_column(FakeNode(status), state_dir)
    # This node's 22.3 and the stale CPU-only peer's 10.4 GiB of free RAM; the client
    # lends none, d0f1 reported nothing.
    assert "RAM 32.7/46.9 GiB free on 2 nodes" in fleet
    assert "1 host, 2 workers, 1 client · 1 stale, 1 unknown" in fleet
    assert "VRAM" not in fleet and "GPU" not in fleet
    assert vram == ["no GPU", "no GPU", "—", "no GPU"]  # d0f1 reported nothing: unknown


async def test_console_gpu_fleet_is_vram(state_dir: Path) -> None:
    status = sample_status()
    status["peers"] = [p for p in status["peers"] if (p["resources"] or {}).get("gpus")]
    fleet, vram = await fleet_and_vram_column(FakeNode(status), state_dir)
    assert fleet.splitlines()[1:] == [
        "VRAM 18.4/48.0 GiB free on 2 nodes",
        "1 host, 1 worker · no endpoints",  # all figures live: no stale, no unknown
    ]
    assert vram == ["38%", "85%"]  # bars of VRAM in use


async def test_console_fleet_memory_unknown(state_dir: Path) -> None:
    status = sample_status()
    status.update(resources=None, resources_state="unknown", resources_age_s=None)
    status["peers"] = [p for p in status["peers"] if p["role"] == "client"]
    fleet, _ = await fleet_and_vram_column(FakeNode(status), state_dir)
    # This node has reported no figures, and a client lends no memory.
    assert fleet.splitlines()[1:] == [
        "memory for models —",
        "1 host, 1 client · 1 unknown · no endpoints",
    ]


async def test_console_follows_peers_joining_and_leaving(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.query_one(NodesTable)
        await wait_for(pilot, lambda: nodes.row_count == 5, "five nodes")

        fake.add_peer(peer("f00dfeed00000001", 9350, serving={GEMMA: "starting"}))
        await wait_for(pilot, lambda: nodes.row_count == 6, "the new peer")
        assert any("f00dfee" in r and "9350" in r for r in row_texts(nodes))

        fake.remove_peer("c93d0a7be1f24c58")
        await wait_for(pilot, lambda: nodes.row_count == 5, "the dead peer to go")
        assert not any("c93d0a7" in r for r in row_texts(nodes))


async def test_console_never_shows_stale_figures(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.query_one(NodesTable)

        def row_of(prefix: str) -> str:
            return next((r for r in row_texts(nodes) if prefix in r), "")

        await wait_for(pilot, lambda: "61%" in row_of("b7e4f10"), "the peer's CPU")
        fake.status["peers"][0]["resources"] = {}
        await wait_for(pilot, lambda: "%" not in row_of("b7e4f10"), "the figures to go")
        assert row_of("b7e4f10").count("—") == 3
        fake.status["peers"][0]["resources"] = resources(7.0, 2.0, 4.0, [])
        await wait_for(pilot, lambda: "7%" in row_of("b7e4f10"), "the new figures")
        assert "50%" in row_of("b7e4f10") and "61%" not in row_of("b7e4f10")


async def test_console_chat_streams_answer(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.status is not None, "a status")
        await pilot.press("3")
        prompt = app.query_one("#chat-input", Input)
        assert prompt.has_focus
        await wait_for(pilot, lambda: app.query_one("#chat-model", Select).value == GEMMA, "pick")
        await pilot.press(*"hi there", "enter")

        def answer() -> str:
            msgs = [m for m in app.query(ChatMessage) if m.role == "assistant"]
            return msgs[-1].text if msgs else ""

        await wait_for(pilot, lambda: answer() == ANSWER, "the streamed answer")
        await wait_for(pilot, lambda: not app.query_one("ChatPane").busy, "the end")
        sent = fake.chats[-1]
        assert sent["model"] == GEMMA and sent["stream"] is True
        assert sent["messages"] == [{"role": "user", "content": "hi there"}]

        # The second turn carries the conversation.
        await pilot.press(*"more", "enter")
        await wait_for(pilot, lambda: len(fake.chats) == 2, "the second request")
        assert [m["role"] for m in fake.chats[1]["messages"]] == ["user", "assistant", "user"]
        assert fake.chats[1]["messages"][1]["content"] == ANSWER


async def test_console_chat_shows_error_of_cold_model(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.status is not None, "a status")
        await pilot.press("3")
        app.query_one("#chat-model", Select).value = LLAMA
        await pilot.press(*"hello", "enter")

        def failed() -> bool:
            return any("error" in m.classes for m in app.query(ChatMessage))

        await wait_for(pilot, failed, "the error")
        assert any(f"no node serves {LLAMA}" in m.text for m in app.query(ChatMessage))


async def test_console_chat_model_highlights_serving_nodes(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.query_one(NodesTable)
        gemma_nodes = {"a1b2c3d4e5f60718", "b7e4f1029c3d5a66", "c93d0a7be1f24c58"}
        await wait_for(pilot, lambda: nodes.highlighted_nodes == gemma_nodes, "gemma nodes")
        app.query_one("#chat-model", Select).value = QWEN
        await wait_for(pilot, lambda: nodes.highlight_model == QWEN, "qwen picked")
        assert nodes.highlighted_nodes == {"c93d0a7be1f24c58", "d0f15e6a7b8c9d21"}


async def test_console_enter_on_model_opens_chat(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        models = app.query_one(ModelsTable)
        await wait_for(pilot, lambda: models.row_count == 3, "the models")
        await pilot.press("down", "enter")
        assert app.query_one("#tabs").active == "chat"
        assert app.query_one("#chat-model", Select).value == QWEN


async def test_console_drop_confirmed_sends_bearer_token(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        models = app.query_one(ModelsTable)
        await wait_for(pilot, lambda: models.row_count == 3, "the models")
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmDrop) and app.screen.model == GEMMA
        await pilot.press("y")
        await wait_for(pilot, lambda: len(fake.drops) == 1, "the drop request")
        assert fake.drops[0] == {
            "body": {"model": GEMMA},
            "authorization": f"Bearer {ADMIN_TOKEN}",
        }
        # The console follows: gemma is now cold.
        await wait_for(pilot, lambda: "cold" in row_texts(models)[-1], "gemma cold")
        assert not isinstance(app.screen, ConfirmDrop)


async def test_console_drop_cancelled_sends_nothing(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        models = app.query_one(ModelsTable)
        await wait_for(pilot, lambda: models.row_count == 3, "the models")
        for cancel in ("n", "escape"):
            await pilot.press("d")
            assert isinstance(app.screen, ConfirmDrop)
            await pilot.press(cancel)
            assert not isinstance(app.screen, ConfirmDrop)
        # Clicking Cancel (the focused button) cancels too.
        await pilot.press("d", "enter")
        assert not isinstance(app.screen, ConfirmDrop)
        await pilot.pause(0.5)
        assert fake.drops == []


async def test_console_drop_from_nodes_tab_targets_the_nodes_model(
    fake: FakeNode, state_dir: Path
) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.query_one(NodesTable)
        await wait_for(pilot, lambda: nodes.row_count == 5, "the nodes")
        await pilot.press("2", "down", "down", "down", "d")
        assert isinstance(app.screen, ConfirmDrop) and app.screen.model == QWEN


async def test_console_shows_node_not_running_and_recovers(state_dir: Path) -> None:
    port = free_port()
    app = app_for(port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.query_one(NodeDownBanner)
        await wait_for(pilot, lambda: banner.display, "the banner")
        assert "connection refused" in banner.reason
        assert "not running" in banner.content.plain
        assert app.query_one(ModelsTable).row_count == 0

        node = FakeNode()
        await node.start(port)
        try:
            await wait_for(pilot, lambda: not banner.display, "the banner to go")
            await wait_for(pilot, lambda: app.query_one(NodesTable).row_count == 5, "nodes")
            await node.stop()
            await wait_for(pilot, lambda: banner.display, "the banner again")
            assert app.query_one(NodesTable).row_count == 0
        finally:
            await node.stop()


async def test_console_token_key_copies_join_token(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.status is not None, "a status")
        assert "token" not in fake.status  # the join token is only at /api/token
        await pilot.press("t")
        await wait_for(pilot, lambda: app.clipboard == JOIN_TOKEN, "the join token copied")


async def test_console_drop_with_wrong_token_sends_it_and_survives(
    fake: FakeNode, state_dir: Path
) -> None:
    (state_dir / "admin_token").write_text("not-the-token")
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        models = app.query_one(ModelsTable)
        await wait_for(pilot, lambda: models.row_count == 3, "the models")
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: len(fake.drops) == 1, "the drop request")
        assert fake.drops[0]["authorization"] == "Bearer not-the-token"
        await pilot.pause(0.5)
        assert "● hot" in row_texts(models)[0] and app.down_reason is None


async def test_client_parses_status_and_maps_errors(fake: FakeNode, state_dir: Path) -> None:
    client = NodeClient(fake.port, state_dir)
    try:
        assert await client.health()
        status = await client.status()
        assert status.node_id == "a1b2c3d4e5f60718" and status.me.is_self
        assert [n.node_id[:4] for n in status.nodes] == ["a1b2", "b7e4", "c93d", "d0f1", "e55a"]
        assert status.nodes[3].resources is None
        assert status.nodes[2].resources is not None
        assert status.nodes[2].resources.gpus[0].name == "A10"
        chunks = [c async for c in client.chat_stream(GEMMA, [{"role": "user", "content": "x"}])]
        assert len(chunks) > 1 and "".join(chunks) == ANSWER
        with pytest.raises(NodeAPIError, match="no node serves"):
            await client.drop(LLAMA)
        assert await client.join_token() == JOIN_TOKEN
        (state_dir / "admin_token").write_text("wrong")
        with pytest.raises(NodeAPIError, match="bad admin token") as err:
            await client.drop(GEMMA)
        assert err.value.status == 401
        with pytest.raises(NodeAPIError, match="bad admin token"):
            await client.join_token()
        (state_dir / "admin_token").unlink()
        with pytest.raises(NodeAPIError, match="admin token"):
            await client.drop(GEMMA)
    finally:
        await client.close()

    down = NodeClient(free_port(), state_dir)
    try:
        with pytest.raises(NodeUnreachable, match="connection refused"):
            await down.status()
    finally:
        await down.close()


async def test_console_failure_detail_follows_the_cursor(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        models = app.query_one(ModelsTable)
        detail = app.query_one(FailureDetail)
        await wait_for(pilot, lambda: models.row_count == 3, "the models")
        await pilot.pause(0.3)
        assert models.selected_model == GEMMA and not detail.display

        await pilot.press("down", "down")
        await wait_for(pilot, lambda: detail.display, "the failure detail")
        assert detail.model == LLAMA
        assert _detail_text(detail) == [
            f"✖ {LLAMA} failed on 1 node",
            "  b7e4f10: SIGILL while loading, 3 starts in a row",
            "    load_tensors: CPU_Mapped model buffer size = 762.81 MiB",
            "    Illegal instruction (core dumped)",
        ]
        # The cursor stays on llama across polls, and the detail with it.
        await pilot.pause(0.5)
        assert models.selected_model == LLAMA and detail.display

        # A second node fails it, with no cause: both are listed.
        fake.status["serving"][LLAMA] = "failed"
        await wait_for(pilot, lambda: "failed on 2 nodes" in _detail_text(detail)[0], "2 nodes")
        assert _detail_text(detail)[1] == "  a1b2c3d: no cause given"
        assert "2 failed: SIGILL while l…" in row_texts(models)[2]  # the first cause given

        await pilot.press("up")
        await wait_for(pilot, lambda: not detail.display, "the detail to go")
        assert detail.model is None

        # The node goes away: no stale detail either.
        await pilot.press("down")
        await wait_for(pilot, lambda: detail.display, "the detail again")
        await fake.stop()
        await wait_for(pilot, lambda: app.down_reason is not None, "the node down")
        assert not detail.display


def _detail_text(detail: FailureDetail) -> list[str]:
    """The lines the failure detail shows, as plain text."""
    return [t.plain for t in detail.content.renderables]


async def test_console_failed_model_in_chat_is_not_served(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.status is not None, "a status")
        app.query_one("#chat-model", Select).value = LLAMA
        label = app.query_one("#chat-serving", Static)
        await wait_for(pilot, lambda: "failed" in label.content.plain, "the label")
        assert label.content.plain == "cold: failed on 1 node"


async def test_console_idle_notice(state_dir: Path) -> None:
    node = FakeNode(idle_status())
    await node.start()
    try:
        app = app_for(node.port, state_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            notice = app.query_one(IdleNotice)
            await wait_for(pilot, lambda: notice.display, "the idle notice")
            assert notice.content.plain == f"⚠ This node serves nothing: {IDLE_REASON}"
            node.status["idle_reason"] = None
            node.status["serving"] = {GEMMA: "starting"}
            await wait_for(pilot, lambda: not notice.display, "the notice to go")
            assert notice.reason is None
            node.status["idle_reason"] = "a lite client serves nothing"
            await wait_for(pilot, lambda: notice.display, "the notice again")
            await node.stop()
            await wait_for(pilot, lambda: app.down_reason is not None, "the node down")
            assert not notice.display
    finally:
        await node.stop()


def test_state_cell_shows_the_first_line_of_the_cause() -> None:
    raw = sample_status()
    raw["serving"][LLAMA] = "ready"
    # A node that lists the failure only in `failures` counts as failed too.
    raw["peers"][2]["failures"] = {LLAMA: "exit 1 while loading, 3 starts in a row"}
    views = {v["model"]: v for v in pool_view(parse_status(raw).announcements, 0)}
    wide = state_cell(views[LLAMA], 80)
    assert wide.plain == "1 hot, 2 failed: SIGILL while loading, 3 starts in a row"
    assert wide.spans[-1].style == "bold red"  # the cause, in the failed style
    assert state_cell(views[LLAMA], 22).plain == "1 hot, 2 failed: SIGI…"
    assert state_cell(views[GEMMA], 22).plain == "3 hot"


def test_parse_status_reads_failures_and_idle_reason() -> None:
    raw = sample_status()
    status = parse_status(raw)
    assert status.idle_reason is None
    assert status.me.failures == {}
    assert status.nodes[1].failures == {LLAMA: SIGILL}
    assert status.failed_nodes(LLAMA) == [(status.nodes[1], SIGILL)]
    assert status.failed_nodes(GEMMA) == []

    raw["idle_reason"] = "no node has a copy of x"
    raw["failures"] = ["not", "a", "map"]
    raw["peers"][1]["failures"] = {QWEN: 3, GEMMA: "ok"}
    del raw["peers"][0]["failures"]
    status = parse_status(raw)
    assert status.idle_reason == "no node has a copy of x"
    assert status.me.failures == {}
    assert status.nodes[1].failures == {}
    assert status.nodes[2].failures == {GEMMA: "ok"}  # the malformed entry is dropped
    # Failed in `serving` with no cause given: still a failure, of unknown cause.
    assert status.failed_nodes(LLAMA) == [(status.nodes[1], None)]
    raw.pop("idle_reason")
    assert parse_status(raw).idle_reason is None


def test_parse_status_tolerates_missing_fields() -> None:
    raw = sample_status()
    raw["peers"][0].pop("resources")
    raw["peers"][1]["rtt_ms"] = None
    del raw["catalog"][0]["size_bytes"]
    raw["peers"][1]["memory_kind"] = "hbm"
    status = parse_status(raw)
    assert (status.me.memory_bytes, status.me.memory_kind) == (24 * GIB, "vram")
    assert (status.nodes[1].memory_bytes, status.nodes[1].memory_kind) == (int(8.8 * GIB), "ram")
    assert status.nodes[2].memory_kind is None  # not a kind the console knows: unknown
    assert status.nodes[3].memory_kind is None  # not said
    assert status.nodes[1].resources is None
    assert status.nodes[2].rtt_ms is None
    assert status.catalog[0].size_bytes is None
    with pytest.raises(NodeAPIError):
        parse_status({"hello": "world"})


async def test_console_models_show_cooling_and_warming(state_dir: Path) -> None:
    node = FakeNode(pool_status())
    await node.start()
    try:
        app = app_for(node.port, state_dir)
        async with app.run_test(size=(100, 24)) as pilot:
            models = app.query_one(ModelsTable)
            models.clock = lambda: NOW_MS / 1000
            await wait_for(pilot, lambda: models.row_count == 4, "the models")
            models.refresh_rows()  # with the fixed clock, whenever the first poll came
            rows = [" ".join(r.split()) for r in row_texts(models)]
            assert rows == [
                f"{GEMMA} ● hot 1 hot, 1 cooling 42s, 1 warming 40% 241 MiB",
                f"{QWEN} ● hot 1 cooling 42s, 1 fetching 50% 468 MiB",  # cooling still serves
                f"{PHI} ◐ warming 1 warming 40%, 1 cold 2.2 GiB",
                f"{LLAMA} ✖ failed 1 failed: SIGILL while loading, 3 starts… —",
            ]
            # Its TTL runs out: the cooling nodes count down, the warm-ups go on.
            models.clock = lambda: (NOW_MS + 2_000) / 1000
            models.refresh_rows()
            assert "1 cooling 40s, 1 warming 60%" in row_texts(models)[0]
    finally:
        await node.stop()


def test_state_cell_styles_each_state() -> None:
    status = parse_status(pool_status())
    views = {v["model"]: v for v in pool_view(status.announcements, NOW_MS)}
    cell = state_cell(views[GEMMA], 80)
    assert cell.plain == "1 hot, 1 cooling 42s, 1 warming 40%"
    styles = [str(span.style) for span in cell.spans if span.style != "grey50"]
    assert styles == ["bold green", "dark_sea_green", "yellow"]
    assert state_cell(views[PHI], 12).plain == "1 warming 4…"
