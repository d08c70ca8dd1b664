"""The OpenAI-compatible ``/v1`` routes of the proxy (DESIGN.md §4, §7).

:func:`add_proxy_routes` registers them on the node's aiohttp app; the node
gives them a :class:`ProxyMesh`, the little they need to know of the mesh.
Each inference request is parsed once for its ``model``, planned with
:func:`~meshllm.proxy.routing.plan_route`, and relayed to a local backend or
through a tunnel; a target that fails before the response head is skipped
for the next.  SSE is relayed event by event as it comes.

Run the app with ``handler_cancellation=True``: a client that goes away then
cancels its handler, which aborts the upstream request (DESIGN.md §9).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from meshllm.errors import MeshError, PeerError
from meshllm.gossip.stream import FrameStream
from meshllm.proxy.errors import (
    BackendUnavailable,
    error_response,
    sse_error_event,
)
from meshllm.proxy.forward import (
    REQUEST_DROP,
    RESPONSE_DROP,
    Forwarder,
    ProxiedResponse,
    filter_headers,
    is_event_stream,
    split_events,
)
from meshllm.proxy.routing import Target, plan_route
from meshllm.proxy.tunnel import open_tunnel_request

MAX_BODY_BYTES = 32 * 1024 * 1024  # a long chat with images fits; a runaway upload does not
RETRY_AFTER_S = 5  # about the time a starting llama-server needs for a small model
MODEL_HEADER = "x-meshllm-model"
NODE_HEADER = "x-meshllm-node"
_REQUEST_DROP = REQUEST_DROP | {"content-type"}  # set anew, in one spelling


class ProxyMesh(Protocol):
    """What the proxy routes need from the node (``node.py`` implements it)."""

    forwarder: Forwarder
    """The node's pooled HTTP client to its local backends."""

    def catalog(self) -> list[dict[str, Any]]:
        """The mesh catalog: ``[{"model": str, "warm": bool, "nodes": [node_id, ...]}]``."""
        ...

    def targets(self) -> Mapping[str, Sequence[Target]]:
        """Ready replicas per model, this node's own included (``local=True``).

        Each ``Target.load`` is our requests in flight to it (counted through
        :meth:`request_started`/:meth:`request_finished`) plus its announced load.
        """
        ...

    def local_base_url(self, model: str) -> str | None:
        """Base URL (``http://127.0.0.1:PORT``) of this node's backend for ``model``, if ready."""
        ...

    async def open_stream(self, node_id: str) -> FrameStream:
        """A new stream to ``node_id`` for one tunnelled request; raises ``PeerError``."""
        ...

    def request_started(self, target: Target) -> None:
        """A request goes to ``target`` (load accounting)."""
        ...

    def request_finished(self, target: Target) -> None:
        """A request to ``target`` is over: answered, failed or cancelled."""
        ...


def add_proxy_routes(
    app: web.Application,
    mesh: ProxyMesh,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    retry_after_s: int = RETRY_AFTER_S,
    rng: random.Random | None = None,
) -> None:
    """Register ``GET /v1/models`` and the ``POST /v1/...`` inference routes on ``app``."""
    proxy = _Proxy(mesh, max_body_bytes, retry_after_s, rng or random.Random())
    app.router.add_get("/v1/models", proxy.models)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, proxy.relay)


