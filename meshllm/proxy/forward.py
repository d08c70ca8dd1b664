"""Forwarding to a local backend (llama-server or an external endpoint), streaming.

One :class:`Forwarder` per node holds one pooled ``aiohttp.ClientSession``.
Its responses are streamed, never buffered: the caller iterates
:meth:`UpstreamResponse.iter_chunks` and must :meth:`~UpstreamResponse.close`
the response, which drops the connection when the body was not read to the
end, so the backend stops generating (DESIGN.md §9, aiohttp streaming proxy).

Model names: the mesh names a model one way, a backend may call it another
(an external endpoint's ``llama3:8b``); llama-server started with ``--alias
NAME`` uses the mesh name itself.  The ``backend_model`` hook maps the former
to the latter; request bodies are rewritten to the backend's name and
responses back to the mesh's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

import aiohttp

from meshllm.errors import ServingError
from meshllm.proxy.errors import BackendUnavailable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not passed to a backend: framing the client library redoes, an encoding we do not want back
# (responses are rewritten), and the client's credentials, which are for this proxy only.
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "accept-encoding",
    "authorization",
    "x-api-key",
    "cookie",
    "expect",
    "x-meshllm-request-id",
    "x-meshllm-key-id",
}
# Not passed back: framing aiohttp redoes, an encoding its client already undid, and what a
# browser would act on for this node's origin: cookies and CORS grants (meshllm.proxy.guard
# sets its own; it also strips these from every response, in case a route forgets).
RESPONSE_DROP = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "server",
    "date",
    "set-cookie",
    "set-cookie2",
}
RESPONSE_DROP_PREFIXES = ("access-control-",)
"""Response headers dropped by the start of their lower-cased name."""
JSON_REWRITE_MAX = 16 * 1024 * 1024
"""A JSON answer bigger than this keeps the backend's model name: renaming it would
mean holding it whole."""


def filter_headers(
    headers: Iterable[tuple[str, str]], drop: frozenset[str], prefixes: tuple[str, ...] = ()
) -> dict[str, str]:
    """The ``(name, value)`` pairs whose lower-cased name is not in ``drop`` and does not
    start with one of ``prefixes``."""
    return {
        k: v
        for k, v in headers
        if (lower := k.lower()) not in drop and not lower.startswith(prefixes)
    }


class ProxiedResponse(Protocol):
    """A response being relayed: from a local backend or through a tunnel."""

    status: int
    headers: Mapping[str, str]

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives; raises a ``MeshError`` if cut off."""
        ...

    def close(self) -> None:
        """Release it; one not read to the end is aborted upstream.  Idempotent."""
        ...


def content_type(headers: Mapping[str, str]) -> str:
    """The lower-cased ``Content-Type`` in ``headers`` (any case), or ``""``."""
    for k, v in headers.items():
        if k.lower() == "content-type":
            return v.lower()
    return ""


def is_event_stream(headers: Mapping[str, str]) -> bool:
    """Whether ``headers`` announce an SSE body."""
    return content_type(headers).startswith("text/event-stream")


def is_json(headers: Mapping[str, str]) -> bool:
    """Whether ``headers`` announce a JSON body (``application/json`` or ``…+json``)."""
    media = content_type(headers).partition(";")[0].strip()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def split_events(pending: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """``(complete, rest)``: the whole SSE events in ``pending + chunk``, and the tail after.

    Relaying whole events only means a stream that breaks mid-event can still
    be ended with a well-formed error event.
    """
    data = pending + chunk if pending else chunk
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
    return data[:cut], data[cut:]


class UpstreamResponse:
    """A backend's response, streamed (implements :class:`ProxiedResponse`)."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        model: str | None = None,
        rename: tuple[str, str] | None = None,
    ) -> None:
        self._resp = resp
        self._model = model  # the mesh model name the request was for
        self._rename = rename  # (backend's model name, mesh model name)
        self._done = False
        self.status = resp.status
        self.headers: dict[str, str] = filter_headers(
            resp.headers.items(), RESPONSE_DROP, RESPONSE_DROP_PREFIXES
        )

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises :class:`ServingError` if the backend breaks off."""
        chunks = self._raw_chunks()
        kind = content_type(self.headers)
        if kind.startswith("text/event-stream"):
            if self._rename is not None:
                chunks = _rename_events(chunks, *self._rename)
        elif "json" in kind and self._model is not None:
            chunks = _fix_json_model(chunks, self._model)
        async for chunk in chunks:
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([c async for c in self.iter_chunks()])

    def close(self) -> None:
        """Return the connection to the pool, or drop it if the body was not read to the end."""
        if self._done:
            self._resp.release()
        else:
            self._done = True
            self._resp.close()

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        if self._done:
            return
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.close()
            raise ServingError(f"backend broke off its response: {exc!r}") from exc
        self._done = True
        self._resp.release()


async def _rename_events(
    chunks: AsyncIterator[bytes], backend_model: str, mesh_model: str
) -> AsyncIterator[bytes]:
    """SSE events with each ``"model": backend_model`` rewritten to ``mesh_model``."""
    pending = b""
    async for chunk in chunks:
        complete, pending = split_events(pending, chunk)
        if complete:
            yield b"".join(
                _rename_event(e, backend_model, mesh_model) for e in complete.split(b"\n\n") if e
            )
    if pending:
        yield pending


def _rename_event(event: bytes, backend_model: str, mesh_model: str) -> bytes:
    lines = event.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
            try:
                obj = json.loads(line[5:])
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and obj.get("model") == backend_model:
                obj["model"] = mesh_model
                lines[i] = b"data: " + json.dumps(obj, separators=(",", ":")).encode()
    return b"\n".join(lines) + b"\n\n"


async def _fix_json_model(
    chunks: AsyncIterator[bytes], mesh_model: str, max_bytes: int = JSON_REWRITE_MAX
) -> AsyncIterator[bytes]:
    """A JSON body whose ``model`` field, if any, is set to ``mesh_model``.

    Fast path: once the name appears as a JSON string, the field most likely carries it
    (llama-server with --alias): the rest streams through untouched.  Else the body is
    gathered and parsed, up to ``max_bytes``; a bigger one passes through as it is, so
    a huge answer is never held here whole (the proxy caps what it buffers).
    """
    needle = json.dumps(mesh_model).encode()
    parts: list[bytes] = []
    size = 0
    tail = b""  # the last bytes seen, for a name cut across two chunks
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if needle in tail + chunk[: len(needle)] or needle in chunk or size > max_bytes:
            for part in parts:
                yield part
            parts.clear()
            async for rest in chunks:
                yield rest
            return
        tail = (tail + chunk)[-len(needle) :]
    body = b"".join(parts)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), str):
        obj["model"] = mesh_model
        body = json.dumps(obj, separators=(",", ":")).encode()
    yield body


