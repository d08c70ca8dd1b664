"""Layout of the console at 80x24, with snap_compare, over the fixed fake mesh.

The fake node runs in a thread (snap_compare runs the app in its own event loop).
Nothing on screen moves by itself: the data is fixed, the header has no clock, and
the prompt's cursor blink is off. Update the baselines with `--snapshot-update`,
which also rewrites docs/console.txt, the text capture for the README.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Input

from meshllm.console import MeshConsole
from meshllm.console.widgets import AddEndpoint, EndpointsTable, ModelsTable, NodeResources

from .fake_node import (
    ADMIN_TOKEN,
    GPU_BOX,
    LLAMA,
    NOW_MS,
    VLLM,
    FakeNode,
    endpoint_status,
    idle_status,
    pool_status,
    serve_in_thread,
)

DOCS_CAPTURE = Path(__file__).resolve().parents[2] / "docs" / "console.txt"
SIZE = (80, 24)
# A port where nothing listens on any sane machine (discard), for the node-down screen:
# a fixed number keeps the banner text, and so the snapshot, the same on every run.
CLOSED_PORT = 9


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    (tmp_path / "admin_token").write_text(ADMIN_TOKEN)
    return tmp_path


@pytest.fixture
def port() -> Iterator[int]:
    """The fake node, served from a thread."""
    with serve_in_thread(FakeNode()) as p:
        yield p


async def settle(pilot: Pilot, condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Run until `condition` holds, then let the screen settle."""
    app = pilot.app
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the console never got there")
        await pilot.pause(0.05)
    app.query_one("#chat-input", Input).cursor_blink = False
    await pilot.pause(0.3)
    await pilot.wait_for_scheduled_animations()


def console(port: int, state_dir: Path) -> MeshConsole:
    """The app with animations off (the tab underline would slide into the shot)."""
    app = MeshConsole(port, state_dir)
    app.animation_level = "none"
    return app


def loaded(app: MeshConsole) -> Callable[[], bool]:
    return lambda: app.status is not None and app.query_one("#nodes-table").row_count == 5


def test_snapshot_models_tab(snap_compare, port: int, state_dir: Path) -> None:
    """The main screen: fleet lines and the Models tab."""
    app = console(port, state_dir)
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda p: settle(p, loaded(app)))


def test_snapshot_pool_states(snap_compare, state_dir: Path) -> None:
    """Models hot, cooling, warming and fetching on a wider terminal, at a fixed clock."""
    with serve_in_thread(FakeNode(pool_status())) as pool_port:
        app = console(pool_port, state_dir)

        async def run_before(pilot: Pilot) -> None:
            models = app.query_one(ModelsTable)
            models.clock = lambda: NOW_MS / 1000
            await settle(pilot, lambda: loaded(app)() and models.row_count == 4)
            models.refresh_rows()  # with the fixed clock, whenever the first poll came
            await settle(pilot, lambda: True)

        assert snap_compare(app, terminal_size=(100, 24), run_before=run_before)


def test_snapshot_failed_model_detail(snap_compare, port: int, state_dir: Path) -> None:
    """The cursor on the model a peer gave up on: why, under the table."""
    app = console(port, state_dir)

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, loaded(app))
        await pilot.press("down", "down")
        await settle(pilot, lambda: app.query_one("#failure-detail").display)
        assert app.query_one("#failure-detail").model == LLAMA

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_idle_notice(snap_compare, state_dir: Path) -> None:
    """This node serves nothing: the notice under the fleet lines says why."""
    with serve_in_thread(FakeNode(idle_status())) as idle_port:
        app = console(idle_port, state_dir)
        assert snap_compare(
            app,
            terminal_size=SIZE,
            run_before=lambda p: settle(
                p, lambda: loaded(app)() and app.query_one("#idle").display
            ),
        )


def test_snapshot_nodes_tab(snap_compare, port: int, state_dir: Path) -> None:
    """The Nodes tab: this node marked, meters, unknown figures as dashes, gemma highlighted;
    under it this node's resources, its GPU's VRAM and utilisation."""
    app = console(port, state_dir)

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, loaded(app))
        await pilot.press("2")
        await settle(pilot, lambda: app.query_one(NodeResources).node_id is not None)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_stale_node_resources(snap_compare, port: int, state_dir: Path) -> None:
    """The cursor on the CPU-only peer last heard 21 s ago: greyed bars, 'stale', no GPU."""
    app = console(port, state_dir)

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, loaded(app))
        await pilot.press("2", "down")
        await settle(pilot, lambda: app.query_one(NodeResources).node_id == "b7e4f1029c3d5a66")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.fixture
