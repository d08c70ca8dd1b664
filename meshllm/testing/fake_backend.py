"""A fast fake OpenAI-compatible backend, standing in for llama-server in tests and benchmarks.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (both plain JSON and SSE with ``"stream": true``), and
``POST /v1/embeddings``.  Answers are deterministic: the content is
``"[MODEL] TEXT"`` where ``TEXT`` is the last user message (or the prompt), split
into ``chunks`` SSE events, ``delay`` seconds apart.

A request may tune its own answer with a ``"fake"`` object in the body:
``{"chunks": int, "delay": float, "status": int, "abort_after": int, "pad": int}`` —
``status`` answers that HTTP status with an OpenAI error, ``abort_after`` cuts
the connection after that many SSE events (a mid-stream failure), ``pad`` makes a
non-streamed answer that many bytes bigger (a ``"pad"`` string field, sent 1 MiB at a
time, never held whole: a huge answer for the proxy's buffer cap).

``headers`` (``--header "NAME: VALUE"``) are added to every response, to check
what a proxy passes on (``Set-Cookie``, ``Access-Control-Allow-Origin: *``).

In process::

    async with FakeBackend(models=["m1"]) as fb:
        url = fb.url  # "http://127.0.0.1:PORT"

As a process: ``python -m meshllm.testing.fake_backend --port N --model NAME``
prints ``listening URL`` then ``ready``, and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web

from meshllm.testing.app_server import AppServer

_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
}
_EMBEDDING_DIM = 8


class FakeBackend(AppServer):
    """An in-process fake OpenAI server on ``host:port`` (``port=0``: any free port)."""

    def __init__(
        self,
        models: Sequence[str] = ("fake-model",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chunks: int = 4,
        delay: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not models:
            raise ValueError("FakeBackend needs at least one model")
        self.models = list(models)
        self.host = host
        self.port = port
        self.chunks = chunks
        self.delay = delay
        self.headers = dict(headers or {})
        """Extra headers sent on every response."""
        self.requests = 0
        """Completion and embedding requests received."""
        self.in_flight = 0
        """Requests being answered right now (streamed, or delayed by ``delay``)."""
        self.disconnects = 0
        """Streams cut short because the client went away (or cancelled)."""
        self.last_request: dict[str, Any] | None = None
        """The JSON body of the last completion or embedding request."""
        self.last_headers: dict[str, str] = {}
        """The headers of the last completion or embedding request."""
        self._ids = 0
        self._created = int(time.time())

    def make_app(self) -> web.Application:
        """The aiohttp application (for embedding it in another server)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/rerank", self._rerank)
        if self.headers:
            app.on_response_prepare.append(self._add_headers)
        return app

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(self.headers)

    # --- handlers -----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": self._created, "owned_by": "fake"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        messages = body.get("messages")
        text = ""
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    text = _text_of(message.get("content"))
                    break
        return await self._answer(request, body, text, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt", "")
        text = prompt[-1] if isinstance(prompt, list) and prompt else prompt
        return await self._answer(request, body, _text_of(text), chat=False)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        model = self._model_for(body)
        data = [
            {"object": "embedding", "index": i, "embedding": _embed(str(item))}
            for i, item in enumerate(items)
        ]
        tokens = sum(len(str(item).split()) for item in items)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _rerank(self, request: web.Request) -> web.Response:
        """llama-server's rerank answer: documents scored by the words they share with
        the query."""
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        query = set(str(body.get("query", "")).lower().split())
        documents = body.get("documents") or []
        documents = documents if isinstance(documents, list) else []
        results = [
            {"index": i, "relevance_score": len(query & set(str(d).lower().split()))}
            for i, d in enumerate(documents)
        ]
        results.sort(key=lambda r: -r["relevance_score"])
        return _json({"model": self._model_for(body), "object": "list", "results": results})

    # --- helpers ------------------------------------------------------------------------

    async def _read(self, request: web.Request) -> dict[str, Any] | web.Response:
        self.requests += 1
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "malformed JSON body")
        if not isinstance(body, dict):
            return _error(400, "body is not a JSON object")
        self.last_request = body
        self.last_headers = dict(request.headers)
        fake = body.get("fake")
        if isinstance(fake, dict) and isinstance(fake.get("status"), int):
            return _error(fake["status"], f"fake error {fake['status']}")
        return body

    def _model_for(self, body: dict[str, Any]) -> str:
        # Like llama-server, answer whatever is asked with the model we have.
        model = body.get("model")
        return model if model in self.models else self.models[0]

    async def _answer(
        self, request: web.Request, body: dict[str, Any], text: str, *, chat: bool
    ) -> web.StreamResponse:
        model = self._model_for(body)
        content = f"[{model}] {text}"
        prompt_tokens = len(text.split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(content.split()),
            "total_tokens": prompt_tokens + len(content.split()),
        }
        self._ids += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-fake-{self._ids}"
        fake = body.get("fake") if isinstance(body.get("fake"), dict) else {}
        chunks = int(fake.get("chunks", self.chunks))
        delay = float(fake.get("delay", self.delay))
        if not body.get("stream"):
            if delay:  # as long as the streamed answer would take
                with self._answering():
                    await asyncio.sleep(delay * max(0, chunks - 1))
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            else:
                choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": "stop"}
            answer = {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": self._created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            pad = fake.get("pad")
            if isinstance(pad, int) and pad > 0:
                return await self._padded(request, answer, pad)
            return _json(answer)
        abort_after = fake.get("abort_after")
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        with self._answering():
            await resp.prepare(request)
            obj = "chat.completion.chunk" if chat else "text_completion"
            for i, piece in enumerate(_split(content, max(1, chunks))):
                if abort_after is not None and i >= int(abort_after):
                    assert request.transport is not None
                    request.transport.close()  # a backend that dies mid-stream
                    return resp
                if delay and i:
                    await asyncio.sleep(delay)
                if chat:
                    delta: dict[str, Any] = {"content": piece}
                    if i == 0:
                        delta["role"] = "assistant"
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
                await resp.write(_event(rid, obj, self._created, model, choice))
            if chat:
                last: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": "stop"}
            else:
                last = {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
            await resp.write(_event(rid, obj, self._created, model, last, usage) + _DONE)
            await resp.write_eof()
            return resp

    async def _padded(
        self, request: web.Request, answer: dict[str, Any], pad: int
    ) -> web.StreamResponse:
        """``answer`` with a ``"pad"`` field of ``pad`` bytes, written 1 MiB at a time."""
        head = json.dumps(answer)[:-1].encode() + b', "pad": "'
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(head) + pad + 2
        with self._answering():
            await resp.prepare(request)
            await resp.write(head)
            piece = b"x" * (1 << 20)
            left = pad
            while left > 0:
                await resp.write(piece[: min(left, len(piece))])
                left -= len(piece)
            await resp.write(b'"}')
            await resp.write_eof()
            return resp

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Count an answer in ``in_flight`` while it is written, and a client that goes
        away meanwhile in ``disconnects``."""
        self.in_flight += 1
        try:
            yield
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            raise
        finally:
            self.in_flight -= 1


def _text_of(content: Any) -> str:
    """The text of a message content: a string or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _split(content: str, n: int) -> list[str]:
    """``content`` cut into ``n`` pieces (some may be empty) that join back to it."""
    size = -(-len(content) // n) or 1
    return [content[i * size : (i + 1) * size] for i in range(n)]


def _embed(text: str) -> list[float]:
    """A deterministic unit-ish vector for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(v / 65535.0, 6) for v in struct.unpack(">8H", digest[:16])][:_EMBEDDING_DIM]


def _event(
    rid: str,
    obj: str,
    created: int,
    model: str,
    choice: dict[str, Any],
    usage: dict[str, int] | None = None,
) -> bytes:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _error(status: int, message: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json({"error": {"message": message, "type": kind, "code": status}}, status)


async def _serve(args: argparse.Namespace) -> None:
    backend = FakeBackend(
        args.model or ["fake-model"],
        host=args.host,
        port=args.port,
        chunks=args.chunks,
        delay=args.delay,
        headers=dict(_parse_header(h) for h in args.header or ()),
    )
    await backend.serve_until_signalled()


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--header {text!r}: expected 'NAME: VALUE'")
    return name.strip(), value.strip()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: run a fake backend until interrupted."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible backend.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument(
        "--model", action="append", help="model name to serve (repeatable; default fake-model)"
    )
    parser.add_argument("--chunks", type=int, default=4, help="SSE events per streamed answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between SSE events")
    parser.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a header added to every response (repeatable)",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the asyncio event loop")
    args = parser.parse_args(argv)
    run: Any = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
