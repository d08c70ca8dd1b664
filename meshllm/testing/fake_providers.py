"""Fake cloud LLM providers (OpenAI, Anthropic, Google Gemini) as local HTTP servers.

Each speaks its provider's documented API closely enough for the official SDK
(``openai``, ``anthropic``, ``google-genai``) to drive it, for tests without internet:

- ``openai`` (``https://api.openai.com/v1``): ``GET /v1/models``, ``POST
  /v1/chat/completions``, ``POST /v1/completions`` (both plain JSON, or SSE with
  ``"stream": true``; a usage chunk with ``stream_options.include_usage``), ``POST
  /v1/embeddings`` (floats, or base64 float32 as the SDK asks by default).  Auth
  ``Authorization: Bearer KEY``, else 401 ``invalid_api_key``.
- ``anthropic`` (``https://api.anthropic.com``): ``POST /v1/messages`` (a ``Message``,
  or SSE events ``message_start`` … ``message_stop``), ``POST
  /v1/messages/count_tokens``.  Auth ``x-api-key: KEY`` or ``Authorization: Bearer KEY``
  (what ``anthropic>=2`` sends), else 401 ``authentication_error``; and an
  ``anthropic-version`` header, else 400 ``invalid_request_error``.
- ``google`` (``https://generativelanguage.googleapis.com``, under ``/v1beta`` and
  ``/v1``, the SDK's default): ``GET models``, ``GET models/M``, ``POST
  models/M:generateContent``, ``:streamGenerateContent`` (SSE with ``?alt=sse``, else
  a JSON array), ``:countTokens``.  Auth ``x-goog-api-key: KEY`` or ``?key=KEY``; as
  the real API does, a wrong key is 400 ``INVALID_ARGUMENT`` with an ``ErrorInfo``
  detail ``API_KEY_INVALID`` and a missing one 403 ``PERMISSION_DENIED``.

The answer is ``"echo: " + TEXT``, ``TEXT`` the last user message's text, cut to
``max_tokens`` (``max_completion_tokens``, ``maxOutputTokens``) words when set, with
the provider's "length" finish reason; streamed answers send one event per word.
Whitespace is normalised and a token is a whitespace-separated word: input tokens
are the words of every message (and system prompt), output tokens the answer's.
Any model name is accepted and echoed back.

Every request is recorded in ``seen`` (a :class:`Seen`); ``fail_next`` makes the next
requests fail in the provider's error shape (with ``Retry-After`` if asked), and
``stall_next`` makes the next stream stop after some events until ``resume()``.

In process::

    async with serve_provider("anthropic", key="k") as fake:
        client = AsyncAnthropic(base_url=fake.base_url, api_key="k")

As a process: ``python -m meshllm.testing.fake_providers --kind anthropic --key K
--port N`` prints ``listening URL``, ``base_url URL`` and ``ready``, and serves until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from meshllm.testing.app_server import AppServer

ECHO_PREFIX = "echo: "
EMBEDDING_DIM = 8
"""Length of an embedding vector unless the request asks for ``dimensions``."""
GEMINI_VERSIONS = ("v1beta", "v1")
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_BAD_JSON = object()
_BODY = web.RequestKey("body", Any)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One request a fake received; ``headers`` keys are lower-cased, ``body`` is the
    parsed JSON (``None`` when empty, the text when not JSON)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class _Failure:
    status: int
    message: str
    retry_after: float | None


class FakeProvider(AppServer):
    """A fake provider on ``host:port`` (``port=0``: any free port) accepting ``key``."""

    kind: ClassVar[str]
    default_models: ClassVar[tuple[str, ...]]
    api_prefix: ClassVar[str] = ""
    sse_separator: ClassVar[bytes] = b"\n\n"

    def __init__(
        self,
        key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] | None = None,
    ) -> None:
        self.key = key
        self.host = host
        self.port = port
        self.models = list(models or self.default_models)
        self.seen: list[Seen] = []
        """Every request received, oldest first."""
        self.stalled = 0
        """Streams that reached a ``stall_next`` point."""
        self._failures: list[_Failure] = []
        self._stalls: list[int] = []
        self._resume = asyncio.Event()
        self._ids = 0
        self._created = int(time.time())

    @property
    def base_url(self) -> str:
        """What the provider's SDK takes as ``base_url``."""
        return self.url + self.api_prefix

    def fail_next(
        self,
        status: int = 500,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` in the provider's error
        shape (``Retry-After: retry_after`` when given), before auth is checked."""
        text = message or f"fake failure {status}"
        self._failures += [_Failure(status, text, retry_after)] * count

    def stall_next(self, after: int = 1) -> None:
        """Make the next streamed answer stop after ``after`` events until ``resume()``
        (or ``stop()``), then go on."""
        self._stalls.append(after)

    def resume(self) -> None:
        """Let stalled streams go on."""
        self._resume.set()
        self._resume = asyncio.Event()

    async def stop(self) -> None:
        self.resume()
        await super().stop()

    def make_app(self) -> web.Application:
        """The aiohttp application: records, fails, checks auth, then routes."""
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        return app

    # --- provider hooks -----------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _check_auth(self, request: web.Request) -> web.Response | None:
        """An error answer when ``request`` is not authorised, else ``None``."""
        raise NotImplementedError

    def _error(self, status: int, message: str, **extra: Any) -> web.Response:
        """``message`` as an answer with ``status`` in the provider's error shape."""
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = _BAD_JSON
        headers = {k.lower(): v for k, v in request.headers.items()}
        shown = raw.decode(errors="replace") if body is _BAD_JSON else body
        self.seen.append(Seen(request.method, request.path, dict(request.query), headers, shown))
        if self._failures:
            failure = self._failures.pop(0)
            response = self._error(failure.status, failure.message)
            if failure.retry_after is not None:
                response.headers["Retry-After"] = f"{failure.retry_after:g}"
            return response
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if request.method == "POST" and not isinstance(body, dict):
            return self._error(400, "the request body is not a JSON object")
        request[_BODY] = body
        return await handler(request)

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:08d}"

    async def _stream(self, request: web.Request, events: Sequence[bytes]) -> web.StreamResponse:
        """Write ``events`` as an SSE answer, pausing where ``stall_next`` asked."""
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        stall_at = self._stalls.pop(0) if self._stalls else None
        for i, event in enumerate(events):
            if i == stall_at:
                self.stalled += 1
                await self._resume.wait()
            await response.write(event + self.sse_separator)
        await response.write_eof()
        return response


class FakeOpenAI(FakeProvider):
    """The OpenAI API (chat, completions, embeddings, models) under ``/v1``."""

    kind = "openai"
    default_models = ("gpt-4o-mini", "text-embedding-3-small")
    api_prefix = "/v1"
    _ERRORS: ClassVar[dict[int, tuple[str, str | None]]] = {
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        given = request.headers.get("Authorization", "")
        if not given:
            # OpenAI's answer to no key: same 401 and type, but code null.
            return self._error(401, "You didn't provide an API key.", code=None)
        if given != f"Bearer {self.key}":
            return self._error(401, "Incorrect API key provided.")
        return None

    def _error(self, status: int, message: str, **extra: Any) -> web.Response:
        default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        kind, code = self._ERRORS.get(status, default)
        error = {"message": message, "type": kind, "param": None, "code": code, **extra}
        return web.json_response({"error": error}, status=status)

    async def _list_models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "fake"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        messages = body.get("messages")
        if not isinstance(messages, list) or "model" not in body:
            name = "model" if "model" not in body else "messages"
            return self._missing(name)
        texts = [_text(m.get("content")) for m in messages if isinstance(m, dict)]
        user = [_text(m.get("content")) for m in messages if _role(m) == "user"]
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return await self._answer(request, texts, user[-1] if user else "", limit, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        if "model" not in body or "prompt" not in body:
            return self._missing("model" if "model" not in body else "prompt")
        prompt = body["prompt"]
        texts = [str(p) for p in prompt] if isinstance(prompt, list) else [str(prompt)]
        last = texts[-1] if texts else ""
        return await self._answer(request, texts, last, body.get("max_tokens"), chat=False)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        if "model" not in body or "input" not in body:
            return self._missing("model" if "model" not in body else "input")
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = body.get("dimensions") or EMBEDDING_DIM
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(items):
            vector: Any = _embed(str(item), dim)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(len(str(item).split()) for item in items)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    def _missing(self, name: str) -> web.Response:
        message = f"Missing required parameter: '{name}'."
        return self._error(400, message, param=name, code="missing_required_parameter")

    async def _answer(
        self, request: web.Request, texts: list[str], last: str, limit: Any, *, chat: bool
    ) -> web.StreamResponse:
        body = request[_BODY]
        words, cut = _reply(last, limit)
        prompt = _count(texts)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(words),
            "total_tokens": prompt + len(words),
        }
        finish = "length" if cut else "stop"
        head = {
            "id": self._next_id("chatcmpl-fake" if chat else "cmpl-fake"),
            "object": "chat.completion" if chat else "text_completion",
            "created": self._created,
            "model": body["model"],
            "system_fingerprint": None,
        }
        if not body.get("stream"):
            text = " ".join(words)
            if chat:
                message = {"role": "assistant", "content": text, "refusal": None}
                choice: dict[str, Any] = {"index": 0, "message": message}
            else:
                choice = {"index": 0, "text": text}
            choice |= {"logprobs": None, "finish_reason": finish}
            return web.json_response({**head, "choices": [choice], "usage": usage})
        if chat:
            head["object"] = "chat.completion.chunk"
        options = body.get("stream_options") or {}
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {**head, "choices": choices, **extra}
            if with_usage:
                payload.setdefault("usage", None)
            return _sse_data(payload)

        def choice_of(piece: str | None, finish_reason: str | None) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": piece or "", "finish_reason": finish_reason}
            delta = {} if piece is None else {"content": piece}
            return {"index": 0, "delta": delta, "finish_reason": finish_reason}

        events = []
        if chat:
            start = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            events.append(chunk([start | {"finish_reason": None}]))
        events += [chunk([choice_of(piece, None)]) for piece in _pieces(words)]
        events.append(chunk([choice_of(None, finish)]))
        if with_usage:
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]")
        return await self._stream(request, events)


class FakeAnthropic(FakeProvider):
    """The Anthropic Messages API (``/v1/messages``, ``/v1/messages/count_tokens``)."""

    kind = "anthropic"
    default_models = ("claude-sonnet-4-5",)
    _ERRORS: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        # anthropic>=2 sends the key as "Authorization: Bearer KEY", older ones x-api-key.
        bearer = request.headers.get("Authorization") == f"Bearer {self.key}"
        if request.headers.get("x-api-key") != self.key and not bearer:
            return self._error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        return None

    def _error(self, status: int, message: str, **extra: Any) -> web.Response:
        kind = self._ERRORS.get(status, "api_error")
        error = {"type": kind, "message": message, **extra}
        return web.json_response({"type": "error", "error": error}, status=status)

    def _invalid(self, body: dict[str, Any], required: Sequence[str]) -> web.Response | None:
        for name in required:
            if name not in body:
                return self._error(400, f"{name}: Field required")
        if not isinstance(body["messages"], list):
            return self._error(400, "messages: Input should be a valid list")
        return None

    def _input_tokens(self, body: dict[str, Any]) -> int:
        texts = [_text(body.get("system"))]
        texts += [_text(m.get("content")) for m in body["messages"] if isinstance(m, dict)]
        return _count(texts)

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body = request[_BODY]
        invalid = self._invalid(body, ("model", "messages"))
        if invalid is not None:
            return invalid
        return web.json_response({"input_tokens": self._input_tokens(body)})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        invalid = self._invalid(body, ("model", "max_tokens", "messages"))
        if invalid is not None:
            return invalid
        user = [_text(m.get("content")) for m in body["messages"] if _role(m) == "user"]
        words, cut = _reply(user[-1] if user else "", body["max_tokens"])
        stop_reason = "max_tokens" if cut else "end_turn"
        usage = {"input_tokens": self._input_tokens(body), "output_tokens": len(words)}
        message = {
            "id": self._next_id("msg_fake"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": " ".join(words)}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(message)
        # The event sequence of https://docs.anthropic.com/en/api/messages-streaming.
        start = message | {
            "content": [],
            "stop_reason": None,
            "usage": usage | {"output_tokens": 1},
        }
        events = [
            _event("message_start", {"message": start}),
            _event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            _event("ping", {}),
        ]
        for piece in _pieces(words):
            delta = {"type": "text_delta", "text": piece}
            events.append(_event("content_block_delta", {"index": 0, "delta": delta}))
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        events += [
            _event("content_block_stop", {"index": 0}),
            _event("message_delta", {"delta": delta, "usage": {"output_tokens": len(words)}}),
            _event("message_stop", {}),
        ]
        return await self._stream(request, events)


class FakeGoogle(FakeProvider):
    """The Gemini API (``generativelanguage.googleapis.com``), under ``/v1beta`` and
    ``/v1``."""

    kind = "google"
    default_models = ("gemini-2.5-flash",)
    sse_separator = b"\r\n\r\n"  # what the real streamGenerateContent?alt=sse sends
    _STATUSES: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    def _add_routes(self, app: web.Application) -> None:
        for version in GEMINI_VERSIONS:
            app.router.add_get(f"/{version}/models", self._list_models)
            # aiohttp cannot put a variable before ':'; split "{model}:{method}" by hand.
            app.router.add_get(f"/{version}/models/{{target}}", self._get_model)
            app.router.add_post(f"/{version}/models/{{target}}", self._call)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not given:
            message = "Method doesn't allow unregistered callers. Please use API Key."
            return self._error(403, message)
        if given != self.key:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
            return self._error(
                400, "API key not valid. Please pass a valid API key.", details=[info]
            )
        return None

    def _error(self, status: int, message: str, **extra: Any) -> web.Response:
        state = self._STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        error = {"code": status, "message": message, "status": state, **extra}
        return web.json_response({"error": error}, status=status)

    def _model_info(self, name: str) -> dict[str, Any]:
        return {
            "name": f"models/{name}",
            "version": "001",
            "displayName": name,
            "inputTokenLimit": 1_048_576,
            "outputTokenLimit": 65_536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }

    async def _list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self._model_info(m) for m in self.models]})

    async def _get_model(self, request: web.Request) -> web.Response:
        return web.json_response(self._model_info(request.match_info["target"]))

    async def _call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        body = request[_BODY]
        if method == "countTokens":
            inner = body.get("generateContentRequest") or body
            return web.json_response({"totalTokens": self._prompt_tokens(inner)})
        if method not in ("generateContent", "streamGenerateContent"):
            return self._error(404, f"method {method!r} is not found")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return self._error(400, "* GenerateContentRequest.contents: contents is not specified")
        user = [_text(c.get("parts")) for c in contents if _role(c, "user") == "user"]
        config = body.get("generationConfig") or {}
        words, cut = _reply(user[-1] if user else "", config.get("maxOutputTokens"))
        prompt = self._prompt_tokens(body)
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": len(words),
            "totalTokenCount": prompt + len(words),
        }
        finish = "MAX_TOKENS" if cut else "STOP"
        tail = {"modelVersion": model, "responseId": self._next_id("fake")}

        def answer(text: str, last: bool) -> dict[str, Any]:
            """A GenerateContentResponse; the last one has finishReason and usage."""
            content = {"role": "model", "parts": [{"text": text}]}
            candidate: dict[str, Any] = {"content": content, "index": 0}
            if not last:
                return {"candidates": [candidate], **tail}
            candidate["finishReason"] = finish
            return {"candidates": [candidate], "usageMetadata": usage, **tail}

        if method == "generateContent":
            return web.json_response(answer(" ".join(words), last=True))
        pieces = _pieces(words) or [""]
        chunks = [answer(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]
        if request.query.get("alt") != "sse":  # without alt=sse: one JSON array
            return web.json_response(chunks)
        return await self._stream(request, [_sse_data(c) for c in chunks])

    def _prompt_tokens(self, body: dict[str, Any]) -> int:
        contents = body.get("contents") or []
        if not isinstance(contents, list):
            contents = [contents]
        system = body.get("systemInstruction") or {}
        texts = [_text(c.get("parts")) for c in [system, *contents] if isinstance(c, dict)]
        return _count(texts)


PROVIDERS: dict[str, type[FakeProvider]] = {
    cls.kind: cls for cls in (FakeOpenAI, FakeAnthropic, FakeGoogle)
}
"""The fake for each provider kind."""


@contextlib.asynccontextmanager
async def serve_provider(
    kind: str,
    key: str,
    host: str = "127.0.0.1",
    port: int = 0,
    models: Sequence[str] | None = None,
) -> AsyncIterator[FakeProvider]:
    """Serve the fake ``kind`` provider (``openai``, ``anthropic``, ``google``) for the
    ``async with`` block."""
    if kind not in PROVIDERS:
        raise ValueError(f"unknown provider kind {kind!r}; expected one of {sorted(PROVIDERS)}")
    async with PROVIDERS[kind](key, host=host, port=port, models=models) as provider:
        yield provider


# --- helpers ----------------------------------------------------------------------------


def _role(message: Any, default: str = "") -> str:
    return str(message.get("role", default)) if isinstance(message, dict) else ""


def _text(content: Any) -> str:
    """The text of a string, or of a list of text parts (``{"type": "text", "text"}`` or
    Gemini's ``{"text"}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict)
            and isinstance(p.get("text"), str)
            and p.get("type", "text") == "text"
        )
    return ""


def _count(texts: Sequence[str]) -> int:
    """Tokens in ``texts``: whitespace-separated words."""
    return sum(len(t.split()) for t in texts)


def _reply(text: str, limit: Any) -> tuple[list[str], bool]:
    """The answer's words (``echo: TEXT``), cut to ``limit`` words; and whether cut."""
    words = (ECHO_PREFIX + text).split()
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(words):
        return words[:limit], True
    return words, False


def _pieces(words: list[str]) -> list[str]:
    """One streamed piece per word, spaced so that they join back to the answer."""
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


def _embed(text: str, dim: int) -> list[float]:
    """A deterministic vector for ``text``, float32-exact."""
    digest = b"".join(hashlib.sha256(f"{i}:{text}".encode()).digest() for i in range(-(-dim // 16)))
    return [v / 65536.0 for v in struct.unpack(f">{dim}H", digest[: 2 * dim])]


def _sse_data(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode()


def _event(name: str, payload: dict[str, Any]) -> bytes:
    """An Anthropic SSE event: its ``event:`` line, and a ``data:`` with its ``type``."""
    return f"event: {name}\n".encode() + _sse_data({"type": name, **payload})


async def _serve(args: argparse.Namespace) -> None:
    provider = PROVIDERS[args.kind](args.key, host=args.host, port=args.port, models=args.model)
    await provider.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # "listening ROOT" and "ready" are what cluster.BackendProcess waits for.
    print(f"listening {provider.url}\nbase_url {provider.base_url}\nready", flush=True)
    try:
        await stop.wait()
    finally:
        await provider.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: run one fake provider until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic/Google LLM API.")
    parser.add_argument("--kind", choices=sorted(PROVIDERS), required=True)
    parser.add_argument("--key", required=True, help="the API key it accepts")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--model", action="append", help="model to list (repeatable)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
