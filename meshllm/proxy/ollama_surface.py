"""Ollama's API on the node: ``/api/chat``, ``/api/generate``, ``/api/embed`` and
``/api/embeddings`` through the mesh (translated by :mod:`meshllm.surfaces.ollama`,
streams as NDJSON), and its listings ``GET /api/tags``, ``GET /api/ps``,
``POST /api/show`` and ``GET /api/version`` from the mesh's catalog.

Ollama names models ``name:tag``; a name the mesh has with ``:latest`` added or taken
away is the same model.  A request naming no known model is 404, as Ollama answers
(its clients pull then); errors are ``{"error": "…"}``.  A chat or generate with no
prompt loads the model: it is asked for one token (so its ``keep_alive`` reaches the
serving node as any request's: 0 unloads it once idle) and answers ``done_reason``
``"load"`` or ``"unload"``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from aiohttp import web

from meshllm import __version__
from meshllm.surfaces import ollama

Kind = Literal["chat", "generate", "embed", "embeddings"]
NDJSON_HEADERS = {
    "Content-Type": "application/x-ndjson",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
SURFACE_PATHS: dict[str, Kind] = {
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embeddings",
}


class OllamaAnswer:
    """One answer to an Ollama client."""

    stream_headers = NDJSON_HEADERS

    def __init__(self, kind: Kind, model: str, started: float) -> None:
        self._kind, self._model, self._started = kind, model, started
        stream_kind: Literal["chat", "generate"] = "chat" if kind == "chat" else "generate"
        self._stream = ollama.StreamTranslator(stream_kind, model)

    def progress(self, line: str) -> bytes:
        return b""  # NDJSON has no comments: a waiting client sees nothing until its answer

    def events(self, data: bytes, now: float) -> bytes:
        return self._stream.feed(data, time.time())

    def end(self, now: float) -> bytes:
        return self._stream.end(time.time(), now - self._started)

    def body(self, data: bytes, now: float) -> bytes:
        try:
            openai = json.loads(data)
        except (ValueError, RecursionError):
            raise ValueError("not JSON") from None
        total = now - self._started
        if self._kind == "chat":
            answer = ollama.chat_answer(openai, self._model, time.time(), total)
        elif self._kind == "generate":
            answer = ollama.generate_answer(openai, self._model, time.time(), total)
        elif self._kind == "embed":
            answer = ollama.embed_answer(openai, self._model, total)
        else:
            answer = ollama.legacy_embeddings_answer(openai)
        return json.dumps(answer, separators=(",", ":")).encode()

    def error_event(self, message: str, code: str) -> bytes:
        return json.dumps(ollama.error_body(message)).encode() + b"\n"


class OllamaSurface:
    """One of Ollama's inference routes (always translated: an Ollama endpoint's model
    is reached through its OpenAI-compatible API like any other)."""

    fallback = False
    native = None

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def translate(
        self, path: str, payload: dict[str, Any], known: Iterable[str]
    ) -> tuple[str, dict[str, Any]]:
        name = payload.get("model")
        if isinstance(name, str):
            payload = {**payload, "model": ollama.resolve_name(name, known) or name}
        if self.kind == "chat":
            body, upstream = ollama.chat_request(payload), "/v1/chat/completions"
        elif self.kind == "generate":
            upstream, body = ollama.generate_request(payload)
        elif self.kind == "embed":
            body, upstream = ollama.embed_request(payload), "/v1/embeddings"
        else:
            body, upstream = ollama.legacy_embeddings_request(payload), "/v1/embeddings"
        if ollama.is_load(body):
            return "", body  # load only: asked for one token, answered by loaded()
        return upstream, body

    def answer(self, model: str, stream: bool) -> OllamaAnswer:
        return OllamaAnswer(self.kind, model, asyncio.get_running_loop().time())

    def loaded(self, model: str, keep_alive: Any) -> web.Response:
        """The answer to a load request once ``model`` answered it (its keep_alive set
        on the serving node, as any request's: 0 unloads it once idle)."""
        return web.json_response(ollama.load_answer(self.kind, model, keep_alive, time.time()))

    def error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        return web.json_response(ollama.error_body(message), status=status, headers=headers)


SURFACES = {path: OllamaSurface(kind) for path, kind in SURFACE_PATHS.items()}


class OllamaCatalog:
    """What Ollama's listings read of the mesh: the catalog with each model's state."""

    def __init__(self, catalog: Any) -> None:
        """``catalog()``: the proxy's catalog entries (``model``, ``size_bytes``,
        ``sha256``, ``pool``: each node's state and TTL)."""
        self._catalog = catalog

    def models(self) -> list[ollama.LocalModel]:
        return [_local(entry) for entry in self._catalog()]

    def loaded(self) -> list[ollama.LoadedModel]:
        loaded, now = [], time.time()
        for entry in self._catalog():
            if entry.get("state") == "cloud":
                continue  # reached at its provider, never loaded in the mesh
            hot = [n for n in entry.get("pool", ()) if n.get("state") in ("hot", "cooling")]
            if hot or entry.get("warm"):
                left = [n["seconds_left"] for n in hot if _is_seconds(n.get("seconds_left"))]
                size = int(entry.get("size_bytes") or 0)
                expires = now + max(left) if left else None
                loaded.append(ollama.LoadedModel(entry["model"], size, 0, expires))
        return loaded


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _local(entry: Mapping[str, Any]) -> ollama.LocalModel:
    return ollama.LocalModel(
        name=entry["model"],
        size=int(entry.get("size_bytes") or 0),
        sha256=entry.get("sha256") or "",
        family=entry.get("family") or "",
        quantization=entry.get("quantization") or "",
        parameter_size="",
        modified_at=0.0,
    )


CATALOG_KEY = web.AppKey("ollama_catalog", OllamaCatalog)


def add_ollama_listings(app: web.Application, catalog: OllamaCatalog) -> None:
    """Register ``GET /api/tags``, ``GET /api/ps``, ``POST /api/show``, ``GET /api/version``."""
    app[CATALOG_KEY] = catalog
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/version", version)


async def tags(request: web.Request) -> web.Response:
    return web.json_response(ollama.tags(request.app[CATALOG_KEY].models()))


async def ps(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG_KEY]
    return web.json_response(ollama.ps(catalog.loaded(), catalog.models()))


async def show(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        return web.json_response(ollama.error_body("body is not JSON"), status=400)
    name = body.get("model") or body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return web.json_response(ollama.error_body('body must be {"model": NAME}'), status=400)
    models = {m.name: m for m in request.app[CATALOG_KEY].models()}
    resolved = ollama.resolve_name(name, models)
    if resolved is None:
        return web.json_response(ollama.error_body(f"model '{name}' not found"), status=404)
    return web.json_response(ollama.show(models[resolved]))


async def version(request: web.Request) -> web.Response:
    return web.json_response(ollama.version(__version__))
