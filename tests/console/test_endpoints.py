"""The Endpoints tab: list, add (a) and remove (x) the external servers nodes front."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import Button, Input, Select, Static

from meshllm.console import NodeAPIError, NodeClient
from meshllm.console.widgets import (
    AddEndpoint,
    ConfirmDrop,
    ConfirmRemoveEndpoint,
    EndpointDetail,
    EndpointsTable,
)

from .fake_node import (
    ADMIN_TOKEN,
    GEMMA,
    GPU_BOX,
    MISTRAL,
    NOW_MS,
    VLLM,
    FakeNode,
    endpoint_status,
)
from .helpers import app_for, row_texts, wait_for

BOX_URL = "http://10.0.0.9:11434"


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    """The fake node whose mesh fronts two endpoints: lab-vllm here (down), gpu-box (up)."""
    fake = FakeNode(endpoint_status(), endpoints=[GPU_BOX, VLLM])
    await fake.start()
    yield fake
    await fake.stop()


def squeezed(texts: list[str]) -> list[str]:
    return [" ".join(t.split()) for t in texts]


def detail_text(app) -> str:
    return app.query_one(EndpointDetail).content.plain


async def open_tab(pilot, app, rows: int) -> EndpointsTable:
    await pilot.press("4")
    table = app.query_one(EndpointsTable)
    await wait_for(pilot, lambda: table.row_count == rows, f"{rows} endpoints")
    assert table.has_focus
    return table


async def test_endpoints_tab_lists_every_nodes_endpoints(node: FakeNode, state_dir: Path) -> None:
    app = app_for(node.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_tab(pilot, app, 2)
        # By node, then id: this node's down vLLM first.
        assert squeezed(row_texts(table)) == [
            "ep-vllm a1b2c3d lab-vllm openai ✖ down — ● mistral-7b-…",
            "ep-gpubox c93d0a7 gpu-box ollama ● up 12 ms ● mistral-7b-…",
        ]
        assert table.selected_endpoint is not None and table.selected_endpoint.id == "ep-vllm"
        assert detail_text(app) == (
            "https://vllm.lab.example:8000 · API key stored · last error: connection refused"
        )
        await pilot.press("down")
        await wait_for(pilot, lambda: "10.0.0.7" in detail_text(app), "the box's detail")
        assert detail_text(app) == "http://10.0.0.7:11434 · no API key"

        # The fleet lines count them, and the box's warm mistral is hot in the mesh.
        fleet = app.query_one("#fleet", Static).content.plain.splitlines()
        assert fleet[0] == f"3 hosts have {GEMMA}, 1 has {MISTRAL}"
        assert fleet[2].endswith("· endpoints 1 up, 1 down")
        mistral = next(m for m in app.fleet["models"] if m["model"] == MISTRAL)
        assert [(e["endpoint_id"], e["warm"]) for e in mistral["endpoints"]] == [
            ("ep-vllm", True),
            ("ep-gpubox", True),
        ]


async def test_endpoints_tab_with_no_endpoint_says_how_to_add_one(
    fake: FakeNode, state_dir: Path
) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.status is not None, "a status")
        await open_tab(pilot, app, 0)
        await wait_for(pilot, lambda: "No endpoint yet" in detail_text(app), "the hint")
        assert detail_text(app) == (
            "No endpoint yet: press a to front an OpenAI-compatible or Ollama server from this node"
        )
        await pilot.press("x")  # nothing to remove: a warning, no dialog
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmRemoveEndpoint)


async def test_endpoints_unavailable_is_said_and_the_rest_works(
    fake: FakeNode, state_dir: Path
) -> None:
    fake.listing_refusal = (404, "not found")  # a node from before endpoints
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, app, 0)
        await wait_for(pilot, lambda: "unavailable" in detail_text(app), "the error")
        assert detail_text(app) == "Endpoints unavailable: not found"
        assert app.down_reason is None and app.status is not None


async def test_add_endpoint_sends_it_with_the_admin_token(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_tab(pilot, app, 0)
        await pilot.press("a")
        dialog = app.screen
        assert isinstance(dialog, AddEndpoint)
        assert dialog.query_one("#endpoint-url", Input).has_focus
        await pilot.press(*BOX_URL, "tab")  # to the kind
        dialog.query_one("#endpoint-kind", Select).value = "ollama"
        await pilot.press("tab", *"gpu-2", "tab", *"sk-secret", "enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, AddEndpoint), "the dialog to go")
        assert fake.endpoint_requests == [
            {
                "method": "POST",
                "body": {"url": BOX_URL, "kind": "ollama", "name": "gpu-2", "api_key": "sk-secret"},
                "authorization": f"Bearer {ADMIN_TOKEN}",
            }
        ]
        await wait_for(pilot, lambda: table.row_count == 1, "the new endpoint")
        assert squeezed(row_texts(table)) == [
            "ep-new1 a1b2c3d gpu-2 ollama ◐ probation — no models"
        ]
        assert detail_text(app) == f"{BOX_URL} · API key stored"
        # The key never comes back: not in the table, not in the fleet.
        assert "sk-secret" not in str(app.fleet) and "sk-secret" not in detail_text(app)


async def test_add_endpoint_leaves_out_empty_fields(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, app, 0)
        await pilot.press("a", *BOX_URL)
        await pilot.click("#endpoint-add")
        await wait_for(pilot, lambda: len(fake.endpoint_requests) == 1, "the request")
        assert fake.endpoint_requests[0]["body"] == {"url": BOX_URL, "kind": "auto"}


async def test_add_endpoint_shows_errors_in_the_dialog(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, app, 0)
        await pilot.press("a")
        dialog = app.screen
        assert isinstance(dialog, AddEndpoint)

        # Checked here first: no URL, not an http(s) one.
        await pilot.press("enter")
        assert dialog.error is not None and dialog.error.startswith("Give the server's URL")
        await pilot.press(*"ftp://x", "enter")
        assert dialog.error == "The URL must start with http:// or https://"
        assert fake.endpoint_requests == []

        # The node refuses: its message, in the dialog, which stays open with the fields.
        fake.endpoint_refusal = (502, f"cannot reach {BOX_URL}: connection refused")
        url = dialog.query_one("#endpoint-url", Input)
        url.value = BOX_URL
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(fake.endpoint_requests) == 1, "the request")
        await wait_for(pilot, lambda: not dialog.busy, "the answer")
        assert isinstance(app.screen, AddEndpoint)
        assert dialog.error == f"cannot reach {BOX_URL}: connection refused"
        shown = dialog.query_one("#endpoint-error", Static)
        assert shown.display and "connection refused" in shown.content.plain
        assert url.value == BOX_URL and not dialog.query_one("#endpoint-add", Button).disabled

        # Fixed on the node: the retry goes through.
        fake.endpoint_refusal = None
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, AddEndpoint), "the dialog to go")
        assert [e["url"] for e in fake.endpoints] == [BOX_URL]


async def test_add_endpoint_with_a_wrong_admin_token(fake: FakeNode, state_dir: Path) -> None:
    (state_dir / "admin_token").write_text("not-the-token")
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, app, 0)
        await pilot.press("a", *BOX_URL, "enter")
        dialog = app.screen
        await wait_for(pilot, lambda: len(fake.endpoint_requests) == 1, "the request")
        await wait_for(pilot, lambda: getattr(dialog, "error", None) is not None, "the error")
        assert dialog.error == "bad admin token"
        assert fake.endpoint_requests[0]["authorization"] == "Bearer not-the-token"
        await pilot.press("escape")
        assert not isinstance(app.screen, AddEndpoint) and fake.endpoints == []


async def test_add_endpoint_cancelled_sends_nothing(fake: FakeNode, state_dir: Path) -> None:
    app = app_for(fake.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, app, 0)
        await pilot.press("a", *BOX_URL, "escape")
        assert not isinstance(app.screen, AddEndpoint)
        await pilot.press("a")
        await pilot.click("#endpoint-cancel")
        assert not isinstance(app.screen, AddEndpoint)
        await pilot.pause(0.3)
        assert fake.endpoint_requests == []


async def test_remove_endpoint_confirmed(node: FakeNode, state_dir: Path) -> None:
    app = app_for(node.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_tab(pilot, app, 2)
        await pilot.press("down", "x")
        dialog = app.screen
        assert isinstance(dialog, ConfirmRemoveEndpoint) and dialog.endpoint.id == "ep-gpubox"
        body = str(dialog.query_one("#remove-body", Static).content)
        assert "c93d0a7 stops fronting http://10.0.0.7:11434" in body
        assert "its 2 models leave the mesh" in body
        await pilot.press("y")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmRemoveEndpoint), "close")
        assert node.endpoint_requests == [
            {"method": "DELETE", "id": "ep-gpubox", "authorization": f"Bearer {ADMIN_TOKEN}"}
        ]
        await wait_for(pilot, lambda: table.row_count == 1, "the endpoint to go")
        assert table.selected_endpoint is not None and table.selected_endpoint.id == "ep-vllm"


async def test_remove_endpoint_cancelled_sends_nothing(node: FakeNode, state_dir: Path) -> None:
    app = app_for(node.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, app, 2)
        for cancel in ("n", "escape", "enter"):  # enter: the focused Cancel button
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmRemoveEndpoint)
            await pilot.press(cancel)
            assert not isinstance(app.screen, ConfirmRemoveEndpoint)
        await pilot.pause(0.3)
        assert node.endpoint_requests == [] and len(node.endpoints) == 2


async def test_remove_endpoint_error_shows_in_the_dialog(node: FakeNode, state_dir: Path) -> None:
    app = app_for(node.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, app, 2)
        await pilot.press("x")
        dialog = app.screen
        assert isinstance(dialog, ConfirmRemoveEndpoint)
        node.endpoints.remove(next(e for e in node.endpoints if e["id"] == "ep-vllm"))
        await pilot.press("y")
        await wait_for(pilot, lambda: dialog.error is not None, "the error")
        assert dialog.error == "no endpoint ep-vllm"
        assert isinstance(app.screen, ConfirmRemoveEndpoint) and not dialog.busy
        error = dialog.query_one("#remove-error", Static)
        assert error.display and error.content.plain == "✖ no endpoint ep-vllm"
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmRemoveEndpoint)


async def test_endpoint_keys_belong_to_the_endpoints_tab(node: FakeNode, state_dir: Path) -> None:
    app = app_for(node.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.query_one("#models-table").row_count == 4, "models")
        await pilot.press("a", "x")  # on Models: nothing
        await pilot.pause(0.2)
        assert app.screen is app.screen_stack[0]
        await open_tab(pilot, app, 2)
        await pilot.press("d")  # d drops models, not endpoints
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmDrop) and app.screen is app.screen_stack[0]
        keys = {b.binding.key for b in app.screen.active_bindings.values() if b.binding.show}
        assert {"a", "x", "4"} <= keys and "d" not in keys
        await pilot.press("1")
        keys = {b.binding.key for b in app.screen.active_bindings.values() if b.binding.show}
        assert "d" in keys and "a" not in keys and "x" not in keys


async def test_endpoints_go_when_the_node_does(node: FakeNode, state_dir: Path) -> None:
    app = app_for(node.port, state_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_tab(pilot, app, 2)
        await node.stop()
        await wait_for(pilot, lambda: table.row_count == 0, "no stale rows")
        assert detail_text(app).startswith("Endpoints unavailable: no node answers")


async def test_client_endpoints_and_fleet(node: FakeNode, state_dir: Path) -> None:
    client = NodeClient(node.port, state_dir)
    try:
        listed = await client.endpoints()
        assert [(e.id, e.node_id[:4], e.state) for e in listed] == [
            ("ep-vllm", "a1b2", "down"),
            ("ep-gpubox", "c93d", "up"),
        ]
        box = listed[1]
        assert box.models == {MISTRAL: True, GEMMA: False} and box.latency_ms == 12.0
        assert listed[0].error == "connection refused" and listed[0].has_api_key

        record = await client.add_endpoint("http://h:8000", "openai", name="h")
        assert (record.id, record.kind, record.name, record.url) == (
            "ep-new1",
            "openai",
            "h",
            "http://h:8000",
        )
        assert await client.remove_endpoint("ep-new1") == "ep-new1"
        with pytest.raises(NodeAPIError, match="no endpoint ep-new1") as err:
            await client.remove_endpoint("ep-new1")
        assert err.value.status == 404
        with pytest.raises(NodeAPIError, match="not an http"):
            await client.add_endpoint("h:8000")

        # /api/fleet is the fleet view the console draws from /api/status.
        fleet = await client.fleet()
        assert fleet == (await client.status()).fleet(NOW_MS)
        assert fleet["summary"] == f"3 hosts have {GEMMA}, 1 has {MISTRAL}"

        (state_dir / "admin_token").write_text("wrong")
        with pytest.raises(NodeAPIError, match="bad admin token"):
            await client.remove_endpoint("ep-vllm")
        with pytest.raises(NodeAPIError, match="bad admin token"):
            await client.add_endpoint("http://h:8000")
        assert len(node.endpoints) == 2
    finally:
        await client.close()
