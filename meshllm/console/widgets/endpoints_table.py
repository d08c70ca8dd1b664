"""The Endpoints tab: one row an external server a node fronts, its state and its models."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from meshllm.console.client import EndpointInfo
from meshllm.console.widgets.live_table import LiveTable
from meshllm.console.widgets.render import UNKNOWN, fit, short_id

ENDPOINT_STYLE = {"up": "green", "probation": "yellow", "draining": "grey62", "down": "bold red"}
ENDPOINT_GLYPH = {"up": "●", "probation": "◐", "draining": "◌", "down": "✖"}


def models_cell(endpoint: EndpointInfo, width: int) -> Text:
    """'● llama3 ○ qwen': each model, warm (loaded) ones marked."""
    if not endpoint.models:
        return Text("no models", style="grey50")
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, (model, warm) in enumerate(
        sorted(endpoint.models.items(), key=lambda m: (not m[1], m[0]))
    ):
        out.append(" " if i else "")
        out.append("● " if warm else "○ ", style="green" if warm else "grey50")
        out.append(model)
    out.truncate(width, overflow="ellipsis")
    return out


def endpoint_row(endpoint: EndpointInfo, w: dict[str, int]) -> tuple[Text, ...]:
    """The cells of one endpoint's row."""
    state = endpoint.state
    latency = UNKNOWN if endpoint.latency_ms is None else f"{endpoint.latency_ms:.0f} ms"
    return (
        Text(fit(endpoint.id, w["ID"]), style="bold"),
        Text(short_id(endpoint.node_id, w["NODE"])),
        Text(fit(endpoint.name or UNKNOWN, w["NAME"])),
        Text(fit(endpoint.kind, w["KIND"])),
        Text(
            fit(f"{ENDPOINT_GLYPH.get(state, '?')} {state}", w["STATE"]),
            ENDPOINT_STYLE.get(state, ""),
        ),
        Text(
            latency.rjust(w["LATENCY"]), style="" if endpoint.latency_ms is not None else "grey50"
        ),
        models_cell(endpoint, w["MODELS"]),
    )


class EndpointsTable(LiveTable):
    """One row an endpoint, by node then id (`/api/endpoints`)."""

    COLUMNS = (
        ("ID", 10),
        ("NODE", 7),
        ("NAME", 10),
        ("KIND", 6),
        ("STATE", 11),
        ("LATENCY", 7),
        ("MODELS", 14),
    )
    FLEX = "MODELS"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.endpoints: tuple[EndpointInfo, ...] = ()

    @property
    def selected_endpoint(self) -> EndpointInfo | None:
        """The endpoint under the cursor."""
        key = self.cursor_key
        return next((e for e in self.endpoints if e.id == key), None)

    def show_endpoints(self, endpoints: Sequence[EndpointInfo]) -> None:
        """Rebuild the rows, keeping the cursor on the same endpoint."""
        self.endpoints = tuple(endpoints)
        self.refresh_rows()

    def clear_rows(self) -> None:
        """No rows while the node does not answer (never stale ones)."""
        self.show_endpoints(())

    def refresh_rows(self) -> None:
        """Render the rows of the endpoints last shown."""
        rows = [(e.id, endpoint_row(e, self.widths)) for e in self.endpoints]
        self.replace_rows(rows, (self.endpoints, tuple(self.widths.items())))
