"""The modal that adds an endpoint: an OpenAI-compatible or Ollama server this node fronts."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from meshllm.console.client import ENDPOINT_KINDS
from meshllm.console.messages import (
    AddEndpointRequested,
    EndpointChanged,
    EndpointChangeFailed,
)

_KIND_LABEL = {"auto": "auto (probe it)", "openai": "OpenAI-compatible", "ollama": "Ollama"}


class AddEndpoint(ModalScreen[str | None]):
    """URL, kind, optional name and API key; the node's answer is shown here.

    Enter (or Add) posts `AddEndpointRequested`; the dialog stays open, busy, until the
    app answers with `EndpointChanged` (it closes, with what was done) or
    `EndpointChangeFailed` (the node's error under the fields, to fix and retry).
    Escape (or Cancel) closes it with None.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self) -> None:
        super().__init__()
        self.busy = False
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        """Title, fields, error line, buttons."""
        with Vertical(id="endpoint-dialog"):
            yield Static(Text("Add an endpoint", style="bold"), id="endpoint-title")
            yield Static(
                "An OpenAI-compatible or Ollama server: this node serves its models to the mesh.",
                id="endpoint-help",
            )
            with Grid(id="endpoint-form"):
                yield Label("URL")
                yield Input(placeholder="http://10.0.0.5:11434", id="endpoint-url", compact=True)
                yield Label("kind")
                yield Select(
                    [(_KIND_LABEL[k], k) for k in ENDPOINT_KINDS],
                    value="auto",
                    allow_blank=False,
                    id="endpoint-kind",
                    compact=True,
                )
                yield Label("name")
                yield Input(placeholder="optional", id="endpoint-name", compact=True)
                yield Label("API key")
                yield Input(
                    placeholder="optional; kept on the node, never shown",
                    password=True,
                    id="endpoint-key",
                    compact=True,
                )
            yield Static("", id="endpoint-error")
            with Horizontal(id="endpoint-buttons"):
                yield Button("Add (enter)", variant="primary", id="endpoint-add")
                yield Button("Cancel (esc)", variant="default", id="endpoint-cancel")

    def on_mount(self) -> None:
        """The URL first."""
        self.query_one("#endpoint-error").display = False
        self.query_one("#endpoint-url", Input).focus()

    def _value(self, field: str) -> str:
        return self.query_one(f"#endpoint-{field}", Input).value.strip()

    @on(Input.Submitted)
    @on(Button.Pressed, "#endpoint-add")
    def submit(self, event: Input.Submitted | Button.Pressed) -> None:
        """Check the URL, then ask the app (and so the node) to add it."""
        event.stop()
        if self.busy:
            return
        url = self._value("url")
        if not url:
            self.show_error("Give the server's URL, e.g. http://10.0.0.5:11434")
            self.query_one("#endpoint-url", Input).focus()
            return
        if not url.startswith(("http://", "https://")):
            self.show_error("The URL must start with http:// or https://")
            self.query_one("#endpoint-url", Input).focus()
            return
        kind = str(self.query_one("#endpoint-kind", Select).value)
        self._set_busy(True)
        self.post_message(
            AddEndpointRequested(
                self, url, kind, self._value("name") or None, self._value("key") or None
            )
        )

    @on(Button.Pressed, "#endpoint-cancel")
    def cancel_pressed(self, event: Button.Pressed) -> None:
        """Cancel closes it."""
        event.stop()
        self.dismiss(None)

    def on_endpoint_changed(self, message: EndpointChanged) -> None:
        """Added: close, saying so."""
        self.dismiss(message.summary)

    def on_endpoint_change_failed(self, message: EndpointChangeFailed) -> None:
        """The node refused: say why, keep what was typed."""
        self._set_busy(False)
        self.show_error(message.error)

    def show_error(self, error: str) -> None:
        """The error line under the fields."""
        self.error = error
        line = self.query_one("#endpoint-error", Static)
        line.update(Text(f"✖ {error}", style="bold red"))
        line.display = True

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        button = self.query_one("#endpoint-add", Button)
        button.disabled = busy
        button.label = "Adding…" if busy else "Add (enter)"
        if busy:
            self.query_one("#endpoint-error").display = False

    def action_cancel(self) -> None:
        """Close without adding."""
        self.dismiss(None)
