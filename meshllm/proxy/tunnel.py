"""HTTP over a :class:`~meshllm.wire.FrameStream`: one request per stream (DESIGN.md §5).

Frames, all ``t: "tunnel"``; the ``k`` field says which part::

    client → server   {k: "head", method, path, headers, model}   model: the mesh model name
                      {k: "body", d: bytes} ...                   each d at most 64 KiB
                      {k: "end"}
    server → client   {k: "ack"}                                  as soon as the head is in
                      {k: "head", status, headers}
                      {k: "body", d: bytes} ...
                      {k: "end"}  or  {k: "error", message}

The ``ack`` proves the serving node alive before it has read the body or asked its
backend anything: the client sends the body while it waits for the ack, and no ack
within ``tunnel_ack_timeout`` raises :class:`TunnelBroken`, as does a stream or link
that breaks before the response head (the caller tries another node and suspects
this one, DESIGN.md §5).  An ``error`` before the response head is a clean refusal
(the serving node could not reach its backend, no longer serves the model, has no
room for the body): :class:`TunnelUnavailable`, try another node.  After the head it
is a :class:`~meshllm.errors.PeerError` mid-stream.  Either side ends its half with
``FrameStream.end()`` once done; a client that gives up resets the stream, and the
server then cancels its upstream request at once.

Budgets (:class:`~meshllm.proxy.limits.HttpLimits`): each side caps what a peer may
have sent on the stream unread (``tunnel_stream_buffer_bytes``, else reset); the serving
side resets a request whose next frame is ``tunnel_request_idle_timeout`` late and counts
its body in the node's bytes of bodies in flight (no room: an ``error`` frame, so the
client tries another node); the client gives up on an answer whose ack is
``tunnel_ack_timeout`` late, or whose head or next frame is ``tunnel_response_idle_timeout``
late.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from meshllm.errors import FrameError, PeerError, ServingError
from meshllm.proxy.errors import BackendUnavailable, TunnelBroken, TunnelUnavailable
from meshllm.proxy.forward import LocalBackends, is_event_stream
from meshllm.proxy.limits import DEFAULT_LIMITS, BudgetHold, ByteBudget, HttpLimits
from meshllm.records.answer_meter import AnswerMeter
from meshllm.wire import Frame, FrameStream, FrameType, make_frame

CHUNK_SIZE = 64 * 1024  # body bytes per frame: far below the 1 MiB frame cap
INLINE_BODY_BYTES = 256 * 1024  # a body this small is queued before the wait for the ack
MAX_BODY_SIZE = 32 * 1024 * 1024  # request body a peer may send (the proxy caps it first)
TUNNEL_ROUTES = frozenset(
    {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/rerank"),  # a rerank GGUF's (llama-server --reranking)
        ("POST", "/v1/messages"),  # Anthropic's API, to a backend that speaks it itself
        ("POST", "/v1/messages/count_tokens"),  # llama-server's own count (Anthropic's API)
    }
)
"""What a peer may ask of our backend: the inference routes, not llama-server's admin ones."""


class ServedAnswer:
    """What the serving side of a tunnel did with a request, for its record: the model,
    the status it answered (0: none, the stream broke first), why it failed, and the
    answer's :class:`~meshllm.records.answer_meter.AnswerMeter` once its head was in."""

    __slots__ = (
        "error",
        "keep_text",
        "meter",
        "model",
        "prompt",
        "started_at",
        "status",
        "streamed",
    )

    def __init__(self, keep_text: bool = False, started_at: float = 0.0) -> None:
        """``started_at``: when the request came in, on the event loop's clock."""
        self.keep_text = keep_text
        self.started_at = started_at
        self.model: str | None = None
        self.status = 0
        self.error = ""
        self.streamed = False
        self.meter: AnswerMeter | None = None
        self.prompt: bytes | None = None  # the body, when keep_text


class _Request:
    """A tunnelled request for the backend; its body is let go once forwarded."""

    __slots__ = ("body", "headers", "hold", "method", "model", "path")

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        model: str,
        hold: BudgetHold,
    ) -> None:
        self.method, self.path, self.headers, self.model = method, path, headers, model
        self.body, self.hold = body, hold

    def drop_body(self) -> None:
        self.body = b""
        self.hold.release()


def _tunnel(kind: str, **fields: Any) -> Frame:
    return make_frame(FrameType.TUNNEL, k=kind, **fields)


def _check_headers(headers: Any) -> dict[str, str]:
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise FrameError("tunnel headers are not a map of strings")
    return headers


# --- client side ---------------------------------------------------------------------------


