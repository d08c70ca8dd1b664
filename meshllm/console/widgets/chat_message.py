"""One message of the chat transcript."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

_WHO_STYLE = {"user": "bold cyan", "assistant": "bold magenta", "error": "bold red"}


class ChatMessage(Static):
    """A speaker line and the text, which grows as the answer streams in."""

    def __init__(self, role: str, who: str, text: str = "") -> None:
        super().__init__(classes=role)
        self.role = role
        self.who = who
        self.text = text
        self._waiting = role == "assistant" and not text

    def on_mount(self) -> None:
        """First render."""
        self._refresh_text()

    def append(self, delta: str) -> None:
        """Add a streamed piece of the answer."""
        self._waiting = False
        self.text += delta
        self._refresh_text()

    def fail(self, error: str) -> None:
        """The answer failed: say why, in place of (or after) what came."""
        self._waiting = False
        self.add_class("error")
        self.text = f"{self.text}\n⚠ {error}" if self.text else f"⚠ {error}"
        self._refresh_text()

    def _refresh_text(self) -> None:
        body = Text("…", style="italic grey50") if self._waiting else Text(self.text)
        self.update(
            Text.assemble((f"{self.who} \u203a\n", _WHO_STYLE.get(self.role, "bold")), body)
        )
