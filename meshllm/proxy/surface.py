"""The APIs a node answers in (OpenAI's, Ollama's, Anthropic's): how a request in one of
them is put to the mesh, which speaks OpenAI's, and how the answer is put back.

A :class:`Surface` turns a client's parsed body into the OpenAI path and body the mesh
routes (:meth:`Surface.translate`), shapes errors as its clients expect, and makes one
:class:`Answer` per request, which rewrites the OpenAI answer as it goes by: whole for
a JSON answer, event by event for a stream.  OpenAI's own surface changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from meshllm.proxy.errors import error_response, sse_error_event

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Answer(Protocol):
    """One answer on its way back to a client of a surface."""

    stream_headers: Mapping[str, str]
    """The headers of a streamed answer (its content type)."""

    def progress(self, line: str) -> bytes:
        """What a stream waiting for its model sends meanwhile (b"": nothing)."""
        ...

    def events(self, data: bytes, now: float) -> bytes:
        """Whole OpenAI SSE events, as this surface's client reads them."""
        ...

    def end(self, now: float) -> bytes:
        """What follows the last event (a closing line, a ``done`` object)."""
        ...

    def body(self, data: bytes, now: float) -> bytes:
        """A whole JSON answer (2xx), rewritten; raises ValueError when it is not one."""
        ...

    def error_event(self, message: str, code: str) -> bytes:
        """An error that ends a stream whose head is out."""
        ...


@dataclass(frozen=True, slots=True)
class Native:
    """A surface's route on a backend that speaks its API: the client's body goes to
    ``path`` untranslated, and the answer back through ``answer()``, as it is."""

    path: str
    answer: Callable[[], Answer]


class Surface(Protocol):
    """An API a node answers in."""

    fallback: bool
    """Whether a request for a model the mesh does not know goes to another model
    (OpenAI's, as mesh-llm does) or is refused (404)."""

    native: Native | None
    """How a backend that speaks this API itself takes it (llama-server's own
    ``/v1/messages``); None: always translated."""

    def translate(
        self, path: str, payload: dict[str, Any], known: Iterable[str]
    ) -> tuple[str, dict[str, Any]]:
        """The OpenAI path and body for a request to ``path`` (``known``: the catalog's
        model names, for surfaces that name models their own way).  Raises ValueError."""
        ...

    def answer(self, model: str, stream: bool) -> Answer:
        """The rewriter of one answer for ``model``."""
        ...

    def error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """An error response as this surface's clients read them."""
        ...


class OpenAIAnswer:
    """An OpenAI answer to an OpenAI client: as it is."""

    stream_headers = SSE_HEADERS

    def progress(self, line: str) -> bytes:
        return f": {line}\n\n".encode()

    def events(self, data: bytes, now: float) -> bytes:
        return data

    def end(self, now: float) -> bytes:
        return b""

    def body(self, data: bytes, now: float) -> bytes:
        return data

    def error_event(self, message: str, code: str) -> bytes:
        return sse_error_event(message, code)


_AS_IS = OpenAIAnswer()


class OpenAISurface:
    """OpenAI's API: nothing to translate."""

    fallback = True
    native = None

    def translate(
        self, path: str, payload: dict[str, Any], known: Iterable[str]
    ) -> tuple[str, dict[str, Any]]:
        return path, payload

    def answer(self, model: str, stream: bool) -> Answer:
        return _AS_IS

    def error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        return error_response(status, message, code, headers=headers)


OPENAI = OpenAISurface()