def endpoint_port() -> Iterator[int]:
    """The fake node of a mesh that fronts two endpoints, served from a thread."""
    with serve_in_thread(FakeNode(endpoint_status(), endpoints=[GPU_BOX, VLLM])) as p:
        yield p


def endpoints_shown(app: MeshConsole) -> Callable[[], bool]:
    return lambda: loaded(app)() and app.query_one(EndpointsTable).row_count == 2


def test_snapshot_endpoints_tab(snap_compare, endpoint_port: int, state_dir: Path) -> None:
    """The Endpoints tab: this node's vLLM down (its error under the table), an Ollama box up."""
    app = console(endpoint_port, state_dir)

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("4")
        await settle(pilot, endpoints_shown(app))

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_add_endpoint_error(snap_compare, state_dir: Path) -> None:
    """The add dialog, filled in, with the node's refusal under the fields."""
    node = FakeNode(endpoint_status(), endpoints=[GPU_BOX, VLLM])
    node.endpoint_refusal = (502, "cannot reach http://10.0.0.9:11434: connection refused")
    with serve_in_thread(node) as refusing_port:
        app = console(refusing_port, state_dir)

        async def run_before(pilot: Pilot) -> None:
            await pilot.press("4")
            await settle(pilot, endpoints_shown(app))
            await pilot.press("a", *"http://10.0.0.9:11434", "tab", "tab", *"gpu-2")
            await pilot.press("tab", *"sk-secret", "enter")
            dialog = app.screen
            assert isinstance(dialog, AddEndpoint)
            for field in dialog.query(Input):
                field.cursor_blink = False
            await settle(pilot, lambda: dialog.error is not None and not dialog.busy)

        assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_remove_endpoint_confirmation(
    snap_compare, endpoint_port: int, state_dir: Path
) -> None:
    """The remove dialog over the Endpoints tab, for the Ollama box."""
    app = console(endpoint_port, state_dir)

    async def run_before(pilot: Pilot) -> None:
        await pilot.press("4")
        await settle(pilot, endpoints_shown(app))
        await pilot.press("down", "x")
        await settle(pilot, lambda: app.screen is not app.screen_stack[0])

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_chat_answer(snap_compare, port: int, state_dir: Path) -> None:
    """The Chat tab after a streamed answer."""
    app = console(port, state_dir)

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, loaded(app))
        await pilot.press("3", *"hello mesh", "enter")
        pane = app.query_one("ChatPane")
        await settle(pilot, lambda: not pane.busy and len(pane.history) == 2)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_drop_confirmation(snap_compare, port: int, state_dir: Path) -> None:
    """The drop dialog over the Models tab."""
    app = console(port, state_dir)

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, loaded(app))
        await pilot.press("d")
        await settle(pilot, lambda: app.screen is not app.screen_stack[0])

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_node_not_running(snap_compare, state_dir: Path) -> None:
    """The banner when nothing answers on the port."""
    app = console(CLOSED_PORT, state_dir)
    assert snap_compare(
        app, terminal_size=SIZE, run_before=lambda p: settle(p, lambda: app.down_reason is not None)
    )


def screen_text(app: MeshConsole) -> str:
    """The screen as plain text (what export_screenshot draws, without the SVG)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True)
    # Same render as App.export_screenshot, exported as text instead of SVG.
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def test_docs_capture_is_current(
    request: pytest.FixtureRequest, port: int, state_dir: Path
) -> None:
    """docs/console.txt is the main screen, as text (rewritten by --snapshot-update)."""

    async def capture() -> str:
        app = console(port, state_dir)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, loaded(app))
            return screen_text(app)

    text = asyncio.run(capture())
    if request.config.getoption("--snapshot-update"):
        DOCS_CAPTURE.parent.mkdir(exist_ok=True)
        DOCS_CAPTURE.write_text(text)
    assert DOCS_CAPTURE.read_text() == text
