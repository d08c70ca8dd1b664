"""The Models tab: every catalog model, its state in the mesh's pool and on how many nodes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.text import Text

from meshllm.console.client import CatalogEntry, MeshStatus
from meshllm.console.widgets.live_table import LiveTable
from meshllm.console.widgets.render import NO_CAUSE, UNKNOWN, cause_summary, fit, human_bytes
from meshllm.election.pool_view import pool_state_parts, pool_view

POOL_STYLE = {
    "hot": "bold green",
    "cooling": "dark_sea_green",
    "warming": "yellow",
    "fetching": "cyan",
    "unloading": "grey62",
    "cold": "grey50",
    "failed": "bold red",
}
POOL_GLYPH = {
    "hot": "●",
    "cooling": "◑",
    "warming": "◐",
    "fetching": "↓",
    "unloading": "◌",
    "cold": "○",
    "failed": "✖",
}
ROW_ORDER = ("hot", "warming", "fetching", "unloading", "failed", "cold")
"""Rows by their mesh-wide state: served ones first, failed ones before cold ones."""


def cold_entry(model: str) -> dict[str, Any]:
    """The pool view of a catalog model no node has (yet)."""
    return {"model": model, "state": "cold", "size_bytes": None, "rpm": 0.0, "nodes": []}


def failure_summary(view: Mapping[str, Any]) -> str | None:
    """The first line of the first cause given for the model's failures; None if none failed."""
    failed = [n for n in view["nodes"] if n["state"] == "failed"]
    if not failed:
        return None
    return next((cause_summary(n["cause"]) for n in failed if n.get("cause")), NO_CAUSE)


def state_cell(view: Mapping[str, Any], width: int) -> Text:
    """How many of the model's nodes are in each state: '1 hot, 1 cooling 42s, 1 warming 40%'.

    Failures come last, with why: '1 hot, 1 failed: SIGILL while loading, …'.
    """
    parts = pool_state_parts(view)
    if not parts:
        return Text(UNKNOWN, style="grey50")
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, (state, text) in enumerate(parts):
        if i:
            out.append(", ", style="grey50")
        out.append(text, style=POOL_STYLE.get(state, ""))
    if summary := failure_summary(view):
        out.append(f": {summary}", style=POOL_STYLE["failed"])
    out.truncate(width, overflow="ellipsis")
    return out


def model_row(
    entry: CatalogEntry, view: Mapping[str, Any], widths: dict[str, int]
) -> tuple[Text, ...]:
    """The cells of one model's row."""
    state = view["state"]
    dim = "grey50" if state in ("cold", "unloading") else ""
    label = f"{POOL_GLYPH.get(state, '?')} {state}"
    size = entry.size_bytes if entry.size_bytes is not None else view["size_bytes"]
    return (
        Text(fit(entry.model, widths["MODEL"]), style=dim or "bold"),
        Text(fit(label, widths["STATE"]), style=POOL_STYLE.get(state, "")),
        state_cell(view, widths["NODES"]),
        Text(human_bytes(size).rjust(widths["SIZE"]), style=dim),
    )


def _row_key(view: Mapping[str, Any]) -> tuple[int, int, str]:
    state = view["state"]
    rank = ROW_ORDER.index(state) if state in ROW_ORDER else len(ROW_ORDER)
    active = sum(1 for n in view["nodes"] if n["state"] not in ("cold", "failed"))
    return (rank, -active, view["model"])


class ModelsTable(LiveTable):
    """One row a model: served ones first (on most nodes first), then failed, then cold."""

    COLUMNS = (("MODEL", 24), ("STATE", 10), ("NODES", 25), ("SIZE", 8))
    FLEX = "MODEL"
    FLEX_MAX = 32
    """Model names grow to this width; NODES takes the room left after them."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._status: MeshStatus | None = None
        self.clock: Callable[[], float] = time.time
        """Wall time in seconds: progress and time left are reckoned from it."""

    def _fit_widths(self) -> dict[str, int]:
        widths = super()._fit_widths()
        taken = sum(widths.values()) + 2 * self.cell_padding * len(self.COLUMNS) + 1
        widths["NODES"] += max(self.size.width - taken, 0)
        return widths

    @property
    def selected_model(self) -> str | None:
        """The model under the cursor."""
        return self.cursor_key

    def show_status(self, status: MeshStatus) -> None:
        """Rebuild the rows from a fresh status, keeping the cursor on the same model."""
        self._status = status
        self.refresh_rows()

    def clear_rows(self) -> None:
        """No rows while the node does not answer (never stale figures)."""
        self._status = None
        self.refresh_rows()

    def refresh_rows(self) -> None:
        """Render the rows of the status last shown."""
        status = self._status
        if status is None:
            self.replace_rows((), None)
            return
        views = {v["model"]: v for v in pool_view(status.announcements, int(self.clock() * 1000))}
        pairs = [(e, views.get(e.model) or cold_entry(e.model)) for e in status.catalog]
        pairs.sort(key=lambda pair: _row_key(pair[1]))
        rows = [(e.model, model_row(e, v, self.widths)) for e, v in pairs]
        self.replace_rows(rows, tuple((key, tuple(cells)) for key, cells in rows))
