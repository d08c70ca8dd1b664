"""Anthropic's Messages API on the node: ``POST /v1/messages`` through the mesh
(translated to and from the OpenAI shape by :mod:`meshllm.surfaces.anthropic`, streams
as Anthropic's events), and ``POST /v1/messages/count_tokens``, asked of the serving
node's llama-server, which has its own.  Errors are ``{"type": "error", "error": …}``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from meshllm.proxy.surface import SSE_HEADERS, Native, OpenAIAnswer
from meshllm.surfaces import anthropic

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


class MessagesAnswer:
    """One answer to an Anthropic client."""

    stream_headers = SSE_HEADERS

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = "msg_" + secrets.token_hex(12)
        self._stream = anthropic.StreamTranslator(model, self._id)

    def progress(self, line: str) -> bytes:
        return self._stream.feed(f": {line}\n\n".encode())  # a ping, message_start first

    def events(self, data: bytes, now: float) -> bytes:
        return self._stream.feed(data)

    def end(self, now: float) -> bytes:
        return self._stream.end()

    def body(self, data: bytes, now: float) -> bytes:
        try:
            openai = json.loads(data)
        except (ValueError, RecursionError):
            raise ValueError("not JSON") from None
        answer = anthropic.message_answer(openai, self._model, message_id=self._id)
        return json.dumps(answer, separators=(",", ":")).encode()

    def error_event(self, message: str, code: str) -> bytes:
        return _error_event(message)


class NativeMessagesAnswer(OpenAIAnswer):
    """An answer from a backend that speaks Anthropic's API itself: passed on as it is,
    a break-off as Anthropic's error event."""

    def error_event(self, message: str, code: str) -> bytes:
        return _error_event(message)


def _error_event(message: str) -> bytes:
    """Anthropic's event for a stream that broke off after its head."""
    body = anthropic.error_body(502, message)
    return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"


class _Anthropic:
    """What both Anthropic routes share: no fallback to another model, errors in shape."""

    fallback = False
    native: Native | None = None

    def error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = anthropic.error_body(status, message)
        return web.json_response(body, status=status, headers=headers)


class MessagesSurface(_Anthropic):
    """``POST /v1/messages``: to a backend that speaks it (llama-server's own route, a
    model on Anthropic's cloud) as it is, else translated."""

    native = Native(MESSAGES_PATH, NativeMessagesAnswer)

    def translate(
        self, path: str, payload: dict[str, Any], known: Iterable[str]
    ) -> tuple[str, dict[str, Any]]:
        return "/v1/chat/completions", anthropic.messages_request(payload)

    def answer(self, model: str, stream: bool) -> MessagesAnswer:
        return MessagesAnswer(model)


class CountTokensAnswer(OpenAIAnswer):
    """llama-server's own count: already in Anthropic's shape, passed on as it is."""

    def progress(self, line: str) -> bytes:
        return b""

    def error_event(self, message: str, code: str) -> bytes:
        return b""


class CountTokensSurface(_Anthropic):
    """``POST /v1/messages/count_tokens``: checked here, counted by the serving node's
    llama-server (``/v1/messages/count_tokens``, a tunnel route)."""

    def translate(
        self, path: str, payload: dict[str, Any], known: Iterable[str]
    ) -> tuple[str, dict[str, Any]]:
        anthropic.count_tokens_request(payload)  # raises ValueError for a bad one
        return COUNT_TOKENS_PATH, {**payload, "stream": False}

    def answer(self, model: str, stream: bool) -> CountTokensAnswer:
        return CountTokensAnswer()


SURFACES = {MESSAGES_PATH: MessagesSurface(), COUNT_TOKENS_PATH: CountTokensSurface()}
