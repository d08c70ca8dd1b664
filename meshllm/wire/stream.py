"""FrameStream: one bidirectional stream of frames between two nodes.

The QUIC transport hands these out for tunnels and file requests (one new
stream per request); :func:`memory_stream_pair` gives two connected ends in
memory, for tests of code that speaks over streams.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from meshllm.errors import PeerError
from meshllm.wire.frames import Frame


class FrameStream(Protocol):
    """One request's stream to or from a peer."""

    peer_id: str

    async def send(self, frame: Frame) -> None:
        """Send one frame; waits while the peer is behind (backpressure).

        Raises :class:`PeerError` if the stream was reset or the link is gone.
        """
        ...

    async def recv(self) -> Frame | None:
        """The next frame, or ``None`` once the peer ended its side cleanly.

        Raises :class:`PeerError` if the stream was reset or the link is gone.
        """
        ...

    async def end(self) -> None:
        """End our side cleanly (the peer's ``recv`` then returns ``None``)."""
        ...

    def reset(self) -> None:
        """Abort the stream both ways; the peer's pending ``recv`` raises.  Idempotent."""
        ...

    def limit_buffer(self, max_bytes: int) -> None:
        """Reset the stream once the peer has sent more than ``max_bytes`` not yet taken
        by ``recv`` (a memory budget: the transport may not hold the peer back)."""
        ...


class MemoryFrameStream:
    """In-memory :class:`FrameStream` end; make pairs with :func:`memory_stream_pair`."""

    def __init__(self, peer_id: str, max_buffered: int = 64) -> None:
        self.peer_id = peer_id
        self._inbox: asyncio.Queue[Frame | Exception | None] = asyncio.Queue(max_buffered)
        self._other: MemoryFrameStream | None = None
        self._broken = False

    async def send(self, frame: Frame) -> None:
        if self._broken or self._other is None:
            raise PeerError("stream reset")
        await self._other._inbox.put(frame)

    async def recv(self) -> Frame | None:
        if self._broken and self._inbox.empty():
            raise PeerError("stream reset")
        item = await self._inbox.get()
        if isinstance(item, Exception):
            self._broken = True
            raise item
        return item

    async def end(self) -> None:
        if self._other is not None and not self._broken:
            await self._other._inbox.put(None)

    def limit_buffer(self, max_bytes: int) -> None:
        pass  # bounded already: a full inbox makes the sender wait (real backpressure)

    def reset(self) -> None:
        if self._broken:
            return
        self._broken = True
        other = self._other
        if other is not None and not other._broken:
            # Drop what it has not read: a reset discards buffered data, as in QUIC.
            while not other._inbox.empty():
                other._inbox.get_nowait()
            other._inbox.put_nowait(PeerError("stream reset by peer"))


def memory_stream_pair(
    a_id: str = "a", b_id: str = "b"
) -> tuple[MemoryFrameStream, MemoryFrameStream]:
    """Two connected stream ends: what one sends, the other receives."""
    a, b = MemoryFrameStream(peer_id=b_id), MemoryFrameStream(peer_id=a_id)
    a._other, b._other = b, a
    return a, b