class _Proxy:
    def __init__(
        self, mesh: ProxyMesh, max_body: int, retry_after_s: int, rng: random.Random
    ) -> None:
        self._mesh = mesh
        self._max_body = max_body
        self._retry_after = str(retry_after_s)
        self._rng = rng
        self._created = int(time.time())

    async def models(self, request: web.Request) -> web.Response:
        """OpenAI's model list, one entry per catalog model, with ``meshllm: {warm, nodes}``."""
        data = [
            {
                "id": entry["model"],
                "object": "model",
                "created": int(entry.get("created", self._created)),
                "owned_by": "meshllm",
                "meshllm": {"warm": bool(entry.get("warm")), "nodes": list(entry.get("nodes", ()))},
            }
            for entry in self._mesh.catalog()
        ]
        return web.json_response({"object": "list", "data": data})

    async def relay(self, request: web.Request) -> web.StreamResponse:
        """Route one inference request and relay its answer."""
        body = await self._read_body(request)
        if body is None:
            return error_response(
                413, f"request body over {self._max_body} bytes", "request_too_large"
            )
        try:
            payload = json.loads(body)
        except ValueError:
            return error_response(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(payload, dict):
            return error_response(400, "request body is not a JSON object", "invalid_json")
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            return error_response(400, "'model' must be a string", "invalid_model")

        targets = self._mesh.targets()
        # A catalog model that is cold gets 503, not another model: its name was meant.
        known = model is not None and model not in targets and self._in_catalog(model)
        plan = plan_route(model, targets, self._rng, fallback=not known)
        if not plan.attempts:
            what = f"model {model!r} is not served by any node" if known else "no model is served"
            return error_response(
                503,
                f"{what} right now; try again shortly",
                "no_target",
                headers={"Retry-After": self._retry_after},
            )
        if plan.model_used != model:
            payload["model"] = plan.model_used
            body = json.dumps(payload, separators=(",", ":")).encode()

        headers = filter_headers(request.headers.items(), _REQUEST_DROP)
        headers["Content-Type"] = "application/json"  # the body is JSON: we parsed it
        failures: list[str] = []
        for target in plan.attempts:
            self._mesh.request_started(target)
            try:
                upstream = await self._open(target, request.path_qs, headers, body)
            except (PeerError, BackendUnavailable) as exc:
                self._mesh.request_finished(target)
                failures.append(f"{target.node_id}: {exc}")
                continue
            except BaseException:
                self._mesh.request_finished(target)
                raise
            try:
                return await self._respond(request, upstream, target)
            finally:
                upstream.close()
                self._mesh.request_finished(target)
        return error_response(
            502,
            f"no replica of {plan.model_used!r} could be reached: " + "; ".join(failures),
            "no_reachable_target",
        )

    def _in_catalog(self, model: str) -> bool:
        return any(entry.get("model") == model for entry in self._mesh.catalog())

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The request body, or ``None`` when it is over the cap."""
        if request.content_length is not None and request.content_length > self._max_body:
            return None
        parts: list[bytes] = []
        size = 0
        async for data in request.content.iter_any():
            size += len(data)
            if size > self._max_body:
                return None
            parts.append(data)
        return b"".join(parts)

    async def _open(
        self, target: Target, path: str, headers: dict[str, str], body: bytes
    ) -> ProxiedResponse:
        """The response head from ``target``; raises ``PeerError``/``BackendUnavailable``."""
        if target.local:
            base_url = self._mesh.local_base_url(target.model)
            if base_url is None:
                raise BackendUnavailable(f"{target.model!r} is no longer served here")
            return await self._mesh.forwarder.forward(
                base_url, "POST", path, headers, body, model=target.model
            )
        stream = await self._mesh.open_stream(target.node_id)
        return await open_tunnel_request(stream, "POST", path, headers, body, model=target.model)

    async def _respond(
        self, request: web.Request, upstream: ProxiedResponse, target: Target
    ) -> web.StreamResponse:
        headers = CIMultiDict(filter_headers(upstream.headers.items(), RESPONSE_DROP))
        headers[MODEL_HEADER] = target.model
        headers[NODE_HEADER] = target.node_id
        if not is_event_stream(upstream.headers):
            # A JSON answer is complete before it is useful: take it whole, so a
            # break-off can still become a clean 502 instead of a truncated body.
            try:
                async with aclosing(upstream.iter_chunks()) as chunks:
                    data = b"".join([chunk async for chunk in chunks])
            except MeshError as exc:
                return error_response(502, f"upstream broke off: {exc}", "upstream_error")
            return web.Response(status=upstream.status, body=data, headers=headers)

        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
        resp = web.StreamResponse(status=upstream.status, headers=headers)
        await resp.prepare(request)
        pending = b""
        try:
            try:
                async with aclosing(upstream.iter_chunks()) as chunks:
                    async for chunk in chunks:
                        events, pending = split_events(pending, chunk)
                        if events:
                            await resp.write(events)
                if pending:
                    await resp.write(pending)
            except MeshError as exc:
                # Drop the partial event; end with an error the OpenAI SDK raises, never a hang.
                await resp.write(sse_error_event(f"upstream broke off: {exc}"))
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the caller closes the upstream
        return resp
