"""QUIC transport: one UDP socket per node, server and client on it (DESIGN.md §5, §9).

aioquic's ``serve()``/``connect()`` each bind their own socket, so this module
drives :class:`aioquic.quic.connection.QuicConnection` itself: one
:class:`asyncio.DatagramProtocol` demultiplexes datagrams by connection id
(as aioquic's own ``QuicServer`` does) to client and server connections alike.

Every connection starts with the membership hello (:class:`~meshllm.gossip.hello.Handshake`)
on its first stream (the *control* stream, id 0): nothing about the mesh
crosses before both proofs check.  Then the control stream carries gossip
frames, and each tunnel or file request opens a new bidirectional stream.
There is one link per peer pair: if both sides dial at once, the connection
dialled by the lower node id wins on both sides.

Unauthenticated inbound connections hold *hello slots* (:class:`PendingHellos`),
which anyone can ask for with one datagram, so they are bounded and fairly
evicted, and under load a new connection must first prove its source address
with a QUIC Retry (RFC 9000 §8.1.2): junk Initials from spoofed or throwaway
sources then cost a Retry packet, not a slot.  A peer-opened request stream
must deliver its head frame in time, and only so many may wait for theirs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader, QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler

from meshllm.errors import FrameError, HelloError, PeerError
from meshllm.gossip.hello import Handshake
from meshllm.gossip.hello_slots import PendingHellos
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.identity import Identity, public_key_bytes
from meshllm.join_token import MeshCredentials
from meshllm.wire import Frame, FrameDecoder, encode_frame

log = logging.getLogger(__name__)

ALPN = "meshllm/1"
CONTROL_STREAM_ID = 0

# Application error codes in CONNECTION_CLOSE / RESET_STREAM.
ERROR_HELLO = 0x100  # wrong mesh, secret or key; hello timed out or evicted
ERROR_DUPLICATE = 0x101  # a second connection to the same peer
ERROR_PROTOCOL = 0x102  # undecodable frames or a frame out of place
ERROR_CLOSING = 0x103  # the node is stopping

# Settings that worked for tunnels here (DESIGN.md §9).
MAX_DATAGRAM_SIZE = 1350
MAX_DATA = 16 << 20
MAX_STREAM_DATA = 4 << 20
SOCKET_BUFFER = 4 << 20  # the 208 KiB default drops packets under load
IDLE_TIMEOUT = 60.0
CONNECTION_ID_LENGTH = 8  # aioquic's default QuicConfiguration.connection_id_length
MIN_INITIAL_SIZE = 1200  # a client's Initial datagram is padded to at least this (RFC 9000 §14.1)
SUPPORTED_VERSIONS = frozenset(QuicConfiguration().supported_versions)
MAX_REASON_CHARS = 200  # of a close's reason phrase: the peer logs it

# Hello slots and request heads: what an unauthenticated or slow peer can hold.
HELLO_TIMEOUT = 5.0  # seconds for TLS plus the hello; a real one takes milliseconds
MAX_PENDING_HELLOS = 64
MAX_PENDING_PER_SOURCE = 16  # so one address, spoofed ports and all, can't hold every slot
RETRY_AFTER_PENDING = 16  # junk that never answers a Retry holds at most this many slots
MAX_HELLO_BYTES = 4096  # control bytes a client may send before its proof checks (needs ~300)
STREAM_HEAD_TIMEOUT = 10.0
MAX_CONTROL_BACKLOG = 16 << 20
MAX_STREAMS_AWAITING_HEAD = 32  # heads arrive with a stream's first packet: few ever wait


class LinkHandler(Protocol):
    """What the transport tells its owner (the gossip service)."""

    def link_up(self, link: Link) -> None:
        """A peer passed the hello; ``link`` is now the one link to it."""

    def link_down(self, link: Link) -> None:
        """``link`` is gone (closed by either side, timed out or replaced)."""

    def frame_received(self, link: Link, frame: Frame) -> None:
        """A control frame arrived from an authenticated peer."""

    def stream_opened(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        """The peer opened a request stream; ``head`` is its first frame."""


@dataclass(frozen=True)
class TransportSettings:
    """Tunables of the QUIC transport."""

    idle_timeout: float = IDLE_TIMEOUT
    """Seconds of silence after which QUIC drops a connection."""
    hello_timeout: float = HELLO_TIMEOUT
    """Seconds a connection may take from its first datagram to the end of the hello."""
    max_frame_size: int = 1 << 20
    """Largest frame accepted on any stream."""
    max_pending_hellos: int = MAX_PENDING_HELLOS
    """Hello slots: inbound connections not yet through the hello.  When all are taken,
    a new one evicts the oldest of the source address holding the most."""
    max_pending_per_source: int = MAX_PENDING_PER_SOURCE
    """Hello slots one source IP address may hold; its next evicts its oldest."""
    retry_after_pending: int = RETRY_AFTER_PENDING
    """Once this many hello slots are taken, a new connection must first echo a QUIC
    Retry token, proving it receives at its source address (0: always)."""
    stream_head_timeout: float = STREAM_HEAD_TIMEOUT
    """Seconds a peer-opened request stream may take to deliver its whole head frame."""
    max_streams_awaiting_head: int = MAX_STREAMS_AWAITING_HEAD
    """Peer-opened streams per connection still waiting for their head; more are reset."""
    max_control_backlog: int = MAX_CONTROL_BACKLOG
    """Bytes queued on a link's control stream that the peer has not acknowledged yet
    (aioquic buffers without bound): beyond it the peer is not reading, and the link is
    closed rather than let it grow this node's memory."""


