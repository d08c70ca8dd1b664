"""Messages of the console: workers post what the node said, widgets post what the user asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textual.message import Message

from meshllm.console.client import MeshStatus


class StatusUpdated(Message):
    """The poll worker got a fresh `/api/status`."""

    def __init__(self, status: MeshStatus) -> None:
        super().__init__()
        self.status = status


class NodeDown(Message):
    """The poll worker could not reach the node (or the node answered garbage)."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class ModelPicked(Message):
    """The chat's model picker changed (None: nothing picked)."""

    def __init__(self, model: str | None) -> None:
        super().__init__()
        self.model = model


class ChatRequested(Message):
    """The user sent a prompt: stream an answer to this conversation."""

    def __init__(self, model: str, messages: Sequence[Mapping[str, str]]) -> None:
        super().__init__()
        self.model = model
        self.messages = list(messages)


class ChatDelta(Message):
    """A piece of the answer being streamed."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ChatFinished(Message):
    """The answer is complete."""


class ChatFailed(Message):
    """The answer failed; `error` says why."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
