"""The node's HTTP listener with connection-level budgets: :func:`start_http`.

aiohttp bounds neither the time to receive a request head nor the number of open
connections: 10,000 connections sending their head a byte at a time were all held, and
under a 1,024-fd limit 1,100 of them made ``/health`` fail.  Here each connection is a
:class:`LimitedRequestHandler` (an aiohttp ``RequestHandler``) that

* closes the connection with 408 when its request head is not whole within
  ``HttpLimits.header_timeout`` of the connection (or of the first byte of a later
  request on a kept-alive connection), and with 431 past ``max_head_bytes``;
* counts itself in a :class:`ConnectionGate` of ``max_connections``: over it, a new
  connection takes the place of an idle kept-alive one, else of the one that has waited
  longest for its head, else gets a canned 503 and is closed before anything is read.

Request bodies, buffered answers and tunnels have their budgets in the routes
(:mod:`meshllm.proxy.routes`, :mod:`meshllm.proxy.tunnel`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from meshllm.proxy.errors import error_body
from meshllm.proxy.limits import DEFAULT_LIMITS, HttpLimits

log = logging.getLogger(__name__)

EVICT_AFTER_S = 1.0
"""A connection still waiting for its request head after this long (or half the header
timeout, if less) may give its place to a new one when the node is at its cap: a real
client sends its head at once, a slowloris one sits on it."""

REFUSAL_LOG_INTERVAL_S = 10.0  # at most one "at its cap" warning this often


def _canned(status: str, message: str, code: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(message, int(status.split()[0]), code)).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGate:
    """The node's open HTTP connections, at most ``limit`` (see :class:`HttpLimits`)."""

    def __init__(self, limit: int, evict_after: float = EVICT_AFTER_S) -> None:
        self.limit = limit
        self.evict_after = evict_after
        self._open: dict[LimitedRequestHandler, None] = {}  # oldest first
        self.refused = 0
        """Connections turned away since the start."""
        self.evicted = 0
        """Connections closed to make room for a new one."""
        self._refusal_logged = -REFUSAL_LOG_INTERVAL_S

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, handler: LimitedRequestHandler, now: float) -> bool:
        """Count ``handler`` in, making room if need be; False: turn it away."""
        if len(self._open) >= self.limit:
            victim = self._victim(now)
            if victim is None:
                self.refused += 1
                if now >= self._refusal_logged + REFUSAL_LOG_INTERVAL_S:  # no log flood
                    self._refusal_logged = now
                    log.warning(
                        "HTTP port at its cap of %d connections: %d refused so far",
                        self.limit,
                        self.refused,
                    )
                return False
            self.evicted += 1
            self._open.pop(victim, None)
            victim.evict()
        self._open[handler] = None
        return True

    def leave(self, handler: LimitedRequestHandler) -> None:
        self._open.pop(handler, None)

    def _victim(self, now: float) -> LimitedRequestHandler | None:
        waiting_head: LimitedRequestHandler | None = None
        for handler in self._open:
            if handler.idle_between_requests():
                return handler  # the oldest idle kept-alive connection
            since = handler.head_waiting_since()
            if (
                since is not None
                and now - since >= self.evict_after
                and (waiting_head is None or since < (waiting_head.head_waiting_since() or now))
            ):
                waiting_head = handler
        return waiting_head


class LimitedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with a request-head timeout and size cap, counted
    in a :class:`ConnectionGate`.  Built by :class:`LimitedSite`."""

    __slots__ = (
        "_gate",
        "_head_bytes",
        "_head_count",
        "_head_since",
        "_head_timer",
        "_limits",
        "_refused",
    )

    def __init__(self, manager: web.Server, *, gate: ConnectionGate, limits: HttpLimits, **kw: Any):
        super().__init__(manager, **kw)
        self._gate = gate
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # loop time the awaited head began
        self._head_count = 0  # requests parsed when the timer was armed
        self._head_bytes = 0  # bytes received since then
        self._refused = False

    # the gate's view

    def idle_between_requests(self) -> bool:
        """Kept alive after a request, with no byte of the next one yet."""
        waiter = self._waiter
        return (
            self._request_count > 0
            and self._head_timer is None
            and not self._messages
            and waiter is not None
            and not waiter.done()
        )

    def head_waiting_since(self) -> float | None:
        """When the request head this connection waits for began, or None."""
        return self._head_since if self._head_timer is not None else None

    def evict(self) -> None:
        """Close this connection to make room for a new one (the gate counted it out)."""
        if self._head_timer is not None:
            self._close_with(_BUSY)  # it was sending a request: say why
        else:
            self.force_close()  # idle kept-alive: clients expect such closes

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit(self, self._loop.time()):
            self._refused = True
            writer = cast(asyncio.WriteTransport, transport)  # uvloop's are no subclass
            writer.write(_BUSY)
            writer.close()
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._head_timer is not None:
            if self._request_count > self._head_count:
                self._cancel_head_timer()  # the head is whole
            else:
                self._head_bytes += len(data)
                if self._head_bytes > self._limits.max_head_bytes:
                    self._close_with(_HEAD_TOO_LARGE)
        elif data and not self._messages and self._waiter is not None and not self._waiter.done():
            # Bytes of a next request on a kept-alive connection, its head not whole yet.
            self._arm_head_timer()
            self._head_bytes = len(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if self._refused:
            return  # never handed to aiohttp
        self._gate.leave(self)
        super().connection_lost(exc)

    # the head timer

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_count = self._request_count
        self._head_bytes = 0
        self._head_since = self._loop.time()
        self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_since = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count:
            self._close_with(_HEAD_TIMEOUT)

    def _close_with(self, canned: bytes) -> None:
        self._cancel_head_timer()
        if self.transport is not None:
            self.transport.write(canned)
        self.force_close()


_BUSY = _canned(
    "503 Service Unavailable",
    "this node has too many open connections; try again shortly",
    "too_many_connections",
    "Retry-After: 1\r\n",
)
_HEAD_TIMEOUT = _canned(
    "408 Request Timeout", "request head not received in time", "request_timeout"
)
_HEAD_TOO_LARGE = _canned(
    "431 Request Header Fields Too Large", "request head too large", "request_too_large"
)


class LimitedSite(web.TCPSite):
    """A ``TCPSite`` whose connections are :class:`LimitedRequestHandler` s."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, limits: HttpLimits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(runner, host, port, backlog=limits.backlog)
        self.limits = limits
        self.gate = ConnectionGate(
            limits.max_connections, min(EVICT_AFTER_S, limits.header_timeout / 2)
        )

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        kwargs = dict(server._kwargs)  # the runner's handler settings (keepalive_timeout, …)

        def handler() -> LimitedRequestHandler:
            return LimitedRequestHandler(
                server, gate=self.gate, limits=self.limits, loop=loop, **kwargs
            )

        self._server = await loop.create_server(
            handler,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    @property
    def bound_port(self) -> int:
        """The TCP port listened on (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])


async def start_http(
    app: web.Application, host: str, port: int, limits: HttpLimits = DEFAULT_LIMITS
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` with the connection budgets of ``limits``.

    Returns the runner (``await runner.cleanup()`` stops it) and the bound port.  Runs
    with ``handler_cancellation=True``: a client that goes away cancels its handler, which
    aborts the upstream request (DESIGN.md §9).
    """
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=limits.keepalive_timeout,
    )
    await runner.setup()
    site = LimitedSite(runner, host, port, limits)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site.bound_port