class Link:
    """An authenticated connection to one peer."""

    def __init__(self, conn: _Connection) -> None:
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


class _Connection:
    """One QUIC connection: timers, events, the hello, and its streams."""

    def __init__(
        self, endpoint: QuicTransport, quic: QuicConnection, remote_addr: tuple[str, int]
    ) -> None:
        self.endpoint = endpoint
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
        self._control_decoder = FrameDecoder(endpoint.settings.max_frame_size)
        self._streams: dict[int, QuicFrameStream] = {}
        self._awaiting_head: dict[int, asyncio.TimerHandle] = {}  # peer streams: head timers
        self.is_client = quic._is_client
        # Made at the first hello frame (the server's: a slot stays cheap until then) or
        # once TLS is done (the client's: it needs the server's certificate).
        self._handshake: Handshake | None = None
        self._authenticated = False
        self._hello_timer = self._loop.call_later(
            endpoint.settings.hello_timeout, self._hello_timed_out
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
        sock = self.endpoint.datagram_transport
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
            self.endpoint._connections[event.connection_id] = self
        elif isinstance(event, events.ConnectionIdRetired):
            self.endpoint._connections.pop(event.connection_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated(event.reason_phrase or f"error {event.error_code:#x}")

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
                self.endpoint.handler.stream_opened(self.link, stream, stream._frames.popleft())
            elif end_stream:
                stream.reset()  # ended before a whole head frame

    def _peer_stream(self, stream_id: int) -> QuicFrameStream | None:
        """A stream the peer opened, waiting for its head; ``None`` if too many wait."""
        settings = self.endpoint.settings
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
                self.endpoint.settings.stream_head_timeout,
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
        me = self.endpoint
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
                self.endpoint.handler.frame_received(self.link, frame)
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
            self.endpoint._authenticated(self)

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
            self.close(ERROR_HELLO, "hello timed out")
            self._terminated("hello timed out")

    def evict(self) -> None:
        """Drop this unauthenticated connection to free its hello slot."""
        self.close(ERROR_HELLO, "evicted: too many connections waiting for their hello")
        self._terminated("evicted: too many connections waiting for their hello")

    # streams and closing

    def send_control(self, frame: Frame) -> None:
        if self.closed:
            return
        stream = self.quic._streams.get(CONTROL_STREAM_ID)  # no public accessor
        if (
            stream is not None
            and len(stream.sender._buffer) > self.endpoint.settings.max_control_backlog
        ):
            log.warning("closing the link to %s: it does not read its control stream", self.peer_id)
            self.close(ERROR_PROTOCOL, "control stream backlog")
            return
        self.quic.send_stream_data(CONTROL_STREAM_ID, encode_frame(frame))
        self.transmit_soon()

    def open_stream(self) -> QuicFrameStream:
        if self.closed:
            raise PeerError(f"link to {self.peer_id} is closed")
        # get_next_available_stream_id() does not reserve the id (DESIGN.md §9):
        # register the stream before anything can yield.
        stream_id = self.quic.get_next_available_stream_id()
        self.quic._get_or_create_stream_for_send(stream_id)
        stream = QuicFrameStream(self, stream_id, self.endpoint.settings.max_frame_size)
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

    def _terminated(self, reason: str) -> None:
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
        self.endpoint._terminated(self)


class QuicTransport(asyncio.DatagramProtocol):
    """The node's QUIC endpoint: one UDP socket, any number of links."""

    def __init__(
        self,
        identity: Identity,
        credentials: MeshCredentials,
        handler: LinkHandler,
        settings: TransportSettings | None = None,
    ) -> None:
        self.identity = identity
        self.credentials = credentials
        self.handler = handler
        self.settings = settings or TransportSettings()
        self.incarnation: Callable[[], int] = lambda: 0  # this node's, sent in the hello
        self.datagram_transport: asyncio.DatagramTransport | None = None
        self.links: dict[str, Link] = {}
        self._connections: dict[bytes, _Connection] = {}
        self._all: set[_Connection] = set()
        self._pending: PendingHellos[_Connection] = PendingHellos(
            self.settings.max_pending_hellos, self.settings.max_pending_per_source
        )
        self._retry = QuicRetryTokenHandler()  # a fresh key per run: tokens live seconds

    # lifecycle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind the UDP socket; returns the bound ``(host, port)``."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        return sock.getsockname()[:2]

    async def close(self) -> None:
        """Close every connection (peers see ``ERROR_CLOSING``) and the socket."""
        for conn in list(self._all):
            conn.close(ERROR_CLOSING, "node stopping")
        await asyncio.sleep(0)  # let the CONNECTION_CLOSE datagrams go out
        for conn in list(self._all):
            conn._terminated("node stopping")
        if self.datagram_transport is not None:
            self.datagram_transport.close()
            self.datagram_transport = None

    # dialling

    async def dial(self, addr: str, expected_node_id: str | None = None) -> Link:
        """Connect to ``host:port`` and run the hello; returns the peer's link.

        Raises :class:`HelloError` if the peer is not of this mesh, :class:`PeerError`
        if it cannot be reached.
        """
        host, port = split_addr(addr)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
        remote = infos[0][4][:2]
        config = self._configuration(is_client=True)
        config.server_name = f"meshllm-{expected_node_id or 'peer'}"
        quic = QuicConnection(configuration=config)
        conn = _Connection(self, quic, remote)
        conn.expected_peer_id = expected_node_id
        self._register(conn, quic.host_cid)
        quic.connect(remote, now=loop.time())
        conn.transmit()
        try:
            return await asyncio.wait_for(
                asyncio.shield(conn.up), self.settings.hello_timeout + 1.0
            )
        except TimeoutError:
            conn.close(ERROR_HELLO, "hello timed out")
            conn._terminated("hello timed out")
            raise PeerError(f"no answer from {addr}") from None
        except PeerError:
            # Both sides dialled at once and the peer kept the other connection.
            existing = self.links.get(conn.peer_id or "")
            if existing is not None and not existing.closed:
                return existing
            raise

    # asyncio.DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.datagram_transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)  # ICMP unreachable: probes notice the dead peer

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except ValueError:
            return
        conn = self._connections.get(header.destination_cid)
        if conn is None:
            conn = self._accept(header, len(data), addr)
            if conn is None:
                return
        try:
            conn.datagram_received(data, addr)
        except Exception:  # a bug in one connection must not take the socket down
            log.exception("error on the link to %s", conn.peer_id or conn.remote_addr)
            conn.close(ERROR_PROTOCOL, "internal error")

    def _accept(self, header: QuicHeader, size: int, addr: tuple[str, int]) -> _Connection | None:
        """A new inbound connection for a client's Initial, in a hello slot; or ``None``."""
        if header.packet_type != QuicPacketType.INITIAL or size < MIN_INITIAL_SIZE:
            return None
        if header.version not in SUPPORTED_VERSIONS:
            return None  # every node speaks these; no version negotiation to reflect
        now = asyncio.get_running_loop().time()
        original_cid, retry_cid = header.destination_cid, None
        if header.token:
            try:
                original_cid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                return None  # forged, stale or from our previous run: the dialler retries
            retry_cid = header.destination_cid
        elif len(self._pending) >= self.settings.retry_after_pending:
            self._send_retry(header, addr, now)
            return None
        quic = QuicConnection(
            configuration=self._configuration(is_client=False),
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        conn = _Connection(self, quic, addr)
        for victim in self._pending.admit(conn, addr[0], validated=retry_cid is not None):
            log.debug("evicting the pending hello from %s", victim.remote_addr)
            victim.evict()
        self._register(conn, header.destination_cid)
        self._connections[quic.host_cid] = conn
        return conn

    def _send_retry(self, header: QuicHeader, addr: tuple[str, int], now: float) -> None:
        """Answer an Initial with a stateless Retry (RFC 9000 §8.1.2), as aioquic's server does."""
        if self.datagram_transport is None:
            return
        retry_cid = os.urandom(CONNECTION_ID_LENGTH)
        token = self._retry.create_token(
            address=addr,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=retry_cid,
            now=now,
        )
        packet = encode_quic_retry(
            version=header.version,
            source_cid=retry_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
        self.datagram_transport.sendto(packet, addr)

    # bookkeeping

    def _configuration(self, is_client: bool) -> QuicConfiguration:
        config = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=self.settings.idle_timeout,
            max_datagram_size=MAX_DATAGRAM_SIZE,
            max_data=MAX_DATA,
            max_stream_data=MAX_STREAM_DATA,
        )
        if is_client:
            # Self-signed peers: the hello checks the certificate's key instead.
            config.verify_mode = ssl.CERT_NONE
        else:
            config.certificate = self.identity.certificate
            config.private_key = self.identity.private_key
        return config

    def _register(self, conn: _Connection, cid: bytes) -> None:
        self._all.add(conn)
        self._connections[cid] = conn

    def _authenticated(self, conn: _Connection) -> None:
        assert conn.peer_id is not None
        self._pending.discard(conn)
        current = self.links.get(conn.peer_id)
        if current is not None and not current.closed:
            if _keep_existing(self.identity.node_id, current._conn, conn):
                conn.up.set_result(current)
                conn.close(ERROR_DUPLICATE, "duplicate connection")
                return
            self.links.pop(conn.peer_id)
            self.handler.link_down(current)
            current.close(ERROR_DUPLICATE, "duplicate connection")
        self.links[conn.peer_id] = conn.link
        if not conn.up.done():
            conn.up.set_result(conn.link)
        self.handler.link_up(conn.link)

    def _terminated(self, conn: _Connection) -> None:
        self._all.discard(conn)
        self._pending.discard(conn)
        for cid in [cid for cid, c in self._connections.items() if c is conn]:
            del self._connections[cid]
        if conn.peer_id is not None and self.links.get(conn.peer_id) is conn.link:
            del self.links[conn.peer_id]
            self.handler.link_down(conn.link)


def _keep_existing(my_id: str, existing: _Connection, new: _Connection) -> bool:
    """Of two connections to one peer, which to keep; both sides reach the same answer.

    A peer that restarted (higher incarnation) replaces its stale connection;
    otherwise the connection dialled by the lower node id wins.
    """
    if new.peer_incarnation != existing.peer_incarnation:
        return existing.peer_incarnation > new.peer_incarnation
    peer_id = existing.peer_id
    dialer_of_existing = my_id if existing.is_client else peer_id
    dialer_of_new = my_id if new.is_client else peer_id
    if dialer_of_existing == dialer_of_new:
        return False  # a redial by the same side: the new one replaces the stale one
    return dialer_of_existing < dialer_of_new


def split_addr(addr: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; raises ValueError on a bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad address {addr!r}: expected host:port")
    return host.strip("[]"), int(port)
