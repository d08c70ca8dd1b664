"""The modal that asks before dropping a model."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmDrop(ModalScreen[bool]):
    """Drop `model`? Dismisses with True (y, Drop) or False (n, esc, Cancel)."""

    BINDINGS = [
        Binding("y", "confirm", "Drop"),
        Binding("n,escape", "cancel", "Cancel"),
    ]

    def __init__(self, model: str, nodes: list[str]) -> None:
        super().__init__()
        self.model = model
        self.nodes = nodes

    def compose(self) -> ComposeResult:
        """Question, consequence, buttons."""
        if self.nodes:
            plural = "s" if len(self.nodes) != 1 else ""
            who = f"{len(self.nodes)} node{plural} ({', '.join(self.nodes)})"
        else:
            who = "The node serving it"
        with Vertical(id="confirm-dialog"):
            yield Static(
                Text.assemble("Drop ", (self.model, "bold magenta"), "?"), id="confirm-title"
            )
            yield Static(
                f"{who} will stop serving it, kill llama-server and exit.",
                id="confirm-body",
            )
            with Horizontal(id="confirm-buttons"):
                yield Button("Drop (y)", variant="error", id="confirm-drop")
                yield Button("Cancel (n)", variant="default", id="confirm-cancel")

    def on_mount(self) -> None:
        """The safe choice has the focus."""
        self.query_one("#confirm-cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Either button closes the dialog."""
        event.stop()
        self.dismiss(event.button.id == "confirm-drop")

    def action_confirm(self) -> None:
        """Yes, drop it."""
        self.dismiss(True)

    def action_cancel(self) -> None:
        """No."""
        self.dismiss(False)
