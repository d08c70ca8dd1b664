"""The banner shown while the local node does not answer."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class NodeDownBanner(Static):
    """Says plainly that no node answers, why, and that the console reconnects by itself."""

    def __init__(self, address: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.address = address
        self.reason = ""

    def show_down(self, reason: str) -> None:
        """Show the banner with the latest reason."""
        self.reason = reason
        self.update(
            Text.assemble(
                ("✖ The meshllm node is not running", "bold"),
                (f" ({self.address})\n", ""),
                (f"  {reason}\n", "italic"),
                ("  Start one with ", ""),
                ("meshllm --model NAME", "bold"),
                ("; this console reconnects by itself.", ""),
            )
        )
        self.display = True

    def hide(self) -> None:
        """The node answers again."""
        self.reason = ""
        self.display = False
