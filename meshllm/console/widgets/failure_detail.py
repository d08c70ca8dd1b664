"""Why a model failed: a few lines under the Models table while the cursor is on it."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from meshllm.console.client import MeshStatus
from meshllm.console.widgets.render import STATE_GLYPH, cause_log_lines, cause_summary, short_id


class FailureDetail(Static):
    """Why the model under the cursor failed, node by node; hidden for other models.

    '✖ llama… failed on 1 node', then a line a node, 'b7e4f10: SIGILL while loading, 3
    starts in a row', each followed by the last lines of that node's server log, dimmed.
    """

    LOG_LINES = 2
    """Log lines shown under each cause (its last ones)."""
    MAX_NODES = 3
    """Nodes shown; the others are counted."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model: str | None = None
        """The failed model shown, None while hidden."""
        self.display = False

    def show_model(self, status: MeshStatus | None, model: str | None) -> None:
        """Show why `model` failed, if it did on some node; hide otherwise."""
        failed = status.failed_nodes(model) if status is not None and model is not None else []
        if model is None or not failed:
            self.model = None
            self.display = False
            return
        n = len(failed)
        lines = [
            Text.assemble(
                (f"{STATE_GLYPH['failed']} ", "bold red"),
                (model, "bold"),
                (f" failed on {n} node{'s' if n != 1 else ''}", "red"),
            )
        ]
        for node, cause in failed[: self.MAX_NODES]:
            lines.append(
                Text.assemble("  ", (short_id(node.node_id), "bold"), ": ", cause_summary(cause))
            )
            for log_line in cause_log_lines(cause)[-self.LOG_LINES :]:
                lines.append(
                    Text(f"    {log_line}", style="grey62", no_wrap=True, overflow="ellipsis")
                )
        if n > self.MAX_NODES:
            more = n - self.MAX_NODES
            lines.append(Text(f"  and {more} more node{'s' if more > 1 else ''}", style="grey62"))
        self.model = model
        self.update(Group(*lines))
        self.display = True
