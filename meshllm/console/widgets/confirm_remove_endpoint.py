"""The modal that asks before removing an endpoint, and shows the node's answer."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from meshllm.console.client import EndpointInfo
from meshllm.console.messages import (
    EndpointChanged,
    EndpointChangeFailed,
    RemoveEndpointRequested,
)
from meshllm.console.widgets.render import short_id


class ConfirmRemoveEndpoint(ModalScreen[str | None]):
    """Remove `endpoint`? y (Remove) posts `RemoveEndpointRequested` and waits for the
    node: done, it closes with what was done; refused, the error shows here. n, escape
    (Cancel) close it with None."""

    BINDINGS = [
        Binding("y", "confirm", "Remove"),
        Binding("n,escape", "cancel", "Cancel"),
    ]

    def __init__(self, endpoint: EndpointInfo) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.busy = False
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        """Question, consequence, error line, buttons."""
        e = self.endpoint
        n = len(e.models)
        if n == 0:
            models = "it has no models."
        elif n == 1:
            models = (
                f"{next(iter(e.models))} leaves the mesh unless another node or endpoint has it."
            )
        else:
            models = f"its {n} models leave the mesh unless other nodes or endpoints have them."
        with Vertical(id="remove-dialog"):
            yield Static(
                Text.assemble("Remove endpoint ", (e.name or e.id, "bold magenta"), f" ({e.id})?"),
                id="remove-title",
            )
            yield Static(
                f"Node {short_id(e.node_id)} stops fronting {e.url or 'it'} once its requests "
                f"in flight are done; {models}",
                id="remove-body",
            )
            yield Static("", id="remove-error")
            with Horizontal(id="remove-buttons"):
                yield Button("Remove (y)", variant="error", id="remove-confirm")
                yield Button("Cancel (n)", variant="default", id="remove-cancel")

    def on_mount(self) -> None:
        """The safe choice has the focus."""
        self.query_one("#remove-error").display = False
        self.query_one("#remove-cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Remove asks the node; Cancel closes."""
        event.stop()
        if event.button.id == "remove-confirm":
            self.action_confirm()
        else:
            self.action_cancel()

    def action_confirm(self) -> None:
        """Yes: ask the node (once)."""
        if self.busy:
            return
        self.busy = True
        button = self.query_one("#remove-confirm", Button)
        button.disabled, button.label = True, "Removing…"
        self.query_one("#remove-error").display = False
        self.post_message(RemoveEndpointRequested(self, self.endpoint.id))

    def action_cancel(self) -> None:
        """No."""
        self.dismiss(None)

    def on_endpoint_changed(self, message: EndpointChanged) -> None:
        """Removed: close, saying so."""
        self.dismiss(message.summary)

    def on_endpoint_change_failed(self, message: EndpointChangeFailed) -> None:
        """The node refused: say why; Remove may be tried again."""
        self.busy = False
        button = self.query_one("#remove-confirm", Button)
        button.disabled, button.label = False, "Remove (y)"
        self.error = message.error
        line = self.query_one("#remove-error", Static)
        line.update(Text(f"✖ {message.error}", style="bold red"))
        line.display = True