class TunnelResponse:
    """The response to a tunnelled request (implements ``ProxiedResponse``).

    Read it with ``async for chunk in resp.iter_chunks()``; :meth:`close` it
    when done.  Closing before the end resets the stream, which cancels the
    remote request.
    """

    def __init__(
        self,
        stream: FrameStream,
        status: int,
        headers: dict[str, str],
        idle_timeout: float | None = None,
    ) -> None:
        self._stream = stream
        self._done = False
        self._idle_timeout = idle_timeout  # for each next frame; None: no limit
        self.status = status
        self.headers = headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they come; raises :class:`PeerError` if the remote side breaks off."""
        if self._done:
            return
        try:
            while True:
                frame = await _recv(self._stream, self._idle_timeout)
                if frame is None:
                    raise PeerError("tunnel closed before its end frame")
                kind = frame.get("k")
                if kind == "body" and frame.get("t") == FrameType.TUNNEL:
                    data = frame.get("d")
                    if not isinstance(data, bytes):
                        raise PeerError("tunnel body frame without bytes")
                    if data:
                        yield data
                elif kind == "end" and frame.get("t") == FrameType.TUNNEL:
                    self._done = True
                    with contextlib.suppress(PeerError):
                        await self._stream.end()
                    return
                else:
                    raise PeerError(f"tunnel broke off: {_describe(frame)}")
        finally:
            if not self._done:
                self.close()

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([c async for c in self.iter_chunks()])

    def close(self) -> None:
        """Release the stream; before its end this resets it.  Idempotent."""
        if not self._done:
            self._done = True
            self._stream.reset()

    async def __aenter__(self) -> TunnelResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def open_tunnel_request(
    stream: FrameStream,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    model: str | None = None,
    limits: HttpLimits = DEFAULT_LIMITS,
) -> TunnelResponse:
    """Send a request over ``stream``; return once the response head is in.

    ``model`` names the mesh model, so the serving node picks its backend without
    parsing the body.  Raises :class:`TunnelBroken` when the data path fails before
    the head (no ack within ``limits.tunnel_ack_timeout`` of the head, stream reset,
    link gone, no head within ``limits.tunnel_response_idle_timeout`` of the ack), and
    :class:`TunnelUnavailable` when the remote refuses cleanly (an ``error`` frame,
    a bad head): nothing reached the client yet, so the caller may retry elsewhere.
    Cancelling resets the stream.
    """
    head = _tunnel("head", method=method, path=path, headers=dict(headers))
    if model is not None:
        head["model"] = model
    stream.limit_buffer(limits.tunnel_stream_buffer_bytes)
    idle = limits.tunnel_response_idle_timeout
    sending: asyncio.Future[None] | None = None
    try:
        await stream.send(head)
        # The serving node acks the head alone, so the ack deadline starts here.  A small
        # body is queued at once (a send that never waits on flow control); a big one goes
        # out beside the wait, so it neither delays the ack nor trips the deadline, and a
        # dead node is caught even while send() waits for acknowledgements that never come.
        if len(body) <= INLINE_BODY_BYTES:
            await _send_body(stream, body)
        else:
            sending = asyncio.ensure_future(_send_body(stream, body))
        frame = await _recv_beside(stream, sending, limits.tunnel_ack_timeout, "no acknowledgement")
        if _is_tunnel(frame, "ack"):
            frame = await _recv_beside(stream, sending, idle, "no response head")
        # (A frame other than the ack is taken as the answer: a node that refuses or
        # answers at once proves itself alive just as well.)
        status, resp_headers = _response_head(frame)
        if sending is not None:
            await _sent(sending, idle)  # the head follows our end frame: done, or all but
    except TunnelUnavailable:
        _abandon(stream, sending)
        raise
    except PeerError as exc:
        _abandon(stream, sending)
        raise TunnelBroken(f"tunnel failed before the response head: {exc}") from exc
    except BaseException:
        _abandon(stream, sending)
        raise
    return TunnelResponse(stream, status, resp_headers, idle)


async def _send_body(stream: FrameStream, body: bytes) -> None:
    for i in range(0, len(body), CHUNK_SIZE):
        await stream.send(_tunnel("body", d=body[i : i + CHUNK_SIZE]))
    await stream.send(_tunnel("end"))


async def _recv_beside(
    stream: FrameStream, sending: asyncio.Future[None] | None, timeout: float, what: str
) -> Frame | None:
    """The next frame within ``timeout`` s, while ``sending`` runs; a failed send raises
    its :class:`PeerError` at once, silence a :class:`PeerError` saying ``what``."""
    if sending is None or sending.done():
        if sending is not None:
            sending.result()  # a send that failed: raise why
        try:
            return await _recv(stream, timeout)
        except PeerError as exc:
            raise PeerError(f"{what}: {exc}") from None
    receiving = asyncio.ensure_future(stream.recv())
    try:
        async with asyncio.timeout(timeout):
            if not sending.done():
                await asyncio.wait((receiving, sending), return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                sending.result()  # the send failed: raise why; else the body is out
            return await receiving
    except TimeoutError:
        raise PeerError(f"{what}: tunnel silent for {timeout:g} s") from None
    finally:
        receiving.cancel()


async def _sent(sending: asyncio.Future[None], timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await sending
    except TimeoutError:
        raise PeerError(f"request not taken in {timeout:g} s") from None


def _abandon(stream: FrameStream, sending: asyncio.Future[None] | None) -> None:
    stream.reset()
    if sending is not None:
        sending.cancel()
        sending.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a send that failed as we gave up: nobody else will ask


def _is_tunnel(frame: Frame | None, kind: str) -> bool:
    return frame is not None and frame.get("t") == FrameType.TUNNEL and frame.get("k") == kind


def _response_head(frame: Frame | None) -> tuple[int, dict[str, str]]:
    """Status and headers of a response head frame; :class:`TunnelUnavailable` otherwise."""
    if frame is None:
        raise TunnelUnavailable("tunnel closed before the response head")
    if not _is_tunnel(frame, "head"):
        raise TunnelUnavailable(f"no response head: {_describe(frame)}")
    status = frame.get("status")
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise TunnelUnavailable(f"bad response status {status!r}")
    try:
        return status, _check_headers(frame.get("headers", {}))
    except FrameError as exc:
        raise TunnelUnavailable(str(exc)) from None


async def _recv(stream: FrameStream, timeout: float | None) -> Frame | None:
    """``stream.recv()``, or :class:`PeerError` when no frame comes within ``timeout`` s."""
    if timeout is None:
        return await stream.recv()
    try:
        async with asyncio.timeout(timeout):
            return await stream.recv()
    except TimeoutError:
        raise PeerError(f"tunnel silent for {timeout:g} s") from None


def _describe(frame: Frame) -> str:
    if frame.get("k") == "error" or frame.get("t") == FrameType.ERROR:
        return f"remote error: {frame.get('message', '?')}"
    return f"unexpected frame t={frame.get('t')!r} k={frame.get('k')!r}"


# --- server side ---------------------------------------------------------------------------


async def serve_tunnel(
    stream: FrameStream,
    head: Frame,
    backends: LocalBackends,
    *,
    max_body: int = MAX_BODY_SIZE,
    limits: HttpLimits = DEFAULT_LIMITS,
    budget: ByteBudget | None = None,
    answer: ServedAnswer | None = None,
) -> None:
    """Answer one tunnelled request whose ``head`` frame the dispatcher already read;
    what became of it goes in ``answer``, for the node's records.

    ``budget`` counts request-body bytes in flight: pass the node's one, shared with the
    HTTP routes (``None``: only ``max_body`` per stream bounds them).  No room within
    ``limits.body_budget_wait``: an ``error`` frame, so the client tries another node.

    Acknowledges the head at once (the client suspects a node whose ack is late), reads
    the body, forwards it to the local backend for the head's model
    (one that ``backends`` does not serve is answered with an
    error frame so the client tries another node), and relays the response
    frame by frame, with the stream's backpressure.  A client reset cancels
    the upstream request at once.  Never raises for peer or backend trouble:
    a misbehaving client gets its stream reset.
    """
    stream.limit_buffer(limits.tunnel_stream_buffer_bytes)
    hold = (budget or ByteBudget(max(1, max_body))).hold()
    answer = answer if answer is not None else ServedAnswer()
    try:
        method, path, headers, model = _parse_head(head)
        answer.model = model
        await stream.send(_tunnel("ack"))  # alive and on it: the client's ack deadline
        body = await _read_body(stream, max_body, limits, hold)
        if body is None:
            answer.error = "this node holds too many request bodies right now"
            await stream.send(_tunnel("error", message=answer.error))
            await stream.end()
            return
        if (method, path.split("?", 1)[0]) not in TUNNEL_ROUTES:
            answer.status, answer.error = 404, f"no tunnel route {method} {path}"
            await _answer(stream, 404, answer.error)
            return
        if model is None:
            model = answer.model = _model_of(body)
        if answer.keep_text:
            answer.prompt = body
        if model is None or not backends.serves(model):
            answer.error = f"model {model!r} is not served here"
            await stream.send(_tunnel("error", message=answer.error))
            await stream.end()
            return
        request = _Request(method, path, headers, body, model, hold)
        del body  # only the request holds it now, and lets it go once forwarded
        await _relay_watching(stream, backends, request, answer)
    except (PeerError, FrameError) as exc:
        answer.error = answer.error or str(exc)
        stream.reset()
    except BaseException:  # cancelled (the node stops): the client must not wait on us
        stream.reset()
        raise
    finally:
        hold.release()


def _parse_head(head: Frame) -> tuple[str, str, dict[str, str], str | None]:
    method, path, model = head.get("method"), head.get("path"), head.get("model")
    if head.get("k") != "head" or not isinstance(method, str) or not isinstance(path, str):
        raise FrameError("bad tunnel request head")
    if not path.startswith("/"):
        raise FrameError("tunnel path must start with /")
    if model is not None and not isinstance(model, str):
        raise FrameError("tunnel model is not a string")
    return method.upper(), path, _check_headers(head.get("headers", {})), model


async def _read_body(
    stream: FrameStream, max_body: int, limits: HttpLimits, hold: BudgetHold
) -> bytes | None:
    """The request body, counted in ``hold``; ``None`` when the budget has no room."""
    parts: list[bytes] = []
    size = 0
    while True:
        frame = await _recv(stream, limits.tunnel_request_idle_timeout)
        if frame is None:
            raise PeerError("tunnel request ended without its end frame")
        if frame.get("t") != FrameType.TUNNEL:
            raise FrameError(f"unexpected frame {frame.get('t')!r} in a tunnel")
        kind = frame.get("k")
        if kind == "end":
            return b"".join(parts)
        data = frame.get("d")
        if kind != "body" or not isinstance(data, bytes):
            raise FrameError(f"bad tunnel request frame k={kind!r}")
        size += len(data)
        if size > max_body:
            raise FrameError(f"tunnel request body over {max_body} bytes")
        if not await hold.grow_to(size, limits.body_budget_wait):
            return None
        parts.append(data)


def _model_of(body: bytes) -> str | None:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # a peer's deeply nested JSON is no model name
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) else None


async def _answer(stream: FrameStream, status: int, message: str) -> None:
    """A small JSON error response of our own (not from the backend)."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    await stream.send(_tunnel("head", status=status, headers={"Content-Type": "application/json"}))
    await stream.send(_tunnel("body", d=body))
    await stream.send(_tunnel("end"))
    await stream.end()


