"""A small fake Ollama server, for tests of external endpoints.

Routes, shaped as Ollama's API (``docs/api.md``) describes them:

- ``GET /`` → ``Ollama is running``; ``GET /api/version`` → ``{"version"}``
- ``GET /api/tags`` → ``{"models": [{"name", "model", "modified_at", "size", "digest",
  "details": {"format", "family", "families", "parameter_size", "quantization_level"}}]}``
- ``GET /api/ps`` → the loaded models, the same plus ``expires_at`` and ``size_vram``
- ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain JSON, or SSE with
  ``"stream": true``): Ollama's OpenAI-compatible API
- ``POST /api/chat``: Ollama's own chat, NDJSON unless ``"stream": false``

The answer is ``"[MODEL] TEXT"``, ``TEXT`` the last user message.  A chat loads
its model (it shows in ``/api/ps`` afterwards; ``"keep_alive": 0`` unloads it);
``warm`` loads some from the start.  An unknown model is a 404, as in Ollama.
With ``require_key`` every route but ``/`` answers 401 without
``Authorization: Bearer KEY``.

In process::

    async with FakeOllama(models=["llama3.2:latest"]) as server:
        url = server.url  # "http://127.0.0.1:PORT"

``stop()`` then ``start()`` listens again on the same port (a server that restarts).

As a process: ``python -m meshllm.testing.fake_ollama --port N --model NAME
[--warm NAME] [--require-key KEY]`` prints ``listening URL`` then ``ready``,
and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

from meshllm.testing.app_server import AppServer

_VERSION = "0.6.0-fake"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_MODIFIED_AT = "2025-01-01T00:00:00Z"
_EXPIRES_AT = "2099-01-01T00:00:00Z"


class FakeOllama(AppServer):
    """An in-process fake Ollama on ``host:port`` (``port=0``: any free port)."""

    def __init__(
        self,
        models: Sequence[str] = ("llama3.2:latest",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        warm: Iterable[str] = (),
        require_key: str | None = None,
        chunks: int = 3,
    ) -> None:
        if not models:
            raise ValueError("FakeOllama needs at least one model")
        self.models = list(models)
        self.host = host
        self.port = port
        self.loaded: set[str] = set(warm)
        """Models shown by ``/api/ps``; a chat adds its model."""
        self.require_key = require_key
        self.chunks = chunks
        self.requests: list[str] = []
        """``METHOD PATH`` of every request, in order."""
        self.last_headers: dict[str, str] = {}
        """The headers of the last request."""
        self._ids = 0

    def make_app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_get("/v1/models", self._openai_models)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/api/chat", self._chat)
        return app

    # --- handlers -----------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        self.last_headers = dict(request.headers)
        given = request.headers.get("Authorization")
        if self.require_key and request.path != "/" and given != f"Bearer {self.require_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": _VERSION})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [_tag(m) for m in self.models]})

    async def _ps(self, request: web.Request) -> web.Response:
        running = []
        for model in self.models:
            if model in self.loaded:
                entry = _tag(model)
                del entry["modified_at"]
                entry.update(expires_at=_EXPIRES_AT, size_vram=entry["size"])
                running.append(entry)
        return web.json_response({"models": running})

    async def _openai_models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": 1735689600, "owned_by": "library"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        model, content = self._reply(body)
        if model is None:
            message = f'model "{body.get("model")}" not found, try pulling it first'
            return web.json_response(
                {"error": {"message": message, "type": "api_error", "code": None}}, status=404
            )
        self._ids += 1
        rid, created = f"chatcmpl-{self._ids}", int(time.time())
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": _usage(body, content),
                }
            )
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        pieces: list[tuple[dict[str, str], str | None]] = [
            ({"role": "assistant", "content": p}, None) for p in self._split(content)
        ]
        for delta, finish in [*pieces, ({}, "stop")]:
            chunk = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        model, content = self._reply(body)
        if model is None:
            return web.json_response(
                {"error": f"model '{body.get('model')}' not found"}, status=404
            )
        done = {
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "eval_count": len(content.split()),
        }
        if body.get("stream") is False:
            message = {"role": "assistant", "content": content}
            return web.json_response(_ndjson_head(model, message) | done)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for piece in self._split(content):
            line = _ndjson_head(model, {"role": "assistant", "content": piece}) | {"done": False}
            await resp.write(json.dumps(line).encode() + b"\n")
        last = _ndjson_head(model, {"role": "assistant", "content": ""}) | done
        await resp.write(json.dumps(last).encode() + b"\n")
        await resp.write_eof()
        return resp

    # --- helpers ------------------------------------------------------------------------

    def _reply(self, body: dict[str, Any]) -> tuple[str | None, str]:
        """The model asked for (None: not here) and the answer; loads or unloads it."""
        model = body.get("model")
        if model not in self.models:
            return None, ""
        if body.get("keep_alive") in (0, "0", "0s"):
            self.loaded.discard(model)
        else:
            self.loaded.add(model)
        text = ""
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                text = message.get("content") if isinstance(message.get("content"), str) else ""
                break
        return model, f"[{model}] {text}"

    def _split(self, content: str) -> list[str]:
        size = -(-len(content) // max(1, self.chunks)) or 1
        return [content[i : i + size] for i in range(0, len(content), size)] or [""]


def _tag(model: str) -> dict[str, Any]:
    """An ``/api/tags`` entry, deterministic from the name."""
    digest = hashlib.sha256(model.encode()).hexdigest()
    family = re.match(r"[a-z]+", model.lower())
    return {
        "name": model,
        "model": model,
        "modified_at": _MODIFIED_AT,
        "size": 1_000_000_000 + int(digest[:6], 16),
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family.group(0) if family else "llama",
            "families": [family.group(0) if family else "llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


def _ndjson_head(model: str, message: dict[str, str]) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"model": model, "created_at": created, "message": message}


def _usage(body: dict[str, Any], content: str) -> dict[str, int]:
    prompt = sum(
        len(m.get("content", "").split())
        for m in body.get("messages") or []
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    )
    done = len(content.split())
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return web.json_response({"error": "invalid JSON body"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body is not a JSON object"}, status=400)
    return body


async def _serve(args: argparse.Namespace) -> None:
    server = FakeOllama(
        args.model or ["llama3.2:latest"],
        host=args.host,
        port=args.port,
        warm=args.warm or (),
        require_key=args.require_key,
    )
    await server.serve_until_signalled()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: run a fake Ollama until interrupted."""
    parser = argparse.ArgumentParser(description="Fake Ollama server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument(
        "--model", action="append", help="model to serve (repeatable; default llama3.2:latest)"
    )
    parser.add_argument("--warm", action="append", help="a model loaded from the start")
    parser.add_argument("--require-key", help="answer 401 without 'Authorization: Bearer KEY'")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
