"""One QUIC connection of the transport: its I/O pump, the hello, its streams (DESIGN.md §5, §9).

:class:`Connection` drives one :class:`aioquic.quic.connection.QuicConnection`
after aioquic's own ``QuicConnectionProtocol``: datagrams and timers in,
events handled, datagrams out.  The endpoint that owns it (the
:class:`ConnectionOwner`, :class:`~meshllm.gossip.transport.QuicTransport`)
holds the socket and the table of connection ids, and decides which link to
keep; the connection tells it what happened.

Every connection starts with the membership hello (:class:`~meshllm.gossip.hello.Handshake`)
on its first stream (the *control* stream, id 0): nothing about the mesh
crosses before both proofs check.  Then the control stream carries gossip
frames, and each tunnel or file request opens a new bidirectional stream.
A peer-opened request stream must deliver its head frame in time, and only
so many may wait for theirs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from meshllm.errors import FrameError, HelloError, PeerError
from meshllm.gossip.hello import Handshake
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.identity import Identity, public_key_bytes
from meshllm.join_token import MeshCredentials
from meshllm.wire import Frame, FrameDecoder, encode_frame

log = logging.getLogger(__name__)

CONTROL_STREAM_ID = 0

# Application error codes in CONNECTION_CLOSE / RESET_STREAM.
ERROR_HELLO = 0x100  # wrong mesh, secret or key; hello timed out or evicted
ERROR_DUPLICATE = 0x101  # a second connection to the same peer
ERROR_PROTOCOL = 0x102  # undecodable frames or a frame out of place
ERROR_CLOSING = 0x103  # the node is stopping

MAX_REASON_CHARS = 200  # of a close's reason phrase: the peer logs it
MAX_HELLO_BYTES = 4096  # control bytes a client may send before its proof checks (needs ~300)


class ConnectionSettings(Protocol):
    """The tunables a connection reads; each is documented on
    :class:`~meshllm.gossip.transport.TransportSettings`, which has them."""

    @property
    def hello_timeout(self) -> float: ...
    @property
    def max_frame_size(self) -> int: ...
    @property
    def stream_head_timeout(self) -> float: ...
    @property
    def max_streams_awaiting_head(self) -> int: ...
    @property
    def max_control_backlog(self) -> int: ...


class ConnectionOwner(Protocol):
    """What a connection needs of its endpoint; :class:`~meshllm.gossip.transport.QuicTransport`
    implements it."""

    @property
    def settings(self) -> ConnectionSettings:
        """The endpoint's tunables."""
        ...

    @property
    def identity(self) -> Identity:
        """This node's key and certificate, proven in the hello."""
        ...

    @property
    def credentials(self) -> MeshCredentials:
        """The mesh's id and secret, proven in the hello."""
        ...

    @property
    def incarnation(self) -> Callable[[], int]:
        """This node's incarnation now, sent in the hello."""
        ...

    @property
    def datagram_transport(self) -> asyncio.DatagramTransport | None:
        """The UDP socket; ``None`` once closed, and then nothing more is sent.

        Asked before ``datagrams_to_send()``, which counts what it returns as sent.
        """
        ...

    def connection_id_issued(self, cid: bytes, conn: Connection) -> None:
        """Datagrams to ``cid`` are now for ``conn``."""
        ...

    def connection_id_retired(self, cid: bytes) -> None:
        """``cid`` is no longer in use."""
        ...

    def connection_authenticated(self, conn: Connection) -> None:
        """``conn`` passed the hello: its ``peer_id`` is known; settle ``conn.up``."""
        ...

    def connection_terminated(self, conn: Connection) -> None:
        """``conn`` is over: forget it (and its link, if it was the peer's one)."""
        ...

    def hello_refused(self, conn: Connection, reason: str) -> None:
        """``conn``'s hello failed (a wrong secret, a relayed proof, an old version)."""
        ...

    def frame_sent(self, frame: Frame) -> None:
        """A control frame went out (counted for the metrics)."""
        ...

    def frame_received(self, link: Link, frame: Frame) -> None:
        """A control frame arrived on an authenticated link."""
        ...

    def stream_opened(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        """The peer opened a request stream; ``head`` is its first frame."""
        ...


class Link:
    """An authenticated connection to one peer."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def node_id(self) -> str:
        """The peer's node id."""
        assert self._conn.peer_id is not None
        return self._conn.peer_id

    @property
    def remote_addr(self) -> str:
        """``host:port`` the peer's datagrams come from."""
        host, port = self._conn.remote_addr[:2]
        return f"{host}:{port}"

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def send(self, frame: Frame) -> None:
        """Queue ``frame`` on the control stream (never blocks)."""
        self._conn.send_control(frame)

    async def open_stream(self) -> QuicFrameStream:
        """A new request stream to the peer."""
        return self._conn.open_stream()

    def close(self, error_code: int = ERROR_CLOSING, reason: str = "") -> None:
        """Close the connection with an application error code."""
        self._conn.close(error_code, reason)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Link {self._conn.peer_id} {self.remote_addr} {state}>"


class Connection:
    """One QUIC connection: timers, events, the hello, and its streams.

    It is the :class:`~meshllm.gossip.quic_stream.StreamOwner` of its streams.
    """

    def __init__(
        self, owner: ConnectionOwner, quic: QuicConnection, remote_addr: tuple[str, int]
    ) -> None:
        self.owner = owner
        self.quic = quic
        self.remote_addr = remote_addr
        self.peer_id: str | None = None
        self.peer_incarnation = 0
        self.expected_peer_id: str | None = None
        self.link = Link(self)
        self.closed = False
        self._closing = False  # we closed it: what the peer sends now no longer matters
        self.up: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._control_decoder = FrameDecoder(owner.settings.max_frame_size)
        self._streams: dict[int, QuicFrameStream] = {}
        self._awaiting_head: dict[int, asyncio.TimerHandle] = {}  # peer streams: head timers
        self.is_client = quic._is_client
        # Made at the first hello frame (the server's: a slot stays cheap until then) or
        # once TLS is done (the client's: it needs the server's certificate).
        self._handshake: Handshake | None = None
        self._authenticated = False
        self._hello_timer = self._loop.call_later(
            owner.settings.hello_timeout, self._hello_timed_out
        )

    # I/O pump, after aioquic's QuicConnectionProtocol

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.quic.receive_datagram(data, addr, now=self._loop.time())
        self._process_events()
        # Answer at once: deferring to the next loop turn (call_soon) measured worse
        # here, one hop +3.6 ms vs +1.8 ms median at c=1 (scripts/bench_proxy.py).
        self.transmit()

    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_handle = None
        sock = self.owner.datagram_transport
        if sock is None:
            return
        for data, addr in self.quic.datagrams_to_send(now=self._loop.time()):
            sock.sendto(data, addr)
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def _handle_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = None
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            try:
                self._handle_event(event)
            except (FrameError, HelloError) as exc:
                code = ERROR_HELLO if isinstance(exc, HelloError) else ERROR_PROTOCOL
                log.info("closing link to %s: %s", self.peer_id or self.remote_addr, exc)
                if isinstance(exc, HelloError):
                    self.owner.hello_refused(self, str(exc))
                if isinstance(exc, HelloError) and not self.up.done():
                    self.up.set_exception(exc)  # the dialler learns why at once
                    self.up.exception()  # mark retrieved: nobody may be waiting
                self.close(code, str(exc)[:MAX_REASON_CHARS])
        for stream in self._streams.values():
            stream._acked()

    def _handle_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            if self._closing:
                return
            self._stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            self._head_settled(event.stream_id)
            if stream is not None:
                stream._fail(PeerError("stream reset by peer"))
        elif isinstance(event, events.StopSendingReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.reset()
        elif isinstance(event, events.HandshakeCompleted):
            if self.is_client:
                self._handshake = self._new_handshake()
                self._send_all(self._handshake.start())
        elif isinstance(event, events.ConnectionIdIssued):
            self.owner.connection_id_issued(event.connection_id, self)
        elif isinstance(event, events.ConnectionIdRetired):
            self.owner.connection_id_retired(event.connection_id)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated(event.reason_phrase or f"error {event.error_code:#x}")

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id == CONTROL_STREAM_ID:
            self._control_data(data)
            return
        if not self._authenticated:
            raise FrameError("request stream before the hello")
        stream = self._streams.get(stream_id)
        if stream is None:
            if (stream_id & 1) == (0 if self.is_client else 1):
                return  # late data for a stream of ours that we already let go
            if self._stopped(stream_id):
                return  # late data for a peer stream we reset: not a new request
            stream = self._peer_stream(stream_id)
            if stream is None:
                return
        try:
            stream._feed(data, end_stream)
        except FrameError as exc:
            stream._abort(PeerError(str(exc)))
            return
        if stream.awaiting_head:
            if stream._frames:
                # The peer's request: hand it over once its head frame is whole.
                stream.awaiting_head = False
                self._head_settled(stream_id)
                self.owner.stream_opened(self.link, stream, stream._frames.popleft())
            elif end_stream:
                stream.reset()  # ended before a whole head frame

    def _peer_stream(self, stream_id: int) -> QuicFrameStream | None:
        """A stream the peer opened, waiting for its head; ``None`` if too many wait."""
        settings = self.owner.settings
        stream = QuicFrameStream(self, stream_id, settings.max_frame_size)
        stream.awaiting_head = True
        self._streams[stream_id] = stream
        if len(self._awaiting_head) >= settings.max_streams_awaiting_head:
            log.info(
                "resetting stream %d from %s: %d streams already wait for their head",
                stream_id,
                self.peer_id,
                len(self._awaiting_head),
            )
            stream.reset()
            return None
        self._awaiting_head[stream_id] = self._loop.call_later(
            settings.stream_head_timeout, self._head_timed_out, stream_id
        )
        return stream

    def _head_timed_out(self, stream_id: int) -> None:
        self._awaiting_head.pop(stream_id, None)
        stream = self._streams.get(stream_id)
        if stream is not None and stream.awaiting_head:
            log.info(
                "resetting stream %d from %s: no request head within %.1f s",
                stream_id,
                self.peer_id,
                self.owner.settings.stream_head_timeout,
            )
            stream.reset()

    def _head_settled(self, stream_id: int) -> None:
        """The stream's head arrived or the stream is gone: stop its head timer."""
        timer = self._awaiting_head.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _stopped(self, stream_id: int) -> bool:
        """Whether we asked the peer to stop sending on ``stream_id`` (we reset it)."""
        stream = self.quic._streams.get(stream_id)  # no public accessor
        return stream is not None and stream.receiver._stop_error_code is not None

    # hello (DESIGN.md §5)

    def _new_handshake(self) -> Handshake:
        me = self.owner
        return Handshake(
            is_client=self.is_client,
            credentials=me.credentials,
            identity=me.identity,
            incarnation=me.incarnation(),
            peer_certificate_key=self._server_certificate_key() if self.is_client else None,
            expected_node_id=self.expected_peer_id or None,
        )

    def _control_data(self, data: bytes) -> None:
        if (
            not self._authenticated
            and not self.is_client
            and self._control_decoder.pending + len(data) > MAX_HELLO_BYTES
        ):
            # A client sends its hello, then its proof, then waits for ours: a few
            # hundred bytes.  Bound what an unauthenticated slot may make us buffer.
            raise HelloError(f"more than {MAX_HELLO_BYTES} bytes before the hello ended")
        for frame in self._control_decoder.feed(data):
            if self._authenticated:
                self.owner.frame_received(self.link, frame)
            else:
                self._hello_frame(frame)

    def _hello_frame(self, frame: Frame) -> None:
        handshake = self._handshake
        if handshake is None:
            if self.is_client:
                raise HelloError("a hello frame before the TLS handshake ended")
            handshake = self._handshake = self._new_handshake()
        replies = handshake.receive(frame)
        if handshake.peer_node_id is not None and self.peer_id is None:
            self.peer_id = handshake.peer_node_id
            self.peer_incarnation = handshake.peer_incarnation
        self._send_all(replies)
        if handshake.done:
            self._authenticated = True
            self._hello_timer.cancel()
            self.owner.connection_authenticated(self)

    def _send_all(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.send_control(frame)

    def _server_certificate_key(self) -> bytes | None:
        cert = getattr(self.quic.tls, "_peer_certificate", None)
        if cert is None:
            return None
        try:
            return public_key_bytes(cert.public_key())
        except (AttributeError, TypeError, ValueError):
            return None

    def _hello_timed_out(self) -> None:
        if not self._authenticated and not self.closed:
            if not self.up.done():  # silence is not a refusal: a dialler may try again
                host, port = self.remote_addr[:2]
                self.up.set_exception(PeerError(f"no answer from {host}:{port}"))
                self.up.exception()
            self._abort("hello timed out")

    def evict(self) -> None:
        """Drop this unauthenticated connection to free its hello slot."""
        self._abort("evicted: too many connections waiting for their hello")

    def _abort(self, reason: str) -> None:
        """Close a connection still in its hello, and let it go at once."""
        self.close(ERROR_HELLO, reason)
        self.terminated(reason)

    # streams and closing

    def send_control(self, frame: Frame) -> None:
        if self.closed:
            return
        stream = self.quic._streams.get(CONTROL_STREAM_ID)  # no public accessor
        if (
            stream is not None
            and len(stream.sender._buffer) > self.owner.settings.max_control_backlog
        ):
            log.warning("closing the link to %s: it does not read its control stream", self.peer_id)
            self.close(ERROR_PROTOCOL, "control stream backlog")
            return
        self.quic.send_stream_data(CONTROL_STREAM_ID, encode_frame(frame))
        self.owner.frame_sent(frame)
        self.transmit_soon()

    def open_stream(self) -> QuicFrameStream:
        if self.closed:
            raise PeerError(f"link to {self.peer_id} is closed")
        # get_next_available_stream_id() does not reserve the id (DESIGN.md §9):
        # register the stream before anything can yield.
        stream_id = self.quic.get_next_available_stream_id()
        self.quic._get_or_create_stream_for_send(stream_id)
        stream = QuicFrameStream(self, stream_id, self.owner.settings.max_frame_size)
        self._streams[stream_id] = stream
        return stream

    def forget_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._head_settled(stream_id)

    def close(self, error_code: int, reason: str = "") -> None:
        if self.closed:
            return
        self._closing = True
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()

    def terminated(self, reason: str) -> None:
        """The connection is over (QUIC says so, or we stop waiting for it to say so):
        stop its timers, fail its streams and its dialler, and tell the owner."""
        if self.closed:
            return
        self.closed = True
        self._hello_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for timer in self._awaiting_head.values():
            timer.cancel()
        self._awaiting_head.clear()
        error = PeerError(f"link to {self.peer_id or self.remote_addr} closed: {reason}")
        for stream in self._streams.values():
            stream._fail(error)
        self._streams.clear()
        if not self.up.done():
            self.up.set_exception(HelloError(reason) if not self._authenticated else error)
            self.up.exception()  # mark retrieved: nobody may be waiting
        self.owner.connection_terminated(self)
