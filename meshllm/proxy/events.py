"""``GET /api/events``: the mesh's model-state events as Server-Sent Events.

The stream opens with the snapshot (one ``snapshot`` event), then carries each event
of the :class:`~meshllm.events.EventHub` as ``event: <type>`` and a one-line JSON
``data:`` (a ``request`` event, one per request this node records, only to a caller
with the admin token or an admin key, as the history), with a ``: ping`` comment after
every ``heartbeat_s`` of quiet (which is also how a client gone away is noticed, at
the latest).  A client that falls behind gets an ``overflow`` event and the end of the
stream: it reconnects for a fresh snapshot.  A full hub answers 503 ``server_busy``
with ``Retry-After``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiohttp import web

from meshllm.events import EventHub
from meshllm.proxy.admin import admin_refusal
from meshllm.proxy.errors import error_response

HEARTBEAT_S = 15.0
"""Seconds of quiet before a ``: ping`` comment (an ``heartbeat_s`` on the source wins)."""
RETRY_AFTER_S = 5

_PING = b": ping\n\n"
_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: don't buffer the stream
}


class EventSource(Protocol):
    """What the stream needs: the hub, and the snapshot to open with (events from
    :func:`~meshllm.events.snapshot_events`).  An optional ``heartbeat_s`` attribute
    overrides :data:`HEARTBEAT_S`."""

    hub: EventHub

    def snapshot(self) -> list[dict[str, Any]]: ...


EVENTS_KEY = web.AppKey("events", EventSource)
EVENTS_TOKEN_KEY = web.AppKey("events_admin_token", str)
PRIVATE = "private"
"""An event with this key true (a ``request`` event: a history row, which names its
key) goes only to callers who may read the history; the key itself is not sent."""


def sse_frame(event: dict[str, Any]) -> bytes:
    """One SSE event: ``event: <type>`` and its JSON on one ``data:`` line."""
    data = json.dumps(event, separators=(",", ":"))  # escapes newlines: one line
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def events_handler(request: web.Request) -> web.StreamResponse:
    """Stream the snapshot, then every event published, until the client goes away or
    falls behind."""
    source = request.app[EVENTS_KEY]
    heartbeat = float(getattr(source, "heartbeat_s", HEARTBEAT_S))
    token = request.app[EVENTS_TOKEN_KEY]
    admin = admin_refusal(request, token, "the request events") is None
    sub = source.hub.subscribe()  # before the snapshot: no event falls between them
    if sub is None:
        return error_response(
            503,
            "too many event-stream subscribers; retry later",
            "server_busy",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    response = web.StreamResponse(headers=_HEADERS)
    with sub:
        try:
            await response.prepare(request)
            for event in source.snapshot():
                await response.write(sse_frame(event))
            while True:
                try:
                    event = await sub.next(heartbeat)
                except EOFError:  # overflowed (its event written) or closed
                    break
                if event is None:
                    await response.write(_PING)
                elif not event.get(PRIVATE):
                    await response.write(sse_frame(event))
                elif admin:  # the history's, for its readers only: it names keys
                    await response.write(
                        sse_frame({k: v for k, v in event.items() if k != PRIVATE})
                    )
            await response.write_eof()
        except ConnectionResetError:  # the client went away
            pass
    return response


def add_event_routes(app: web.Application, source: EventSource, admin_token: str = "") -> None:
    """Serve ``GET /api/events`` from ``source``; its private events go to callers with
    the admin token or an admin key."""
    app[EVENTS_KEY] = source
    app[EVENTS_TOKEN_KEY] = admin_token
    app.router.add_get("/api/events", events_handler)
