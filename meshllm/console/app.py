"""The meshllm console: a Textual app that watches and drives the mesh through the local node.

Only the workers here touch the network, through `NodeClient`; they post messages
(`meshllm.console.messages`) and the handlers hand plain data to the widgets.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TypeVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from meshllm.console.client import MeshStatus, NodeClient
from meshllm.console.messages import (
    ChatDelta,
    ChatFailed,
    ChatFinished,
    ChatRequested,
    ModelPicked,
    NodeDown,
    StatusUpdated,
)
from meshllm.console.widgets import (
    ChatPane,
    ConfirmDrop,
    FailureDetail,
    FleetSummary,
    HeaderBar,
    IdleNotice,
    ModelsTable,
    NodeDownBanner,
    NodesTable,
)
from meshllm.console.widgets.render import short_id
from meshllm.errors import MeshError

DEFAULT_PORT = 9337
DEFAULT_STATE_DIR = Path("~/.meshllm")
# Actions of the main screen, off while a dialog is on top of it.
_MAIN_ACTIONS = {"show_tab", "drop", "refresh", "token"}

W = TypeVar("W", bound=Widget)


class MeshConsole(App[int]):
    """k9s-style console of a meshllm node: Models, Nodes and Chat tabs, live every second."""

    CSS_PATH = "console.tcss"
    TITLE = "meshllm console"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("1", "show_tab('models')", "Models"),
        Binding("2", "show_tab('nodes')", "Nodes"),
        Binding("3", "show_tab('chat')", "Chat"),
        Binding("d", "drop", "Drop"),
        Binding("r", "refresh", "Refresh"),
        Binding("t", "token", "Token"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        state_dir: Path = DEFAULT_STATE_DIR,
        *,
        client: NodeClient | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.client = client or NodeClient(port, state_dir)
        self.poll_interval = poll_interval
        self.status: MeshStatus | None = None
        """The latest status, None before the first answer and while the node is down."""
        self.down_reason: str | None = None
        """Why the node is unreachable, None while it answers."""
        self._wake = asyncio.Event()

    def compose(self) -> ComposeResult:
        """Header, banner, fleet lines, idle notice, the three tabs, the key bar."""
        yield HeaderBar(self.client.address, id="header")
        yield NodeDownBanner(self.client.address, id="banner")
        yield FleetSummary(id="fleet")
        yield IdleNotice(id="idle")
        with TabbedContent(initial="models", id="tabs"):
            with TabPane("Models", id="models"):
                yield ModelsTable(id="models-table")
                yield FailureDetail(id="failure-detail")
            with TabPane("Nodes", id="nodes"):
                yield NodesTable(id="nodes-table")
            with TabPane("Chat", id="chat"):
                yield ChatPane(id="chat-pane")
        yield Footer()

    def on_mount(self) -> None:
        """Start polling."""
        self.main(NodeDownBanner).hide()
        self.main(ModelsTable).focus()
        self._poll()

    def main(self, kind: type[W]) -> W:
        """The widget of type `kind` on the main screen, whatever dialog is on top.

        Raises NoMatches while the app shuts down (no screen left).
        """
        if not self.screen_stack:
            raise NoMatches("the console is shutting down")
        return self.screen_stack[0].query_one(kind)

    async def on_unmount(self) -> None:
        """Close the HTTP session."""
        await self.client.close()

    # Workers: the only code that talks to the node.

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def _poll(self) -> None:
        """Fetch /api/status every `poll_interval` seconds, or at once when woken (r)."""
        while True:
            self._wake.clear()
            try:
                status = await self.client.status()
            except MeshError as exc:
                self.post_message(NodeDown(str(exc)))
            else:
                self.post_message(StatusUpdated(status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    @work(exclusive=True, group="chat", exit_on_error=False)
    async def _stream_chat(self, model: str, messages: list[dict[str, str]]) -> None:
        """Stream one answer into the chat pane."""
        pane = self.main(ChatPane)
        try:
            async for delta in self.client.chat_stream(model, messages):
                pane.post_message(ChatDelta(delta))
        except MeshError as exc:
            pane.post_message(ChatFailed(str(exc)))
        else:
            pane.post_message(ChatFinished())

    @work(group="drop", exit_on_error=False)
    async def _drop(self, model: str) -> None:
        """Ask the node to drop `model`, then refresh."""
        try:
            nodes = await self.client.drop(model)
        except MeshError as exc:
            self.notify(str(exc), title=f"Drop of {model} failed", severity="error")
            return
        who = ", ".join(short_id(n) for n in nodes) or "no node"
        self.notify(f"{model}: dropped on {who}", title="Dropped")
        self._wake.set()

    @work(exclusive=True, group="token", exit_on_error=False)
    async def _show_token(self) -> None:
        """Fetch the join token (`/api/token`, with the admin token), show and copy it."""
        try:
            token = await self.client.join_token()
        except MeshError as exc:
            self.notify(f"No join token: {exc}", severity="warning")
            return
        self.copy_to_clipboard(token)
        self.notify(token, title="Join token (copied)", timeout=15)

    # What the workers bring.

    def on_status_updated(self, message: StatusUpdated) -> None:
        """Hand the fresh status to every widget."""
        status = message.status
        self.status, self.down_reason = status, None
        with contextlib.suppress(NoMatches):  # a late poll while the app shuts down
            self.main(HeaderBar).show_status(status)
            self.main(NodeDownBanner).hide()
            self.main(FleetSummary).show_status(status)
            self.main(IdleNotice).show_status(status)
            self.main(ModelsTable).show_status(status)
            self._show_failure_detail()
            self.main(NodesTable).show_status(status)
            self.main(ChatPane).show_status(status)

    def on_node_down(self, message: NodeDown) -> None:
        """Say so, and show no figure at all rather than stale ones."""
        self.status, self.down_reason = None, message.reason
        with contextlib.suppress(NoMatches):  # a late poll while the app shuts down
            self.main(HeaderBar).show_down()
            self.main(NodeDownBanner).show_down(message.reason)
            self.main(FleetSummary).clear()
            self.main(IdleNotice).hide()
            self.main(ModelsTable).clear_rows()
            self.main(FailureDetail).show_model(None, None)
            self.main(NodesTable).clear_rows()

    # What the widgets ask.

    def on_model_picked(self, message: ModelPicked) -> None:
        """Highlight the nodes serving the chat's model."""
        with contextlib.suppress(NoMatches):
            self.main(NodesTable).highlight(message.model)

    def on_chat_requested(self, message: ChatRequested) -> None:
        """Stream an answer."""
        self._stream_chat(message.model, message.messages)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The cursor moved on the Models tab: say why its model failed, if it did."""
        if event.data_table.id == "models-table":
            with contextlib.suppress(NoMatches):
                self._show_failure_detail()

    def _show_failure_detail(self) -> None:
        # The table's cursor, not the event's row: a rebuild highlights rows on its way.
        self.main(FailureDetail).show_model(self.status, self.main(ModelsTable).selected_model)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a model: chat with it."""
        if event.data_table.id == "models-table" and event.row_key.value is not None:
            self.main(ChatPane).pick(event.row_key.value)
            self.action_show_tab("chat")

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Keys go to the content of the tab shown."""
        self._focus_tab(event.pane.id or "")

    # Key bindings.

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The main screen's keys are off while a dialog is open."""
        return not (action in _MAIN_ACTIONS and len(self.screen_stack) > 1)

    def action_show_tab(self, tab: str) -> None:
        """Show the Models, Nodes or Chat tab."""
        self.main(TabbedContent).active = tab
        self._focus_tab(tab)

    def _focus_tab(self, tab: str) -> None:
        target = {"models": "#models-table", "nodes": "#nodes-table", "chat": "#chat-input"}
        if tab in target:
            self.main(TabbedContent).query_one(target[tab]).focus()

    def action_refresh(self) -> None:
        """Poll now."""
        self._wake.set()

    def action_token(self) -> None:
        """Show the join token and copy it to the clipboard."""
        self._show_token()

    def drop_target(self) -> str | None:
        """The model `d` would drop: the row on Models, the node's model on Nodes, the chat's."""
        active = self.main(TabbedContent).active
        if active == "models":
            return self.main(ModelsTable).selected_model
        if active == "nodes":
            node = self.main(NodesTable).selected_node
            return next(iter(sorted(node.serving)), None) if node else None
        return self.main(ChatPane).model

    def action_drop(self) -> None:
        """Drop a model, after a confirmation."""
        model = self.drop_target()
        if model is None:
            self.notify("Nothing to drop here: pick a served model first.", severity="warning")
            return
        status = self.status
        nodes = [short_id(n.node_id) for n in status.serving_nodes(model)] if status else []

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._drop(model)

        self.push_screen(ConfirmDrop(model, nodes), confirmed)


def run_console(port: int = DEFAULT_PORT, state_dir: Path = DEFAULT_STATE_DIR) -> int:
    """Run the console against the node on 127.0.0.1:`port` until the user quits; exit code."""
    app = MeshConsole(port=port, state_dir=state_dir)
    app.run()
    return app.return_code or 0


__all__ = ["MeshConsole", "run_console"]
