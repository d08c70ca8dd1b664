"""Cloud providers as this node's backends: requests in OpenAI's shape, answers back in it.

:class:`CloudBackends` is a :class:`~meshllm.proxy.forward.LocalBackends` for models
named ``provider:name``.  Whatever API the client spoke, the request reaches it as
OpenAI chat completions (the entry node translated Ollama's or Anthropic's surface),
and goes on:

* ``openai:``: to OpenAI's API as it is, the prefix stripped from ``model`` and put
  back on the answer; a stream always asks for its usage (the records price it), and
  when the client did not ask, the usage rides on the finish chunk instead of a chunk
  of its own that a naive client would trip on;
* ``anthropic:``: translated to the Messages API (``POST /v1/messages``) and back,
  streaming included (:mod:`meshllm.surfaces.anthropic`); a request that came in
  Anthropic's own API (the proxy sends it as it is, to ``/v1/messages``) goes on
  untranslated, with the client's ``anthropic-version`` and ``anthropic-beta``;
* ``google:``: translated to Gemini's ``generateContent`` (``streamGenerateContent``
  with ``alt=sse`` for a stream) and back (:mod:`meshllm.surfaces.gemini`).

Only the JSON body, its type and the provider's auth header go to a provider: none of
the client's headers (nor the mesh's ids, nor its key).  A provider is a remote
server: its answer is read within the node's timeouts, a non-streamed one up to
``max_answer_bytes``.  Its errors come back in OpenAI's shape with the status that
tells the client what to do: its 4xx as they are (429 with its ``Retry-After``), its
5xx as 502 (529 "overloaded" as 503).  A 401 or 403 (Gemini: a 400 whose reason is
``API_KEY_INVALID``) means this node's key is refused:
the provider is announced ``refused`` for ``refused_retry_s`` and the request raises
:class:`~meshllm.proxy.errors.BackendUnavailable`, so the proxy tries another node
that holds a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

from meshllm.cloud import REFUSED, UP, Provider, split_model
from meshllm.errors import ServingError
from meshllm.proxy.errors import BackendUnavailable, error_body, sse_error_event
from meshllm.proxy.forward import Forwarder, UpstreamResponse, is_event_stream
from meshllm.surfaces import anthropic, gemini
from meshllm.surfaces.sse import EventTranslator

log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"  # Anthropic's, from an Anthropic client: passed on as it is
COUNT_TOKENS = "/v1/messages/count_tokens"  # likewise
OPENAI_PATHS = frozenset({CHAT, "/v1/completions", "/v1/embeddings"})
"""What OpenAI's API takes through the mesh; Anthropic's and Google's models take chat."""
ANTHROPIC_VERSION = "2023-06-01"  # the Messages API version this translation speaks
CONNECT_TIMEOUT_S = 10.0  # to a provider's API (TLS over the internet)
READ_TIMEOUT_S = 600.0  # silence between two reads; a non-streamed answer is silent until done
MAX_ANSWER_BYTES = 16 << 20  # a provider's non-streamed answer or error body, at most
REFUSED_RETRY_S = 300.0  # a key a provider refused is tried again after this long
MAX_MESSAGE_CHARS = 2000  # of a provider's error message passed on
_RETRY_HEADERS = ("retry-after", "retry-after-ms")
_ANTHROPIC_HEADERS = frozenset({"anthropic-version", "anthropic-beta"})
_GOOGLE_BAD_KEY = b'"API_KEY_INVALID"'  # Gemini's reason for a wrong key, sent with a 400


class StreamTranslator(Protocol):
    """Turns a provider's SSE into OpenAI's, piece by piece."""

    def feed(self, sse_bytes: bytes) -> bytes: ...

    def end(self) -> bytes: ...


