"""QuicFrameStream: a :class:`~meshllm.wire.FrameStream` over one QUIC stream.

The connection in :mod:`meshllm.gossip.connection` feeds it received bytes and
ack progress; the stream decodes frames and applies the backpressure aioquic
does not (its writes buffer without bound, DESIGN.md §9).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

from aioquic.quic.connection import QuicConnection

from meshllm.errors import FrameError, PeerError
from meshllm.wire import Frame, FrameDecoder, encode_frame

ERROR_STREAM_CANCELLED = 0x104  # a request stream abandoned by its reader
SEND_HIGH_WATER = 1 << 20  # unacknowledged bytes per stream before send() waits
MAX_BUFFERED = 16 << 20
"""Bytes received and not yet taken by ``recv`` before the stream is reset (see
:meth:`QuicFrameStream.limit_buffer`); tunnels set their own."""


class StreamOwner(Protocol):
    """What a stream needs of its connection (:class:`~meshllm.gossip.connection.Connection`)."""

    quic: QuicConnection
    peer_id: str | None

    def transmit_soon(self) -> None:
        """Send what the QUIC connection has queued, soon."""
        ...

    def forget_stream(self, stream_id: int) -> None:
        """The stream is over: drop it from the connection's table."""
        ...


class QuicFrameStream:
    """A :class:`~meshllm.wire.FrameStream` over one QUIC bidirectional stream."""

    def __init__(self, conn: StreamOwner, stream_id: int, max_frame_size: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._decoder = FrameDecoder(max_frame_size)
        self._frames: deque[Frame] = deque()
        self._sizes: deque[int] = deque()  # bytes of each queued frame, at most: see _feed
        self._buffered = 0  # bytes received and not yet taken by recv()
        self._max_buffered = MAX_BUFFERED
        self._ended = False  # the peer ended its side
        self._sent_end = False
        self._error: PeerError | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.awaiting_head = False  # a peer-opened stream whose head frame is not yet whole

    @property
    def peer_id(self) -> str:
        return self._conn.peer_id or "?"

    async def send(self, frame: Frame) -> None:
        if self._error:
            raise self._error
        if self._sent_end:
            raise PeerError("stream already ended")
        try:
            self._conn.quic.send_stream_data(self.stream_id, encode_frame(frame))
        except (AssertionError, ValueError) as exc:  # aioquic asserts on a reset stream
            self._fail(PeerError(f"stream closed: {exc}"))
            raise self._error from None
        self._conn.transmit_soon()
        if self._unacked() > SEND_HIGH_WATER:
            # aioquic buffers writes without bound (DESIGN.md §9): wait for acks.
            self._writable.clear()
            await self._writable.wait()
            if self._error:
                raise self._error

    async def recv(self) -> Frame | None:
        while not self._frames:
            if self._error:
                raise self._error
            if self._ended:
                return None
            self._readable.clear()
            await self._readable.wait()
        # The transport takes a peer's head frame off _frames itself: settle its size.
        while len(self._sizes) > len(self._frames):
            self._buffered -= self._sizes.popleft()
        self._buffered -= self._sizes.popleft()
        return self._frames.popleft()

    def limit_buffer(self, max_bytes: int) -> None:
        """Fail the stream once more than ``max_bytes`` sit received but unread.

        aioquic raises a stream's flow-control window as bytes arrive, not as they are
        read, so it never holds a fast peer back from a slow reader: this does.
        """
        self._max_buffered = max_bytes

    async def end(self) -> None:
        if self._error or self._sent_end:
            return
        self._sent_end = True
        with contextlib.suppress(AssertionError, ValueError):
            self._conn.quic.send_stream_data(self.stream_id, b"", end_stream=True)
            self._conn.transmit_soon()
        if self._ended:  # both sides done: nothing more will arrive or leave
            self._conn.forget_stream(self.stream_id)

    def reset(self) -> None:
        if self._error:
            return
        self._abort(PeerError("stream reset"))

    # driven by the connection

    def _abort(self, error: PeerError) -> None:
        """Reset both directions and fail with ``error``, even if the stream already failed
        (the connection's verdict on a peer that broke the stream, e.g. a bad frame)."""
        quic = self._conn.quic
        with contextlib.suppress(AssertionError, ValueError):
            quic.reset_stream(self.stream_id, ERROR_STREAM_CANCELLED)
        with contextlib.suppress(AssertionError, ValueError):
            quic.stop_stream(self.stream_id, ERROR_STREAM_CANCELLED)
        self._conn.transmit_soon()
        self._fail(error)
        self._conn.forget_stream(self.stream_id)

    def _unacked(self) -> int:
        stream = self._conn.quic._streams.get(self.stream_id)  # no public accessor
        return len(stream.sender._buffer) if stream is not None else 0

    def _feed(self, data: bytes, end_stream: bool) -> None:
        if self._error:
            return
        before = self._decoder.pending
        frames = self._decoder.feed(data)  # FrameError handled by the connection
        if frames:
            # The bytes the new frames took, all counted on the last: released when it
            # is read, so the count errs on the high side for at most one read.
            self._sizes.extend([0] * (len(frames) - 1))
            self._sizes.append(before + len(data) - self._decoder.pending)
            self._frames.extend(frames)
        self._buffered += len(data)
        if self._buffered > self._max_buffered:
            unread, self._buffered = self._buffered, 0
            self._frames.clear()  # let the memory go now: the connection resets the stream
            self._sizes.clear()
            raise FrameError(
                f"peer sent {unread} bytes the stream's reader has not taken "
                f"(budget {self._max_buffered})"
            )
        if end_stream:
            self._ended = True
            if self._sent_end:
                self._conn.forget_stream(self.stream_id)
        self._readable.set()

    def _acked(self) -> None:
        if not self._writable.is_set() and self._unacked() <= SEND_HIGH_WATER // 2:
            self._writable.set()

    def _fail(self, error: PeerError) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self._writable.set()
