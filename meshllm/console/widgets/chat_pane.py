"""The Chat tab: a model picker, the transcript, and a prompt line; answers stream in."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, Label, Select, Static

from meshllm.console.client import MeshStatus
from meshllm.console.messages import (
    ChatDelta,
    ChatFailed,
    ChatFinished,
    ChatRequested,
    ModelPicked,
)
from meshllm.console.widgets.chat_message import ChatMessage

_HINT = "Type a prompt and press enter: the answer streams in through the mesh."


class ChatPane(Vertical):
    """Chat with any catalog model through the local node; posts `ChatRequested`."""

    BINDINGS = [
        Binding("escape", "leave", "Keys"),
        Binding("ctrl+l", "clear", "Clear chat"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history: list[dict[str, str]] = []
        self.busy = False
        self._options: tuple[tuple[str, bool], ...] = ()
        self._answer: ChatMessage | None = None

    def compose(self) -> ComposeResult:
        """Picker bar, transcript, prompt."""
        with Horizontal(id="chat-bar"):
            yield Label("model", id="chat-model-label")
            yield Select[str]([], prompt="pick a model", id="chat-model")
            yield Static("", id="chat-serving")
        with VerticalScroll(id="chat-log"):
            yield Static(Text(_HINT, style="italic grey50"), id="chat-hint")
        yield Input(placeholder="Ask the mesh…  (enter sends, esc leaves)", id="chat-input")

    @property
    def model(self) -> str | None:
        """The picked model."""
        return self.query_one("#chat-model", Select).selection

    def pick(self, model: str) -> None:
        """Pick `model` if the catalog has it."""
        select = self.query_one("#chat-model", Select)
        if any(model == m for m, _ in self._options):
            select.value = model

    def show_status(self, status: MeshStatus) -> None:
        """Refresh the picker from the catalog (warm models first); keep the pick."""
        entries = sorted(status.catalog, key=lambda e: (not e.warm, e.model))
        options = tuple((e.model, e.warm) for e in entries)
        select = self.query_one("#chat-model", Select)
        if options != self._options:
            self._options = options
            previous = select.selection
            with self.prevent(Select.Changed):
                select.set_options(
                    (Text.assemble(("● " if warm else "○ ", "green" if warm else "grey50"), m), m)
                    for m, warm in options
                )
                models = [m for m, _ in options]
                if previous in models:
                    select.value = previous
            if select.selection != previous:
                self.post_message(ModelPicked(select.selection))
        # Nothing picked yet: take the most served warm model, so chat works at once.
        if select.selection is None:
            warm = sorted(
                (e for e in status.catalog if e.warm), key=lambda e: (-len(e.nodes), e.model)
            )
            if warm:
                select.value = warm[0].model
        self._show_serving(status)

    def _show_serving(self, status: MeshStatus) -> None:
        model = self.model
        label = self.query_one("#chat-serving", Static)
        if model is None:
            label.update("")
            return
        # A node that gave up on the model lists it as 'failed': it serves nothing.
        n = sum(1 for node in status.serving_nodes(model) if node.serving[model] != "failed")
        failed = len(status.failed_nodes(model))
        if n:
            label.update(Text(f"served by {n} node{'s' if n != 1 else ''}", style="green"))
        elif failed:
            label.update(Text(f"cold: failed on {failed} node{'s' if failed != 1 else ''}", "red"))
        else:
            label.update(Text("cold: no node serves it", style="grey50"))

    def on_select_changed(self, event: Select.Changed) -> None:
        """Tell the app, which highlights the serving nodes."""
        event.stop()
        self.post_message(ModelPicked(self.model))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Send the prompt with the conversation so far."""
        event.stop()
        prompt = event.value.strip()
        model = self.model
        if not prompt:
            return
        if model is None:
            self.notify("Pick a model first.", severity="warning")
            return
        if self.busy:
            self.notify("Still answering; wait for the end of the answer.", severity="warning")
            return
        event.input.clear()
        self.history.append({"role": "user", "content": prompt})
        self._answer = ChatMessage("assistant", model)
        log = self.query_one("#chat-log", VerticalScroll)
        self.query_one("#chat-hint").display = False
        log.mount_all([ChatMessage("user", "you", prompt), self._answer])
        log.scroll_end(animate=False)
        self.busy = True
        self.post_message(ChatRequested(model, self.history))

    def on_chat_delta(self, message: ChatDelta) -> None:
        """Append a streamed piece."""
        if self._answer is not None:
            self._answer.append(message.text)
            self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    def on_chat_finished(self, _: ChatFinished) -> None:
        """Keep the answer in the conversation."""
        if self._answer is not None:
            self.history.append({"role": "assistant", "content": self._answer.text})
        self._answer = None
        self.busy = False

    def on_chat_failed(self, message: ChatFailed) -> None:
        """Show the error; drop the unanswered prompt from the conversation."""
        if self._answer is not None:
            self._answer.fail(message.error)
        if self.history and self.history[-1]["role"] == "user":
            self.history.pop()
        self._answer = None
        self.busy = False

    def action_leave(self) -> None:
        """Give the keys back to the app (1/2/3, d, q…)."""
        self.screen.set_focus(None)

    def action_clear(self) -> None:
        """Forget the conversation."""
        if self.busy:
            return
        self.history.clear()
        self.query("ChatMessage").remove()
        self.query_one("#chat-hint").display = True