class Forwarder:
    """Sends requests to local backends over one pooled HTTP client session."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        max_connections: int = 1024,
        backend_model: Callable[[str], str] | None = None,
        backend_headers: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        """``read_timeout`` bounds the silence between two reads: a non-streamed answer is
        silent until complete, so it must cover the longest generation.  ``backend_model``
        maps a mesh model name to the backend's (default: the same name);
        ``backend_headers`` gives the headers a backend's base URL needs on every request
        (an endpoint's ``Authorization``: the client's own is never passed on)."""
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._max_connections = max_connections
        self._backend_model = backend_model
        self._backend_headers = backend_headers
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def forward(
        self,
        base_url: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        model: str | None = None,
        auth: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Send the request to ``base_url + path``; return once the response head is in.

        ``model`` is the mesh model name the request is for; ``auth``, headers set after
        the client's are filtered (a cloud provider's key).  Raises
        :class:`BackendUnavailable` if no response head comes (refused, reset,
        timed out): the caller may try another replica.
        """
        rename: tuple[str, str] | None = None
        if model is not None and self._backend_model is not None:
            backend_name = self._backend_model(model)
            if backend_name != model:
                rename = (backend_name, model)
                body = _with_model(body, backend_name)
        send_headers = filter_headers(headers.items(), REQUEST_DROP)
        if self._backend_headers is not None:
            send_headers.update(self._backend_headers(base_url))
        if auth is not None:
            send_headers.update(auth)
        try:
            resp = await self._get_session().request(
                method,
                base_url.rstrip("/") + path,
                data=body,
                headers=send_headers,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise BackendUnavailable(f"backend {base_url} did not answer: {exc!r}") from exc
        return UpstreamResponse(resp, model, rename)

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Forwarder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LocalBackends(Protocol):
    """This node's own backends by model: its llama-servers, the endpoints it fronts,
    the cloud providers it holds keys for."""

    def serves(self, model: str) -> bool:
        """Whether a request for ``model`` can be answered here."""
        ...

    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, *, model: str
    ) -> ProxiedResponse:
        """The response head from ``model``'s backend; raises :class:`BackendUnavailable`
        when there is none, or it does not answer (the caller may try another node)."""
        ...


class HttpBackends:
    """Backends reached at a base URL (llama-server, an endpoint) through a
    :class:`Forwarder` (implements :class:`LocalBackends`)."""

    def __init__(self, forwarder: Forwarder, base_url_of: Callable[[str], str | None]) -> None:
        """``base_url_of(model)``: the base URL serving ``model`` here, None if none."""
        self.forwarder = forwarder
        self._base_url_of = base_url_of

    def serves(self, model: str) -> bool:
        return self._base_url_of(model) is not None

    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, *, model: str
    ) -> UpstreamResponse:
        base_url = self._base_url_of(model)
        if base_url is None:
            raise BackendUnavailable(f"{model!r} is not served here")
        return await self.forwarder.forward(base_url, method, path, headers, body, model=model)


class ChainedBackends:
    """The first of several :class:`LocalBackends` that serves a model."""

    def __init__(self, *backends: LocalBackends) -> None:
        self.backends = backends

    def serves(self, model: str) -> bool:
        return any(b.serves(model) for b in self.backends)

    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, *, model: str
    ) -> ProxiedResponse:
        for backend in self.backends:
            if backend.serves(model):
                return await backend.forward(method, path, headers, body, model=model)
        raise BackendUnavailable(f"{model!r} is not served here")


def _with_model(body: bytes, model: str) -> bytes:
    """``body`` (a JSON object) with its ``model`` set; other bodies unchanged."""
    try:
        obj: Any = json.loads(body)
        if not isinstance(obj, dict):
            return body
        obj["model"] = model
        return json.dumps(obj, separators=(",", ":")).encode()
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return body
