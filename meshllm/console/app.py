"""The meshllm console: a Textual app that watches and drives the mesh through the local node.

Only the workers here touch the network, through `NodeClient`; they post messages
(`meshllm.console.messages`) and the handlers hand plain data to the widgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from meshllm.console.client import MeshStatus, NodeClient
from meshllm.console.messages import (
    AddEndpointRequested,
    ChatDelta,
    ChatFailed,
    ChatFinished,
    ChatRequested,
    EndpointChanged,
    EndpointChangeFailed,
    EndpointsUpdated,
    ModelPicked,
    NodeDown,
    RemoveEndpointRequested,
    StatusUpdated,
)
from meshllm.console.widgets import (
    AddEndpoint,
    ChatPane,
    ConfirmDrop,
    ConfirmRemoveEndpoint,
    EndpointDetail,
    EndpointsTable,
    FailureDetail,
    FleetSummary,
    HeaderBar,
    IdleNotice,
    ModelsTable,
    NodeDownBanner,
    NodeResources,
    NodesTable,
)
from meshllm.console.widgets.render import short_id
from meshllm.errors import MeshError

DEFAULT_PORT = 9337
DEFAULT_STATE_DIR = Path("~/.meshllm")
# Actions of the main screen, off while a dialog is on top of it.
_MAIN_ACTIONS = {"show_tab", "drop", "refresh", "token", "add_endpoint", "remove_endpoint"}
# Actions of the Endpoints tab only (shown in the key bar there, and nowhere else).
_ENDPOINT_ACTIONS = {"add_endpoint", "remove_endpoint"}

W = TypeVar("W", bound=Widget)


class MeshConsole(App[int]):
    """k9s-style console of a meshllm node: Models, Nodes, Chat and Endpoints tabs, live every
    second."""

    CSS_PATH = "console.tcss"
    TITLE = "meshllm console"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("1", "show_tab('models')", "Models"),
        Binding("2", "show_tab('nodes')", "Nodes"),
        Binding("3", "show_tab('chat')", "Chat"),
        Binding("4", "show_tab('endpoints')", "Endpoints"),
        Binding("a", "add_endpoint", "Add"),
        Binding("x,delete", "remove_endpoint", "Remove"),
        Binding("d", "drop", "Drop"),
        # Off the key bar, which must fit 80 columns: the poll refreshes every second anyway.
        Binding("r", "refresh", "Refresh", show=False),
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
        self.fleet: dict[str, Any] | None = None
        """The fleet view of the latest status (`MeshStatus.fleet`), None with no status."""
        self.clock: Callable[[], float] = time.time
        """Wall time in seconds, for the fleet view."""
        self._wake = asyncio.Event()

    def compose(self) -> ComposeResult:
        """Header, banner, fleet lines, idle notice, the four tabs, the key bar."""
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
                yield NodeResources(id="node-resources")
            with TabPane("Chat", id="chat"):
                yield ChatPane(id="chat-pane")
            with TabPane("Endpoints", id="endpoints"):
                yield EndpointsTable(id="endpoints-table")
                yield EndpointDetail(id="endpoint-detail")
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
        """Fetch /api/status and /api/endpoints every `poll_interval` seconds, or at once
        when woken (r, a change)."""
        while True:
            self._wake.clear()
            try:
                status = await self.client.status()
            except MeshError as exc:
                self.post_message(NodeDown(str(exc)))
            else:
                self.post_message(StatusUpdated(status))
                try:
                    endpoints = await self.client.endpoints()
                except MeshError as exc:  # an older node has no such route: the rest works
                    self.post_message(EndpointsUpdated((), str(exc)))
                else:
                    self.post_message(EndpointsUpdated(endpoints))
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

    @work(group="endpoint", exit_on_error=False)
    async def _add_endpoint(self, message: AddEndpointRequested) -> None:
        """Ask the node to front an endpoint; tell the dialog how it went."""
        try:
            record = await self.client.add_endpoint(
                message.url, message.kind, message.name, message.api_key
            )
        except MeshError as exc:
            message.dialog.post_message(EndpointChangeFailed(str(exc)))
            return
        label = f"{record.name} ({record.id})" if record.name else record.id
        message.dialog.post_message(
            EndpointChanged(f"{label}: {record.url} on {short_id(record.node_id)}")
        )
        self._wake.set()

    @work(group="endpoint", exit_on_error=False)
    async def _remove_endpoint(self, message: RemoveEndpointRequested) -> None:
        """Ask the node to stop fronting an endpoint; tell the dialog how it went."""
        try:
            removed = await self.client.remove_endpoint(message.endpoint_id)
        except MeshError as exc:
            message.dialog.post_message(EndpointChangeFailed(str(exc)))
            return
        message.dialog.post_message(EndpointChanged(f"{removed} removed"))
        self._wake.set()

    # What the workers bring.

    def on_status_updated(self, message: StatusUpdated) -> None:
        """Hand the fresh status to every widget."""
        status = message.status
        self.status, self.down_reason = status, None
        self.fleet = fleet = status.fleet(int(self.clock() * 1000))
        with contextlib.suppress(NoMatches):  # a late poll while the app shuts down
            self.main(HeaderBar).show_status(status)
            self.main(NodeDownBanner).hide()
            self.main(FleetSummary).show_fleet(fleet, status)
            self.main(IdleNotice).show_status(status)
            self.main(ModelsTable).show_status(status)
            self._show_failure_detail()
            self.main(NodesTable).show_status(status)
            self._show_node_resources()
            self.main(ChatPane).show_status(status)

    def on_endpoints_updated(self, message: EndpointsUpdated) -> None:
        """Hand the endpoints to their table; say why when there are none to show."""
        with contextlib.suppress(NoMatches):
            self.main(EndpointsTable).show_endpoints(message.endpoints)
            if message.error is not None:
                self.main(EndpointDetail).show_error(message.error)
            else:
                self._show_endpoint_detail()

    def on_node_down(self, message: NodeDown) -> None:
        """Say so, and show no figure at all rather than stale ones."""
        self.status, self.down_reason, self.fleet = None, message.reason, None
        with contextlib.suppress(NoMatches):  # a late poll while the app shuts down
            self.main(HeaderBar).show_down()
            self.main(NodeDownBanner).show_down(message.reason)
            self.main(FleetSummary).clear()
            self.main(IdleNotice).hide()
            self.main(ModelsTable).clear_rows()
            self.main(FailureDetail).show_model(None, None)
            self.main(NodesTable).clear_rows()
            self.main(NodeResources).clear()
            self.main(EndpointsTable).clear_rows()
            self.main(EndpointDetail).show_error(message.reason)

    # What the widgets ask.

    def on_model_picked(self, message: ModelPicked) -> None:
        """Highlight the nodes serving the chat's model."""
        with contextlib.suppress(NoMatches):
            self.main(NodesTable).highlight(message.model)

    def on_chat_requested(self, message: ChatRequested) -> None:
        """Stream an answer."""
        self._stream_chat(message.model, message.messages)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The cursor moved: say why its model failed, show its node's resources or its
        endpoint's URL and error."""
        with contextlib.suppress(NoMatches):
            if event.data_table.id == "models-table":
                self._show_failure_detail()
            elif event.data_table.id == "nodes-table":
                self._show_node_resources()
            elif event.data_table.id == "endpoints-table":
                self._show_endpoint_detail()

    def _show_failure_detail(self) -> None:
        # The table's cursor, not the event's row: a rebuild highlights rows on its way.
        self.main(FailureDetail).show_model(self.status, self.main(ModelsTable).selected_model)

    def _show_node_resources(self) -> None:
        node = self.main(NodesTable).selected_node
        entries = {n["node_id"]: n for n in self.fleet["nodes"]} if self.fleet else {}
        if node is None or node.node_id not in entries or self.status is None:
            self.main(NodeResources).show_node(None)
            return
        ann = self.status.announcement(node.node_id)
        self.main(NodeResources).show_node(
            entries[node.node_id], ann.endpoints if ann else None, is_self=node.is_self
        )

    def _show_endpoint_detail(self) -> None:
        table = self.main(EndpointsTable)
        self.main(EndpointDetail).show_endpoint(
            table.selected_endpoint, any_endpoint=bool(table.endpoints)
        )

    def on_add_endpoint_requested(self, message: AddEndpointRequested) -> None:
        """The add dialog's form: send it to the node."""
        self._add_endpoint(message)

    def on_remove_endpoint_requested(self, message: RemoveEndpointRequested) -> None:
        """The remove dialog's yes: send it to the node."""
        self._remove_endpoint(message)

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
        """The main screen's keys are off while a dialog is open; adding and removing
        endpoints are keys of the Endpoints tab, dropping a model of the others."""
        if action in _MAIN_ACTIONS and len(self.screen_stack) > 1:
            return False
        if action in _ENDPOINT_ACTIONS or action == "drop":
            with contextlib.suppress(NoMatches):
                on_endpoints = self.main(TabbedContent).active == "endpoints"
                return on_endpoints == (action in _ENDPOINT_ACTIONS)
        return True

    def action_show_tab(self, tab: str) -> None:
        """Show the Models, Nodes, Chat or Endpoints tab."""
        self.main(TabbedContent).active = tab
        self._focus_tab(tab)

    def _focus_tab(self, tab: str) -> None:
        target = {
            "models": "#models-table",
            "nodes": "#nodes-table",
            "chat": "#chat-input",
            "endpoints": "#endpoints-table",
        }
        if tab in target:
            self.main(TabbedContent).query_one(target[tab]).focus()
        self.refresh_bindings()  # the key bar of the tab shown

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

    def action_add_endpoint(self) -> None:
        """Front a new endpoint from this node, through a dialog."""

        def added(summary: str | None) -> None:
            if summary:
                self.notify(summary, title="Endpoint added")

        self.push_screen(AddEndpoint(), added)

    def action_remove_endpoint(self) -> None:
        """Remove the endpoint under the cursor, after a confirmation."""
        endpoint = self.main(EndpointsTable).selected_endpoint
        if endpoint is None:
            self.notify("No endpoint to remove: pick one first.", severity="warning")
            return

        def removed(summary: str | None) -> None:
            if summary:
                self.notify(summary, title="Endpoint removed")

        self.push_screen(ConfirmRemoveEndpoint(endpoint), removed)


def run_console(port: int = DEFAULT_PORT, state_dir: Path = DEFAULT_STATE_DIR) -> int:
    """Run the console against the node on 127.0.0.1:`port` until the user quits; exit code."""
    app = MeshConsole(port=port, state_dir=state_dir)
    app.run()
    return app.return_code or 0


__all__ = ["MeshConsole", "run_console"]
