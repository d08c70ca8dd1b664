"""QUIC transport: one UDP socket per node, server and client on it (DESIGN.md §5, §9).

aioquic's ``serve()``/``connect()`` each bind their own socket, so this module
is the endpoint itself: one :class:`asyncio.DatagramProtocol` demultiplexes
datagrams by connection id (as aioquic's own ``QuicServer`` does) to client and
server connections alike, each a :class:`~meshllm.gossip.connection.Connection`
(its I/O pump, the hello and its streams), whose
:class:`~meshllm.gossip.connection.ConnectionOwner` this endpoint is.
There is one link per peer pair: if both sides dial at once, the connection
dialled by the lower node id wins on both sides.

Unauthenticated inbound connections hold *hello slots* (:class:`PendingHellos`),
which anyone can ask for with one datagram, so they are bounded and fairly
evicted, and under load a new connection must first prove its source address
with a QUIC Retry (RFC 9000 §8.1.2): junk Initials from spoofed or throwaway
sources then cost a Retry packet, not a slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader, QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler

from meshllm.errors import PeerError
from meshllm.gossip.connection import (
    CONTROL_STREAM_ID,
    ERROR_CLOSING,
    ERROR_DUPLICATE,
    ERROR_HELLO,
    ERROR_PROTOCOL,
    MAX_HELLO_BYTES,
    Connection,
    Link,
)
from meshllm.gossip.hello_slots import PendingHellos
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.identity import Identity
from meshllm.join_token import MeshCredentials
from meshllm.wire import Frame, FrameType

__all__ = [
    "ALPN",
    "CONTROL_STREAM_ID",
    "ERROR_CLOSING",
    "ERROR_DUPLICATE",
    "ERROR_HELLO",
    "ERROR_PROTOCOL",
    "MAX_HELLO_BYTES",
    "Link",
    "LinkHandler",
    "QuicTransport",
    "TransportSettings",
    "split_addr",
]

log = logging.getLogger(__name__)

ALPN = "meshllm/1"

# Settings that worked for tunnels here (DESIGN.md §9).
MAX_DATAGRAM_SIZE = 1350
MAX_DATA = 16 << 20
MAX_STREAM_DATA = 4 << 20
SOCKET_BUFFER = 4 << 20  # the 208 KiB default drops packets under load
IDLE_TIMEOUT = 60.0
CONNECTION_ID_LENGTH = 8  # aioquic's default QuicConfiguration.connection_id_length
MIN_INITIAL_SIZE = 1200  # a client's Initial datagram is padded to at least this (RFC 9000 §14.1)
SUPPORTED_VERSIONS = frozenset(QuicConfiguration().supported_versions)

# Hello slots and request heads: what an unauthenticated or slow peer can hold.
MAX_REFUSAL_KINDS = 16  # kinds of hello refusal counted apart; the rest count as "other"
HELLO_TIMEOUT = 5.0  # seconds for TLS plus the hello; a real one takes milliseconds
MAX_PENDING_HELLOS = 64
MAX_PENDING_PER_SOURCE = 16  # so one address, spoofed ports and all, can't hold every slot
RETRY_AFTER_PENDING = 16  # junk that never answers a Retry holds at most this many slots
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


class QuicTransport(asyncio.DatagramProtocol):
    """The node's QUIC endpoint: one UDP socket, any number of links.

    It is the :class:`~meshllm.gossip.connection.ConnectionOwner` of its connections.
    """

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
        self.refused: Counter[str] = Counter()  # hellos refused, by what failed
        self.frames: Counter[tuple[str, str]] = Counter()  # control frames, by way and type
        self._connections: dict[bytes, Connection] = {}
        self._all: set[Connection] = set()
        self._pending: PendingHellos[Connection] = PendingHellos(
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
            conn.terminated("node stopping")
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
        conn = Connection(self, quic, remote)
        conn.expected_peer_id = expected_node_id
        self._register(conn, quic.host_cid)
        quic.connect(remote, now=loop.time())
        conn.transmit()
        try:
            # The connection's own hello timer ends the wait: silence is a PeerError.
            return await asyncio.shield(conn.up)
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

    def _accept(self, header: QuicHeader, size: int, addr: tuple[str, int]) -> Connection | None:
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
        conn = Connection(self, quic, addr)
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

    def _register(self, conn: Connection, cid: bytes) -> None:
        self._all.add(conn)
        self._connections[cid] = conn

    # ConnectionOwner (documented there): what the connections tell their endpoint

    def connection_id_issued(self, cid: bytes, conn: Connection) -> None:
        self._connections[cid] = conn

    def connection_id_retired(self, cid: bytes) -> None:
        self._connections.pop(cid, None)

    def connection_authenticated(self, conn: Connection) -> None:
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

    def hello_refused(self, conn: Connection, reason: str) -> None:
        """Count a failed hello by its kind (``hello: bad proof``, ...), for status pages."""
        kind = reason.split(":", 1)[0].strip()[:40] or "refused"
        if len(self.refused) < MAX_REFUSAL_KINDS or f"hello: {kind}" in self.refused:
            self.refused[f"hello: {kind}"] += 1
        else:
            self.refused["hello: other"] += 1

    def connection_terminated(self, conn: Connection) -> None:
        self._all.discard(conn)
        self._pending.discard(conn)
        for cid in [cid for cid, c in self._connections.items() if c is conn]:
            del self._connections[cid]
        if conn.peer_id is not None and self.links.get(conn.peer_id) is conn.link:
            del self.links[conn.peer_id]
            self.handler.link_down(conn.link)

    def frame_received(self, link: Link, frame: Frame) -> None:
        self.frames[("in", frame_kind(frame))] += 1
        self.handler.frame_received(link, frame)

    def frame_sent(self, frame: Frame) -> None:
        self.frames[("out", frame_kind(frame))] += 1

    def stream_opened(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        self.handler.stream_opened(link, stream, head)


def _keep_existing(my_id: str, existing: Connection, new: Connection) -> bool:
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


_FRAME_TYPES = frozenset(FrameType)


def frame_kind(frame: Frame) -> str:
    """A frame's type for counting: one of ours, else "other" (a peer may send anything)."""
    kind = frame.get("t")
    return kind if kind in _FRAME_TYPES else "other"
