"""QUIC transport: one UDP socket per node, server and client on it (DESIGN.md §5, §9).

aioquic's ``serve()``/``connect()`` each bind their own socket, so this module
drives :class:`aioquic.quic.connection.QuicConnection` itself: one
:class:`asyncio.DatagramProtocol` demultiplexes datagrams by connection id
(as aioquic's own ``QuicServer`` does) to client and server connections alike.

Every connection starts with the membership hello on its first stream (the
*control* stream, id 0): nothing about the mesh crosses before both proofs
check.  Then the control stream carries gossip frames, and each tunnel or
file request opens a new bidirectional stream.  There is one link per peer
pair: if both sides dial at once, the connection dialled by the lower node id
wins on both sides.
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
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from meshllm.errors import FrameError, HelloError, PeerError
from meshllm.gossip.hello import NONCE_BYTES, hello_mac, hello_message, verify_hello
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.identity import Identity, node_id_from_public_key, public_key_bytes
from meshllm.join_token import MeshCredentials
from meshllm.wire import Frame, FrameDecoder, FrameType, encode_frame, make_frame

log = logging.getLogger(__name__)

ALPN = "meshllm/1"
CONTROL_STREAM_ID = 0

# Application error codes in CONNECTION_CLOSE / RESET_STREAM.
ERROR_HELLO = 0x100  # wrong mesh, secret or key
ERROR_DUPLICATE = 0x101  # a second connection to the same peer
ERROR_PROTOCOL = 0x102  # undecodable frames or a frame out of place
ERROR_CLOSING = 0x103  # the node is stopping

# Settings that worked for tunnels here (DESIGN.md §9).
MAX_DATAGRAM_SIZE = 1350
MAX_DATA = 16 << 20
MAX_STREAM_DATA = 4 << 20
SOCKET_BUFFER = 4 << 20  # the 208 KiB default drops packets under load
IDLE_TIMEOUT = 60.0
HELLO_TIMEOUT = 5.0
MAX_PENDING_HELLOS = 64  # unauthenticated connections held at once


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
    hello_timeout: float = HELLO_TIMEOUT
    max_frame_size: int = 1 << 20


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
        self.up: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._control_decoder = FrameDecoder(endpoint.settings.max_frame_size)
        self._streams: dict[int, QuicFrameStream] = {}
        self._nonce = os.urandom(NONCE_BYTES)
        self._peer_nonce: bytes | None = None
        self._peer_public_key: bytes | None = None
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
                self.close(code, str(exc)[:200])
        for stream in self._streams.values():
            stream._acked()

    def _handle_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream._fail(PeerError("stream reset by peer"))
        elif isinstance(event, events.StopSendingReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.reset()
        elif isinstance(event, events.HandshakeCompleted):
            if self.quic._is_client:
                self._send_hello()
        elif isinstance(event, events.ConnectionIdIssued):
            self.endpoint._connections[event.connection_id] = self
        elif isinstance(event, events.ConnectionIdRetired):
            self.endpoint._connections.pop(event.connection_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated(event.reason_phrase or f"error {event.error_code:#x}")

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id == CONTROL_STREAM_ID:
            for frame in self._control_decoder.feed(data):
                if self._authenticated:
                    self.endpoint.handler.frame_received(self.link, frame)
                else:
                    self._hello_frame(frame)
            return
        if not self._authenticated:
            raise FrameError("request stream before the hello")
        stream = self._streams.get(stream_id)
        if stream is None:
            if (stream_id & 1) == (0 if self.quic._is_client else 1):
                return  # late data for a stream of ours that we already let go
            stream = QuicFrameStream(self, stream_id, self.endpoint.settings.max_frame_size)
            stream.awaiting_head = True
            self._streams[stream_id] = stream
        try:
            stream._feed(data, end_stream)
        except FrameError as exc:
            stream._fail(PeerError(str(exc)))
            stream.reset()
            return
        if stream.awaiting_head:
            if stream._frames:
                # The peer's request: hand it over once its head frame is whole.
                stream.awaiting_head = False
                self.endpoint.handler.stream_opened(self.link, stream, stream._frames.popleft())
            elif end_stream:
                stream.reset()  # ended before a whole head frame

    # hello (DESIGN.md §5)

    def _hello_payload(self) -> Frame:
        me = self.endpoint
        return make_frame(
            FrameType.HELLO,
            mesh_id=me.credentials.mesh_id,
            node_id=me.identity.node_id,
            public_key=me.identity.public_key,
            nonce=self._nonce,
            incarnation=me.incarnation(),
        )

    def _send_hello(self) -> None:
        self.send_control(self._hello_payload())

    def _send_proof(self) -> None:
        me = self.endpoint
        assert self._peer_nonce is not None
        mesh_id, key = me.credentials.mesh_id, me.identity.public_key
        mac = hello_mac(me.credentials.secret, mesh_id, key, self._peer_nonce)
        sig = me.identity.sign(hello_message(mesh_id, key, self._peer_nonce))
        self.send_control(make_frame(FrameType.PROOF, mac=mac, sig=sig))

    def _hello_frame(self, frame: Frame) -> None:
        me = self.endpoint
        kind = frame.get("t")
        if kind == FrameType.HELLO and self._peer_nonce is None:
            mesh_id, key = frame.get("mesh_id"), frame.get("public_key")
            nonce, node_id = frame.get("nonce"), frame.get("node_id")
            if mesh_id != me.credentials.mesh_id:
                raise HelloError("wrong mesh")
            if not (isinstance(key, bytes) and len(key) == 32 and isinstance(nonce, bytes)):
                raise HelloError("malformed hello")
            if node_id != node_id_from_public_key(key) or node_id == me.identity.node_id:
                raise HelloError("node id does not match its key")
            if self.expected_peer_id and node_id != self.expected_peer_id:
                raise HelloError("unexpected node at that address")
            if self.quic._is_client and key != self._server_certificate_key():
                raise HelloError("certificate does not match the node key")
            self._peer_nonce, self._peer_public_key, self.peer_id = nonce, key, node_id
            incarnation = frame.get("incarnation")
            self.peer_incarnation = incarnation if isinstance(incarnation, int) else 0
            if self.quic._is_client:
                self._send_proof()
            else:
                self._send_hello()
        elif kind == FrameType.PROOF and self._peer_nonce is not None:
            assert self._peer_public_key is not None
            ok = verify_hello(
                me.credentials.secret,
                me.credentials.mesh_id,
                self._peer_public_key,
                self._nonce,
                frame.get("mac"),
                frame.get("sig"),
            )
            if not ok:
                raise HelloError("bad proof")
            if not self.quic._is_client:
                self._send_proof()
            self._authenticated = True
            self._hello_timer.cancel()
            me._authenticated(self)
        else:
            raise HelloError(f"unexpected {kind!r} during the hello")

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
            self.close(ERROR_HELLO, "hello timed out")
            self._terminated("hello timed out")

    # streams and closing

    def send_control(self, frame: Frame) -> None:
        if self.closed:
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

    def close(self, error_code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()

    def _terminated(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._hello_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
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
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            return
        conn = self._connections.get(header.destination_cid)
        if conn is None:
            if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
                return
            if sum(not c._authenticated for c in self._all) >= MAX_PENDING_HELLOS:
                return
            quic = QuicConnection(
                configuration=self._configuration(is_client=False),
                original_destination_connection_id=header.destination_cid,
            )
            conn = _Connection(self, quic, addr)
            self._register(conn, header.destination_cid)
            self._connections[quic.host_cid] = conn
        try:
            conn.datagram_received(data, addr)
        except Exception:  # a bug in one connection must not take the socket down
            log.exception("error on the link to %s", conn.peer_id or conn.remote_addr)
            conn.close(ERROR_PROTOCOL, "internal error")

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
    dialer_of_existing = my_id if existing.quic._is_client else peer_id
    dialer_of_new = my_id if new.quic._is_client else peer_id
    if dialer_of_existing == dialer_of_new:
        return False  # a redial by the same side: the new one replaces the stale one
    return dialer_of_existing < dialer_of_new


def split_addr(addr: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; raises ValueError on a bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad address {addr!r}: expected host:port")
    return host.strip("[]"), int(port)
