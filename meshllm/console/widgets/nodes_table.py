"""The Nodes tab: one row a node, this one marked, with health and CPU/RAM/VRAM meters
(grey while the figures are stale)."""

from __future__ import annotations

from rich.text import Text

from meshllm.console.client import MeshStatus, NodeInfo
from meshllm.console.widgets.live_table import LiveTable
from meshllm.console.widgets.render import (
    ROLE_STYLE,
    UNKNOWN,
    cpu_fraction,
    fit,
    health,
    meter,
    ram_fraction,
    serving,
    short_id,
    vram_meter,
)


def node_row(node: NodeInfo, highlight: str | None, w: dict[str, int]) -> tuple[Text, ...]:
    """The cells of one node's row; `highlight` marks the model picked in the chat."""
    lit = highlight is not None and highlight in node.serving
    ident = Text.assemble(
        ("▶" if node.is_self else " ", "bold cyan"),
        (short_id(node.node_id, w["NODE"] - 1), "bold #c39bff" if lit else "bold"),
    )
    address = fit(node.addrs[0], w["ADDRESS"]) if node.addrs else UNKNOWN
    stale = node.resources_state == "stale"  # the last figures heard: drawn grey
    return (
        ident,
        Text(fit(node.role, w["ROLE"]), style=ROLE_STYLE.get(node.role, "")),
        serving(node, w["SERVING"], highlight),
        health(node, w["HEALTH"]),
        Text(address, style="" if node.addrs else "grey50"),
        meter(cpu_fraction(node.resources), w["CPU"], stale=stale),
        meter(ram_fraction(node.resources), w["RAM"], stale=stale),
        vram_meter(node.resources, w["VRAM"], stale=stale),
    )


class NodesTable(LiveTable):
    """One row a node: this node first (marked ▶), then the live peers by id."""

    # Minimum widths fit 80 columns with DataTable's one cell of padding each side.
    COLUMNS = (
        ("NODE", 8),
        ("ROLE", 6),
        ("SERVING", 12),
        ("HEALTH", 7),
        ("ADDRESS", 14),
        ("CPU", 5),
        ("RAM", 5),
        ("VRAM", 6),  # room for "no GPU"
    )
    FLEX = "SERVING"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._status: MeshStatus | None = None
        self.highlight_model: str | None = None

    @property
    def highlighted_nodes(self) -> set[str]:
        """Ids of the nodes that serve the highlighted model."""
        if self._status is None or self.highlight_model is None:
            return set()
        return {n.node_id for n in self._status.serving_nodes(self.highlight_model)}

    @property
    def selected_node(self) -> NodeInfo | None:
        """The node under the cursor."""
        key = self.cursor_key
        nodes = self._status.nodes if self._status is not None else ()
        return next((n for n in nodes if n.node_id == key), None)

    def show_status(self, status: MeshStatus) -> None:
        """Rebuild the rows from a fresh status."""
        self._status = status
        self.refresh_rows()

    def highlight(self, model: str | None) -> None:
        """Make the nodes serving `model` stand out."""
        self.highlight_model = model
        self.refresh_rows()

    def clear_rows(self) -> None:
        """No rows while the node does not answer (never stale figures)."""
        self._status = None
        self.refresh_rows()

    def refresh_rows(self) -> None:
        """Render the rows of the status last shown."""
        nodes = self._status.nodes if self._status is not None else ()
        rows = [(n.node_id, node_row(n, self.highlight_model, self.widths)) for n in nodes]
        self.replace_rows(rows, (nodes, self.highlight_model))
