"""The notice shown while this node's auto-assignment finds nothing for it to serve."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from meshllm.console.client import MeshStatus


class IdleNotice(Static):
    """'This node serves nothing: <why>', from the status's `idle_reason`; hidden otherwise."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.reason: str | None = None
        self.display = False

    def show_status(self, status: MeshStatus) -> None:
        """Show the node's idle reason, or hide when it has none."""
        self.reason = status.idle_reason
        if self.reason is None:
            self.display = False
            return
        self.update(
            Text.assemble(("⚠ This node serves nothing: ", "bold"), (self.reason, "italic"))
        )
        self.display = True

    def hide(self) -> None:
        """No notice (the node does not answer: nothing is known)."""
        self.reason = None
        self.display = False
