"""Budgets of the node's HTTP port and of the tunnels: what a stranger or a peer can make
the node hold, in memory and in time, and for how long.

:class:`HttpLimits` names every budget with its reason; the node builds one from its
config and hands it to :func:`meshllm.proxy.app.create_app` (request bodies, buffered
answers, tunnels), :func:`meshllm.proxy.server.start_http` (connections, the request
head) and :func:`meshllm.proxy.tunnel.serve_tunnel`.  :class:`ByteBudget` is the
shared count of request-body bytes in memory, across the HTTP routes and the tunnels.

Without these (the security review's figures): 10,000 connections sending a request
head one byte at a time were all held; 8 bodies of 30 MiB in flight took a node from
61 to 767 MB; a peer's 60 MB JSON answer was buffered whole; a tunnel stream could be
held and filled without end.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Budgets of the HTTP port and of the tunnels (defaults fit every real use)."""

    header_timeout: float = 10.0
    """Seconds from the connection (or from the first byte of a later request on a kept-alive
    one) to the end of the request head; then 408 and the connection is closed.  A real
    client sends its head in one go; a slowloris client sends it a byte at a time to hold
    a connection (and an fd) for ever: aiohttp has no such timeout of its own."""

    keepalive_timeout: float = 75.0
    """Seconds an idle kept-alive connection waits for its next request (aiohttp's
    ``run_app`` default; ``AppRunner`` alone keeps them an hour).  Long enough for an
    SDK's connection pool to reuse it, short enough not to hoard connection slots."""

    max_head_bytes: int = 64 * 1024
    """Bytes of a request head (request line and headers); more gets 431 and the connection
    is closed.  OpenAI clients send well under 4 KiB; aiohttp alone allows 128 headers of
    8 KiB each, 1 MiB per connection."""

    max_connections: int = 512
    """Open HTTP connections.  Over it, a new connection first takes the place of the
    longest-idle kept-alive one, else of the one that has waited longest (over a second)
    for its request head; if none, it gets a canned 503 with ``Retry-After`` (no request
    read) and is closed.  A 503 rather than a bare close: SDKs retry both, a person with
    curl sees why.  Half of the default 1,024-fd limit: room stays for backends, peers
    and model files."""

    backlog: int = 128
    """Listen backlog: connections the kernel queues before the node accepts them."""

    body_idle_timeout: float = 30.0
    """Seconds of silence allowed between two pieces of a request body; then 408 and the
    connection is closed.  A client that stops sending mid-body holds its budget share."""

    body_timeout: float = 300.0
    """Seconds to receive a whole request body; then 408.  32 MiB (the body cap) arrives in
    that time at about 1 Mbit/s."""

    max_body_bytes_in_flight: int = 128 * MiB
    """Bytes of request bodies held in memory at once, across all requests (HTTP and
    tunnelled), from their first byte until their answer's head is in.  A request over it
    waits up to ``body_budget_wait`` for room, then gets 503 with ``Retry-After``.  Each
    body costs about three times its size while parsed and forwarded (8 bodies of 30 MiB
    took 61 → 767 MB), so this bounds that memory near 400 MB; it still takes four bodies
    at the 32 MiB cap, or thousands of ordinary chats, at once."""

    body_budget_wait: float = 5.0
    """Seconds a request waits for room in ``max_body_bytes_in_flight`` before 503: a
    burst of big bodies queues briefly instead of failing at once."""

    max_response_bytes: int = 64 * MiB
    """Bytes of a non-streamed (JSON) answer, which is buffered whole so that a break-off
    can still become a clean 502.  Over it the proxy answers 502 "upstream answer too
    large" and closes the upstream.  Chat answers are kilobytes, an embeddings batch a few
    megabytes; a peer's 60 MB answer was buffered whole before this cap."""

    tunnel_stream_buffer_bytes: int = 16 * MiB
    """Bytes a peer may have sent on one tunnel stream that the node has not read yet;
    over it the stream is reset.  aioquic grows a stream's flow-control window as bytes
    arrive, not as they are read, so without this a peer could fill memory through a
    stream whose reader is slow (a slow HTTP client) or waits (the body budget)."""

    tunnel_request_idle_timeout: float = 30.0
    """Seconds the node serving a tunnelled request waits for each next frame of the
    peer's request (head to end); then the stream is reset.  A peer's request frames are
    sent back to back: silence means a stuck or hostile peer holding the stream."""

    tunnel_ack_timeout: float = 1.0
    """Seconds the node that sent a tunnelled request waits for the serving node's
    acknowledgement, which that node sends as soon as the request's head arrives (before
    the body, before its backend answers); then the request goes to another replica and
    the node is suspected at once (DESIGN.md §5).  Counted from the head, while the body
    goes out beside it, so neither a big body nor a slow model can trip it: only a dead
    node or link.  The ack takes one round trip plus a loop turn on the peer (about a
    millisecond on a LAN); 1 s leaves room for lost packets and a busy peer, and is what a
    request to a node killed with ``kill -9`` costs: without the ack it waited for probes
    to find the death or for the QUIC idle timeout (5 s at 1 s probes, 60 s at slow ones)."""

    tunnel_response_idle_timeout: float = 660.0
    """Seconds the node that sent a tunnelled request waits for the answer's head and for
    each next frame of its body, once the acknowledgement is in; then it gives up (before
    the head: another node is tried).  Above the serving node's own backend read timeout
    (600 s, a long non-streamed generation), so that node's error frame comes first."""


