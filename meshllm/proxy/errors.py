"""Proxy failures: the exceptions that decide retry versus give up, and OpenAI-shaped answers.

    PeerError (meshllm.errors)
    └── TunnelUnavailable   the remote node failed before the response head: try another
        └── TunnelBroken    ... because the data path broke (no acknowledgement in time,
                            stream or link gone): also suspect the node (DESIGN.md §5)
    ServingError (meshllm.errors)
    └── BackendUnavailable  the local backend failed before the response head: try another

A failure after the response head is a plain :class:`~meshllm.errors.PeerError`
(tunnel) or :class:`~meshllm.errors.ServingError` (local backend): bytes may
already be with the client, so it is never retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from meshllm.errors import PeerError, ServingError


class TunnelUnavailable(PeerError):
    """The tunnel failed before the response head; the request may go to another node."""


class TunnelBroken(TunnelUnavailable):
    """The data path to the node broke before the response head: no acknowledgement in
    time, the stream or the link gone.  Unlike a clean refusal (an ``error`` frame), this
    says the node may be dead: the proxy suspects it as well as trying another."""


class BackendUnavailable(ServingError):
    """The local backend failed before the response head; the request may go elsewhere."""


_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


log = logging.getLogger(__name__)


def error_body(message: str, status: int, code: str | None = None) -> dict[str, object]:
    """OpenAI's error object ``{"error": {"message", "type", "code"}}``."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": code}}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON error response in OpenAI's shape."""
    return web.Response(
        status=status,
        body=json.dumps(error_body(message, status, code)).encode(),
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(message: str, code: str = "upstream_error") -> bytes:
    """An SSE event carrying an OpenAI error, to end a stream that broke mid-way."""
    return b"data: " + json.dumps(error_body(message, 502, code)).encode() + b"\n\n"


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text HTTP errors (404, 405, 413, …), and a handler's
    unexpected exception (500, logged), into OpenAI-shaped JSON.

    For the node's app: ``web.Application(middlewares=[openai_error_middleware])``.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        message = f"{request.method} {request.path}: {exc.reason}"
        return error_response(exc.status, message, code=str(exc.status), headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # a bug: logged, and answered in the shape every client expects
        log.exception("%s %s failed", request.method, request.path)
        message = f"{request.method} {request.path}: internal error (see the node's log)"
        return error_response(500, message, code="internal_error")
