"""The top line: which node the console watches and whether it answers."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from meshllm.console.client import MeshStatus


class HeaderBar(Static):
    """One line: product badge, the local node (id, role, version, port) and a live/offline mark."""

    def __init__(self, address: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.address = address
        self.show_connecting()

    def _render_line(self, left: Text, right: Text) -> None:
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        badge = Text(" meshllm ", style="bold #101418 on #8fbcbb")
        grid.add_row(Text.assemble(badge, " ", left), right)
        self.update(grid)

    def show_connecting(self) -> None:
        """Before the first answer."""
        self._render_line(
            Text(f"connecting to {self.address}…", style="italic"),
            Text("◌ connecting ", style="yellow"),
        )

    def show_status(self, status: MeshStatus) -> None:
        """Connected: describe the local node."""
        port = status.http_port if status.http_port is not None else self.address.rsplit(":", 1)[-1]
        left = Text.assemble(
            ("node ", "grey62"),
            (status.node_id[:12], "bold"),
            (" · ", "grey50"),
            (status.role, "bold"),
            (" · ", "grey50"),
            (f"v{status.version}" if status.version else "v?", ""),
            (" · ", "grey50"),
            (f":{port}", ""),
        )
        self._render_line(left, Text("● live ", style="bold green"))

    def show_down(self) -> None:
        """The node does not answer."""
        self._render_line(
            Text(f"no node on {self.address}", style="bold"),
            Text("○ offline ", style="bold red"),
        )