DEFAULT_LIMITS = HttpLimits()
"""The defaults, for parameter defaults (a frozen dataclass: safe to share)."""


class ByteBudget:
    """A count of bytes in use, shared by many requests: :meth:`acquire` waits for room.

    Waiters are served first come, first served, so a big body is not starved by a
    stream of small ones.  Loop-agnostic until first awaited: it may be built before the
    event loop runs.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a byte budget needs a positive capacity")
        self.capacity = capacity
        self._used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def used(self) -> int:
        """Bytes acquired and not yet released."""
        return self._used

    @property
    def waiting(self) -> int:
        """Acquisitions waiting for room."""
        return len(self._waiters)

    async def acquire(self, size: int, timeout: float) -> bool:
        """Take ``size`` bytes, waiting up to ``timeout`` s for room; False if none came
        (or ``size`` is over the whole capacity).  Cancelling gives back what was granted."""
        if size <= 0:
            return True
        if size > self.capacity:
            return False
        if not self._waiters and self._used + size <= self.capacity:
            self._used += size
            return True
        if timeout <= 0:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiters.append(entry)
        granted = False
        try:
            await asyncio.wait((future,), timeout=timeout)
            granted = future.done()  # only this method cancels it, below
        finally:
            if not granted:
                if future.done():  # granted just as we were cancelled: give it back
                    self._used -= size
                else:
                    future.cancel()
                    self._waiters.remove(entry)
                self._wake()  # whoever queued behind us may fit now
        return granted

    def release(self, size: int) -> None:
        """Give back ``size`` bytes taken with :meth:`acquire`."""
        if size <= 0:
            return
        self._used -= size
        assert self._used >= 0, "released more than acquired"
        self._wake()

    def hold(self) -> BudgetHold:
        """A running total for one request, released at once by :meth:`BudgetHold.release`."""
        return BudgetHold(self)

    def _wake(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if self._used + size > self.capacity:
                return
            self._waiters.popleft()
            self._used += size
            future.set_result(None)


class BudgetHold:
    """What one request holds of a :class:`ByteBudget`; a context manager that releases it."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    async def grow_to(self, total: int, timeout: float) -> bool:
        """Hold at least ``total`` bytes, waiting up to ``timeout`` s for the rest."""
        more = total - self.held
        if more <= 0:
            return True
        if not await self.budget.acquire(more, timeout):
            return False
        self.held += more
        return True

    def release(self) -> None:
        """Give back all of it (idempotent)."""
        held, self.held = self.held, 0
        self.budget.release(held)

    def __enter__(self) -> BudgetHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
