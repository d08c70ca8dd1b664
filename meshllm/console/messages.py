"""Messages of the console: workers post what the node said, widgets post what the user asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textual.message import Message
from textual.screen import Screen

from meshllm.console.client import EndpointInfo, MeshStatus


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


class EndpointsUpdated(Message):
    """The poll worker got `/api/endpoints`, or `error` says why it could not."""

    def __init__(self, endpoints: Sequence[EndpointInfo], error: str | None = None) -> None:
        super().__init__()
        self.endpoints = tuple(endpoints)
        self.error = error


class AddEndpointRequested(Message):
    """The add-endpoint dialog asks the node to front the server at `url`; the answer goes
    back to `dialog` (`EndpointChanged` or `EndpointChangeFailed`)."""

    def __init__(
        self, dialog: Screen, url: str, kind: str, name: str | None, api_key: str | None
    ) -> None:
        super().__init__()
        self.dialog = dialog
        self.url = url
        self.kind = kind
        self.name = name
        self.api_key = api_key


class RemoveEndpointRequested(Message):
    """The remove dialog asks the node to stop fronting `endpoint_id`; the answer goes back
    to `dialog`."""

    def __init__(self, dialog: Screen, endpoint_id: str) -> None:
        super().__init__()
        self.dialog = dialog
        self.endpoint_id = endpoint_id


class EndpointChanged(Message):
    """The node added or removed the endpoint; `summary` says what was done."""

    def __init__(self, summary: str) -> None:
        super().__init__()
        self.summary = summary


class EndpointChangeFailed(Message):
    """The node refused the change (or did not answer); `error` says why."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