async def _relay_watching(
    stream: FrameStream, backends: LocalBackends, request: _Request, answer: ServedAnswer
) -> None:
    """Relay the upstream response while watching the stream for a client reset."""
    relay = asyncio.ensure_future(_relay(stream, backends, request, answer))
    watch = asyncio.ensure_future(_watch_reset(stream))
    try:
        done, _ = await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch in done and watch.result():
            relay.cancel()  # the client reset: abort the upstream request now
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            raise PeerError("tunnel reset by the client")
        await relay
    finally:
        for task in (relay, watch):
            task.cancel()
        await asyncio.gather(relay, watch, return_exceptions=True)


async def _watch_reset(stream: FrameStream) -> bool:
    """True once the client resets the stream; False if it ends its side cleanly."""
    try:
        while await stream.recv() is not None:
            pass  # nothing is expected after the request's end frame: ignore it
    except PeerError:
        return True
    return False


async def _relay(
    stream: FrameStream, backends: LocalBackends, request: _Request, answer: ServedAnswer
) -> None:
    try:
        upstream = await backends.forward(
            request.method, request.path, request.headers, request.body, model=request.model
        )
    except BackendUnavailable as exc:
        answer.error = str(exc)
        await stream.send(_tunnel("error", message=str(exc)))
        await stream.end()
        return
    finally:
        request.drop_body()
    answer.status = upstream.status
    answer.streamed = is_event_stream(upstream.headers)
    meter = answer.meter = AnswerMeter(answer.streamed, keep_text=answer.keep_text)
    loop = asyncio.get_running_loop()
    try:
        await stream.send(_tunnel("head", status=upstream.status, headers=dict(upstream.headers)))
        try:
            async with contextlib.aclosing(upstream.iter_chunks()) as chunks:
                async for chunk in chunks:
                    meter.feed(chunk, loop.time())
                    for i in range(0, len(chunk), CHUNK_SIZE):
                        await stream.send(_tunnel("body", d=chunk[i : i + CHUNK_SIZE]))
        except ServingError as exc:  # the backend broke off mid-response
            answer.error = str(exc)
            await stream.send(_tunnel("error", message=str(exc)))
            await stream.end()
            return
        await stream.send(_tunnel("end"))
        await stream.end()
    finally:
        upstream.close()
