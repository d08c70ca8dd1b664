"""The Models tab: every catalog model, warm or cold, how many nodes serve it, in what state."""

from __future__ import annotations

from collections import Counter

from rich.text import Text

from meshllm.console.client import CatalogEntry, MeshStatus
from meshllm.console.widgets.live_table import LiveTable
from meshllm.console.widgets.render import (
    NO_CAUSE,
    STATE_STYLE,
    UNKNOWN,
    cause_summary,
    fit,
    human_bytes,
)

_STATE_ORDER = ("ready", "starting", "fetching")
"""Known states first, in this order, then any other, then 'failed' (its cause follows it)."""


def _state_rank(state: str) -> int:
    if state == "failed":
        return len(_STATE_ORDER) + 1
    return _STATE_ORDER.index(state) if state in _STATE_ORDER else len(_STATE_ORDER)


def failure_summary(status: MeshStatus, model: str) -> str | None:
    """The first line of the first cause given for `model`'s failures; None if it never failed."""
    failed = status.failed_nodes(model)
    if not failed:
        return None
    return next((cause_summary(c) for _, c in failed if c), NO_CAUSE)


def state_cell(status: MeshStatus, entry: CatalogEntry, width: int) -> Text:
    """Per-state counts of the nodes serving the model: '2 ready, 1 fetching'.

    Failures come last, with why: '1 ready, 1 failed: SIGILL while loading, …'.
    """
    model = entry.model
    states = Counter(n.serving[model] for n in status.serving_nodes(model))
    # A node that gave up on the model without listing it in `serving` failed it all the same.
    states["failed"] += sum(1 for n, _ in status.failed_nodes(model) if model not in n.serving)
    states = +states  # drop the zero counts
    if not states:
        return Text(UNKNOWN, style="grey50")
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, state in enumerate(sorted(states, key=_state_rank)):
        if i:
            out.append(", ", style="grey50")
        out.append(f"{states[state]} {state}", style=STATE_STYLE.get(state, ""))
    if summary := failure_summary(status, model):
        out.append(f": {summary}", style=STATE_STYLE["failed"])
    out.truncate(width, overflow="ellipsis")
    return out


def model_row(status: MeshStatus, entry: CatalogEntry, widths: dict[str, int]) -> tuple[Text, ...]:
    """The cells of one model's row."""
    dim = "" if entry.warm else "grey50"
    warm = Text("● warm", style="bold green") if entry.warm else Text("○ cold", style="grey50")
    count = Text(str(len(entry.nodes)).rjust(widths["NODES"]), style="bold" if entry.nodes else dim)
    return (
        Text(fit(entry.model, widths["MODEL"]), style=dim or "bold"),
        warm,
        count,
        state_cell(status, entry, widths["STATE"]),
        Text(human_bytes(entry.size_bytes).rjust(widths["SIZE"]), style=dim),
    )


class ModelsTable(LiveTable):
    """One row a model: warm ones first (most served first), then cold ones by name."""

    COLUMNS = (("MODEL", 24), ("WARM", 6), ("NODES", 5), ("STATE", 22), ("SIZE", 8))
    FLEX = "MODEL"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._status: MeshStatus | None = None

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
        entries = sorted(status.catalog, key=lambda e: (not e.warm, -len(e.nodes), e.model))
        states = tuple(
            (n.node_id, tuple(sorted(n.serving.items())), tuple(sorted(n.failures.items())))
            for n in status.nodes
        )
        rows = [(e.model, model_row(status, e, self.widths)) for e in entries]
        self.replace_rows(rows, (tuple(entries), states))