class CloudBackends:
    """The cloud providers this node holds keys for (implements ``LocalBackends``)."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        refused_retry_s: float = REFUSED_RETRY_S,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_change`` is called when :meth:`states` changes (a key refused, or its
        refusal over), for the node to announce it."""
        self.providers = dict(providers)
        self._max_answer = max_answer_bytes
        self._refused_retry = refused_retry_s
        self._on_change = on_change
        self._refused_until: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._forwarder = Forwarder(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            backend_model=lambda model: (split_model(model) or ("", model))[1],
        )

    def states(self) -> dict[str, str]:
        """``provider -> "up" | "refused"``, for this node's announcement."""
        now = time.monotonic()
        return {
            name: REFUSED if self._refused_until.get(name, 0.0) > now else UP
            for name in sorted(self.providers)
        }

    def serves(self, model: str) -> bool:
        return self._held(model) is not None

    def _held(self, model: str) -> tuple[Provider, str] | None:
        """The provider of ``model`` and its name there, if this node holds its key."""
        try:
            split = split_model(model)
        except ValueError:
            return None
        if split is None or split[0] not in self.providers:
            return None
        return self.providers[split[0]], split[1]

    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, *, model: str
    ) -> UpstreamResponse | TranslatedResponse | StaticResponse:
        held = self._held(model)
        if held is None:
            raise BackendUnavailable(f"{model!r} is not served here")
        provider, upstream = held
        path = path.split("?", 1)[0]
        if method != "POST":
            return StaticResponse.error(405, f"{method} is not forwarded to {provider.name}")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            return StaticResponse.error(400, "request body is not a JSON object")
        if provider.name == "openai":
            return await self._openai(provider, path, payload, model)
        if provider.name == "anthropic" and path in (MESSAGES, COUNT_TOKENS):
            return await self._anthropic_native(provider, path, headers, payload, model)
        if path != CHAT:
            return StaticResponse.error(
                400, f"{provider.name} models answer chat completions ({CHAT}) here, not {path}"
            )
        try:
            if provider.name == "anthropic":
                return await self._anthropic(provider, payload, model, upstream)
            return await self._google(provider, payload, model, upstream)
        except ValueError as exc:  # the request cannot be said in the provider's API
            return StaticResponse.error(400, str(exc))

    async def close(self) -> None:
        """Close the pooled connections and the refusal timers."""
        for timer in self._timers.values():
            timer.cancel()
        await self._forwarder.close()

    # -- per provider ---------------------------------------------------------------

    async def _openai(
        self, provider: Provider, path: str, payload: dict, model: str
    ) -> UpstreamResponse | TranslatedResponse | StaticResponse:
        if path not in OPENAI_PATHS:
            return StaticResponse.error(404, f"{path} is not forwarded to openai")
        stream = payload.get("stream") is True
        options = payload.get("stream_options")
        options = options if isinstance(options, dict) else {}
        wants_usage = options.get("include_usage") is True
        if stream and path != "/v1/embeddings":
            payload["stream_options"] = {**options, "include_usage": True}
        auth = {"Authorization": f"Bearer {provider.api_key}"}
        upstream = await self._send(provider, path, payload, auth, model=model)
        if upstream.status >= 400:
            return await self._refusal(provider, upstream)
        if stream and not wants_usage and is_event_stream(upstream.headers):
            return TranslatedResponse(upstream, UsageFolder(), None, self._max_answer)
        return upstream

    async def _anthropic_native(
        self,
        provider: Provider,
        path: str,
        headers: Mapping[str, str],
        payload: dict,
        model: str,
    ) -> UpstreamResponse:
        """A request from an Anthropic client (Messages, or its token count): on as it
        is (the client's API version and betas with it), the answer back as it is."""
        sent = {k.lower(): v for k, v in headers.items() if k.lower() in _ANTHROPIC_HEADERS}
        version = sent.pop("anthropic-version", ANTHROPIC_VERSION)
        auth = {"x-api-key": provider.api_key, "anthropic-version": version}
        if path == COUNT_TOKENS:
            payload.pop("stream", None)  # the mesh's own field: Anthropic refuses it here
        upstream = await self._send(provider, path, payload, {**sent, **auth}, model=model)
        if upstream.status in (401, 403):
            await self._refusal(provider, upstream)  # raises: another holder's key may do
        return upstream

    async def _anthropic(
        self, provider: Provider, payload: dict, model: str, upstream_name: str
    ) -> TranslatedResponse | StaticResponse:
        request = anthropic.openai_to_messages(payload, upstream_name)
        headers = {"x-api-key": provider.api_key, "anthropic-version": ANTHROPIC_VERSION}
        upstream = await self._send(provider, MESSAGES, request, headers)
        if upstream.status >= 400:
            return await self._refusal(provider, upstream)
        completion_id, created = _completion_id(), int(time.time())
        return TranslatedResponse(
            upstream,
            anthropic.AnthropicToOpenAIStream(model, completion_id, created),
            lambda answer: anthropic.messages_to_openai(answer, model, created),
            self._max_answer,
        )

    async def _google(
        self, provider: Provider, payload: dict, model: str, upstream_name: str
    ) -> TranslatedResponse | StaticResponse:
        request = gemini.openai_to_gemini(payload)
        stream = payload.get("stream") is True
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        path = f"/v1beta/models/{quote(upstream_name, safe='')}:{action}"
        auth = {"x-goog-api-key": provider.api_key}
        upstream = await self._send(provider, path, request, auth)
        if upstream.status >= 400:
            return await self._refusal(provider, upstream)
        completion_id, created = _completion_id(), int(time.time())
        options = payload.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        return TranslatedResponse(
            upstream,
            gemini.GeminiToOpenAIStream(model, completion_id, created, include_usage=usage),
            lambda answer: gemini.gemini_to_openai(answer, model, created, completion_id),
            self._max_answer,
        )

    # -- shared ---------------------------------------------------------------------

    async def _send(
        self,
        provider: Provider,
        path: str,
        payload: dict,
        auth: Mapping[str, str],
        *,
        model: str | None = None,
    ) -> UpstreamResponse:
        try:
            body = json.dumps(payload, separators=(",", ":")).encode()
        except (TypeError, ValueError, RecursionError):
            raise BackendUnavailable("request body cannot be encoded again") from None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        return await self._forwarder.forward(
            provider.base_url, "POST", path, headers, body, model=model, auth=auth
        )

    async def _refusal(self, provider: Provider, upstream: UpstreamResponse) -> StaticResponse:
        """A provider's error answer in OpenAI's shape; raises BackendUnavailable when it
        refused this node's key (another node's may do)."""
        try:
            body = await _read_bounded(upstream, self._max_answer)
        except ServingError:
            body = b""
        finally:
            upstream.close()
        status = upstream.status
        message = f"{provider.name}: {_provider_message(body) or f'HTTP {status}'}"
        if status in (401, 403) or (status == 400 and _GOOGLE_BAD_KEY in body):
            self._refuse(provider.name)
            raise BackendUnavailable(f"{message} (this node's {provider.name} key was refused)")
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in _RETRY_HEADERS}
        if status == 529 or status == 503:
            status = 503
        elif status >= 500 or status < 400:
            status = 502
        return StaticResponse.error(status, message, headers=headers)

    def _refuse(self, name: str) -> None:
        was_up = self.states().get(name) == UP
        self._refused_until[name] = time.monotonic() + self._refused_retry
        log.warning("%s refused this node's API key; refused for %g s", name, self._refused_retry)
        if was_up:
            old = self._timers.pop(name, None)
            if old is not None:
                old.cancel()
            loop = asyncio.get_running_loop()
            self._timers[name] = loop.call_later(self._refused_retry, self._on_change)
            self._on_change()


class StaticResponse:
    """An answer made here (implements ``ProxiedResponse``)."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.headers = dict(headers)
        self._body = body

    @classmethod
    def error(
        cls, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> StaticResponse:
        """OpenAI's error body for ``status``."""
        body = json.dumps(error_body(message[:MAX_MESSAGE_CHARS], status)).encode()
        return cls(status, body, {**(headers or {}), "Content-Type": "application/json"})

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        pass


class TranslatedResponse:
    """A provider's successful answer, in OpenAI's shape (implements ``ProxiedResponse``):
    a stream through ``stream``, a JSON answer through ``translate`` (None: as it is)."""

    def __init__(
        self,
        upstream: UpstreamResponse,
        stream: StreamTranslator,
        translate: Callable[[Any], dict] | None,
        max_bytes: int,
    ) -> None:
        self._upstream = upstream
        self._streamed = is_event_stream(upstream.headers)
        self._stream, self._translate, self._max = stream, translate, max_bytes
        self.status = upstream.status
        media = "text/event-stream" if self._streamed else "application/json"
        self.headers: dict[str, str] = {"Content-Type": media}
        if self._streamed:
            self.headers["Cache-Control"] = "no-cache"

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._streamed:
            async for chunk in self._upstream.iter_chunks():
                if out := self._stream.feed(chunk):
                    yield out
            if out := self._stream.end():
                yield out
            return
        body = await _read_bounded(self._upstream, self._max)
        if self._translate is None:
            yield body
            return
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            answer = {}
        yield json.dumps(self._translate(answer), separators=(",", ":")).encode()

    def close(self) -> None:
        self._upstream.close()


class UsageFolder(EventTranslator):
    """OpenAI's stream with the usage-only chunk (``choices: []``) folded into the finish
    chunk before it: for a client that did not ask for usage (``include_usage``)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        super().__init__(MAX_ANSWER_BYTES)
        self._held: dict | None = None  # the finish chunk, until the usage chunk comes

    def end(self) -> bytes:
        out: list[bytes] = []
        self._flush(out)
        out.append(self._release(None))
        return b"".join(out)

    def _oversized(self) -> bytes:
        return sse_error_event("upstream sent an oversized event")

    def _event(self, event: bytes, out: list[bytes]) -> None:
        data = event[5:].strip() if event.startswith(b"data:") else b""
        chunk = None
        finishing = b'"finish_reason"' in data and b'"finish_reason":null' not in data
        if data and data != b"[DONE]" and (finishing or b'"usage"' in data):
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):
                chunk = None
        if isinstance(chunk, dict) and chunk.get("choices") == [] and "usage" in chunk:
            out.append(self._release(chunk.get("usage")))
            return
        if isinstance(chunk, dict) and _finishes(chunk) and self._held is None:
            self._held = chunk
            return
        if self._held is not None:
            out.append(self._release(None))
        out.append(event + b"\n\n")

    def _release(self, usage: Any) -> bytes:
        held, self._held = self._held, None
        if held is None:
            return b""
        if usage is not None:
            held["usage"] = usage
        return b"data: " + json.dumps(held, separators=(",", ":")).encode() + b"\n\n"


def _finishes(chunk: dict) -> bool:
    choices = chunk.get("choices")
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") for c in choices
    )


async def _read_bounded(upstream: UpstreamResponse, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in upstream.iter_chunks():
        size += len(chunk)
        if size > max_bytes:
            raise ServingError(f"provider's answer is over {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _provider_message(body: bytes) -> str:
    """The message of a provider's error body: ``error.message`` in all three APIs
    (Anthropic nests it under ``{"type": "error", "error": ...}`` the same way)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body[:MAX_MESSAGE_CHARS].decode("utf-8", "replace").strip()
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return message[:MAX_MESSAGE_CHARS] if isinstance(message, str) else ""


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)
