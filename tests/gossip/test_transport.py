"""The QUIC transport: real connections in one process on 127.0.0.1, port 0.

Tests wait on conditions with generous timeouts, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

from meshllm.errors import HelloError, PeerError
from meshllm.gossip.connection import Connection
from meshllm.gossip.hello import NONCE_BYTES
from meshllm.gossip.quic_stream import QuicFrameStream
from meshllm.gossip.transport import (
    ALPN,
    ERROR_HELLO,
    MAX_HELLO_BYTES,
    Link,
    QuicTransport,
    TransportSettings,
)
from meshllm.identity import Identity
from meshllm.join_token import MeshCredentials
from meshllm.wire import Frame, FrameDecoder, FrameType, encode_frame, make_frame

WAIT = 20.0  # seconds any condition may take here (2 shared cores)


@dataclass
class Recorder:
    """A LinkHandler that remembers what it was told."""

    ups: list[Link] = field(default_factory=list)
    downs: list[Link] = field(default_factory=list)
    frames: list[tuple[str, Frame]] = field(default_factory=list)
    streams: list[tuple[QuicFrameStream, Frame]] = field(default_factory=list)

    def link_up(self, link: Link) -> None:
        self.ups.append(link)

    def link_down(self, link: Link) -> None:
        self.downs.append(link)

    def frame_received(self, link: Link, frame: Frame) -> None:
        self.frames.append((link.node_id, frame))

    def stream_opened(self, link: Link, stream: QuicFrameStream, head: Frame) -> None:
        self.streams.append((stream, head))


@dataclass
class Node:
    transport: QuicTransport
    handler: Recorder
    addr: str

    @property
    def node_id(self) -> str:
        return self.transport.identity.node_id

    @property
    def port(self) -> int:
        return int(self.addr.rpartition(":")[2])


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait for ``condition`` to hold, polling the loop; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def credentials() -> MeshCredentials:
    return MeshCredentials.create(owner=bytes(32))


@pytest.fixture
async def make_node(
    credentials: MeshCredentials,
) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Start transports on 127.0.0.1:0; every one is closed at the end of the test."""
    started: list[QuicTransport] = []

    async def make(
        settings: TransportSettings | None = None,
        creds: MeshCredentials | None = None,
        incarnation: int = 0,
    ) -> Node:
        handler = Recorder()
        transport = QuicTransport(Identity.generate(), creds or credentials, handler, settings)
        transport.incarnation = lambda: incarnation
        started.append(transport)
        host, port = await transport.start("127.0.0.1", 0)
        return Node(transport, handler, f"{host}:{port}")

    yield make
    for transport in started:
        await transport.close()


def connection_to(node: Node, peer: Node) -> Connection:
    return node.transport.links[peer.node_id]._conn


# linking


async def test_transport_links_and_frames_flow_both_ways(make_node: Any) -> None:
    a, b = await make_node(incarnation=3), await make_node(incarnation=5)
    link = await a.transport.dial(b.addr, expected_node_id=b.node_id)
    assert link.node_id == b.node_id
    await until(lambda: b.handler.ups, "link_up on the server")
    assert [up.node_id for up in a.handler.ups] == [b.node_id]
    assert [up.node_id for up in b.handler.ups] == [a.node_id]
    assert connection_to(a, b).peer_incarnation == 5
    assert connection_to(b, a).peer_incarnation == 3

    link.send(make_frame(FrameType.PING, n=1))
    b.transport.links[a.node_id].send(make_frame(FrameType.PONG, n=2))
    await until(lambda: b.handler.frames and a.handler.frames, "frames both ways")
    assert b.handler.frames == [(a.node_id, make_frame(FrameType.PING, n=1))]
    assert a.handler.frames == [(b.node_id, make_frame(FrameType.PONG, n=2))]


async def test_transport_request_stream_carries_head(make_node: Any) -> None:
    a, b = await make_node(), await make_node()
    link = await a.transport.dial(b.addr)
    stream = await link.open_stream()
    await stream.send(make_frame(FrameType.TUNNEL, path="/x"))
    await until(lambda: b.handler.streams, "stream_opened")
    theirs, head = b.handler.streams[0]
    assert head["path"] == "/x"
    await theirs.send(make_frame(FrameType.TUNNEL, status=200))
    assert (await asyncio.wait_for(stream.recv(), WAIT))["status"] == 200


async def test_transport_dial_wrong_expected_node_id_fails(make_node: Any) -> None:
    a, b = await make_node(), await make_node()
    with pytest.raises(HelloError, match="unexpected node at that address"):
        await a.transport.dial(b.addr, expected_node_id=Identity.generate().node_id)
    await until(lambda: not b.transport._all, "the refused connection gone on the server")
    assert not a.handler.ups and not b.handler.ups
    assert not a.transport.links and not b.transport.links


async def test_transport_dial_wrong_secret_fails(make_node: Any) -> None:
    b = await make_node()
    a = await make_node(creds=MeshCredentials(b.transport.credentials.mesh_id, b"x" * 32, b""))
    with pytest.raises(
        HelloError, match=r"bad proof: not a member of this mesh \(wrong secret\?\)"
    ):
        await a.transport.dial(b.addr)
    assert not a.handler.ups and not b.handler.ups


async def test_transport_dial_wrong_mesh_fails(make_node: Any) -> None:
    b = await make_node()
    a = await make_node(creds=MeshCredentials.create(owner=bytes(32)))
    with pytest.raises(HelloError, match="wrong mesh"):
        await a.transport.dial(b.addr)
    assert not b.handler.ups


# raw QUIC peers: a relay, a v1 node, a chatterbox


class Pipe(QuicConnectionProtocol):
    """An aioquic connection that hands control-stream bytes to ``on_data``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_data: Callable[[bytes], None] = lambda data: None
        self.on_close: Callable[[ConnectionTerminated], None] = lambda event: None
        self.closed: asyncio.Future[ConnectionTerminated] = (
            asyncio.get_running_loop().create_future()
        )

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == 0:
            self.on_data(event.data)
        elif isinstance(event, ConnectionTerminated) and not self.closed.done():
            self.closed.set_result(event)
            self.on_close(event)

    def write(self, data: bytes) -> None:
        self._quic.send_stream_data(0, data)
        self.transmit()

    def shut(self, error_code: int, reason: str) -> None:
        self._quic.close(error_code=error_code, reason_phrase=reason)
        self.transmit()


def client_configuration() -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
    config.verify_mode = ssl.CERT_NONE
    return config


class Relay:
    """M: terminates J's QUIC with M's own certificate, dials S, and shuttles the
    control stream's frames both ways.  With ``pose`` it replaces S's hello by one
    of M's own key (keeping S's nonce), so that a J expecting no one in particular
    accepts M and proves itself to it."""

    def __init__(self, seed: Node, pose: bool) -> None:
        self.identity = Identity.generate()
        self.seed = seed
        self.pose = pose
        self.seed_closed: asyncio.Future[ConnectionTerminated] | None = None
        self.stack = contextlib.AsyncExitStack()
        self.port = 0

    async def start(self) -> None:
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
        config.certificate = self.identity.certificate
        config.private_key = self.identity.private_key
        server = await serve("127.0.0.1", 0, configuration=config, create_protocol=self._joiner)
        self.stack.callback(server.close)
        self.port = server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]

    def _joiner(self, *args: Any, **kwargs: Any) -> Pipe:
        joiner = Pipe(*args, **kwargs)
        backlog: list[bytes] = []
        to_seed: list[Pipe] = []
        from_joiner, from_seed = FrameDecoder(), FrameDecoder()

        def joiner_data(data: bytes) -> None:
            frames = b"".join(encode_frame(f) for f in from_joiner.feed(data))
            if to_seed:
                to_seed[0].write(frames)
            else:
                backlog.append(frames)

        def seed_data(data: bytes) -> None:
            for frame in from_seed.feed(data):
                if self.pose and frame["t"] == FrameType.HELLO:
                    frame = dict(
                        frame,
                        node_id=self.identity.node_id,
                        public_key=self.identity.public_key,
                    )
                joiner.write(encode_frame(frame))

        async def dial_seed() -> None:
            seed = await self.stack.enter_async_context(
                connect(
                    "127.0.0.1",
                    self.seed.port,
                    configuration=client_configuration(),
                    create_protocol=Pipe,
                )
            )
            assert isinstance(seed, Pipe)
            seed.on_data = seed_data
            seed.on_close = lambda event: joiner.shut(event.error_code, event.reason_phrase)
            joiner.on_close = lambda event: seed.shut(event.error_code, event.reason_phrase)
            self.seed_closed = seed.closed
            to_seed.append(seed)
            seed.write(b"".join(backlog))

        joiner.on_data = joiner_data
        self._task = asyncio.get_running_loop().create_task(dial_seed())
        return joiner

    async def close(self) -> None:
        await self.stack.aclose()


@pytest.mark.parametrize(
    ("pose", "expect_seed", "joiner_error"),
    [
        (False, True, "not the key of its TLS certificate"),  # relayed verbatim
        (True, True, "unexpected node at that address"),  # M poses as itself
        (True, False, "bad proof"),  # J proves itself to M; M hands the proof to S
    ],
)
async def test_transport_relay_refused(
    make_node: Any, pose: bool, expect_seed: bool, joiner_error: str
) -> None:
    seed, joiner = await make_node(), await make_node()
    relay = Relay(seed, pose)
    await relay.start()
    try:
        expected = seed.node_id if expect_seed else None
        with pytest.raises(HelloError, match=joiner_error):
            await joiner.transport.dial(f"127.0.0.1:{relay.port}", expected_node_id=expected)
        await until(lambda: relay.seed_closed is not None, "the relay's dial to the seed")
        assert relay.seed_closed is not None
        if not expect_seed:
            # S itself refused the relayed proof: it was made out to M's key.
            refusal = await asyncio.wait_for(relay.seed_closed, WAIT)
            assert refusal.error_code == ERROR_HELLO
            assert "bad proof" in refusal.reason_phrase
        await until(lambda: not seed.transport._all, "the relayed connection gone on the seed")
        assert not seed.handler.ups and not seed.transport.links
        assert not joiner.handler.ups
    finally:
        await relay.close()


@contextlib.asynccontextmanager
async def raw_client(node: Node) -> AsyncIterator[Pipe]:
    """A bare aioquic client connected (TLS done) to ``node``, no hello sent."""
    async with connect(
        "127.0.0.1", node.port, configuration=client_configuration(), create_protocol=Pipe
    ) as client:
        assert isinstance(client, Pipe)
        yield client


async def test_transport_refuses_v1_hello(make_node: Any) -> None:
    server = await make_node()
    other = Identity.generate()
    v1_hello = make_frame(
        FrameType.HELLO,
        mesh_id=server.transport.credentials.mesh_id,
        node_id=other.node_id,
        public_key=other.public_key,
        nonce=b"n" * NONCE_BYTES,
        incarnation=0,
    )
    async with raw_client(server) as client:
        client.write(encode_frame(v1_hello))
        closed = await asyncio.wait_for(client.closed, WAIT)
    assert closed.error_code == ERROR_HELLO
    assert "peer speaks hello v1; this node needs v2: upgrade it" in closed.reason_phrase
    assert not server.handler.ups


async def test_transport_bounds_bytes_before_the_hello(make_node: Any) -> None:
    server = await make_node()
    async with raw_client(server) as client:
        # The start of a frame that would never end within the hello's budget.
        client.write((100_000).to_bytes(4, "big") + b"x" * (MAX_HELLO_BYTES + 100))
        closed = await asyncio.wait_for(client.closed, WAIT)
    assert closed.error_code == ERROR_HELLO
    assert f"more than {MAX_HELLO_BYTES} bytes" in closed.reason_phrase


async def test_transport_hello_times_out(make_node: Any) -> None:
    server = await make_node(TransportSettings(hello_timeout=0.5))
    async with raw_client(server) as client:
        client.write(b"\x00")  # a hello that never comes
        closed = await asyncio.wait_for(client.closed, WAIT)
    assert closed.error_code == ERROR_HELLO and "timed out" in closed.reason_phrase
    await until(lambda: not server.transport._pending, "the slot freed")


# junk Initials


def junk_initials(target: tuple[str, int]) -> Iterator[bytes]:
    """First datagrams of throwaway aioquic clients: each a real Initial (ClientHello,
    padded to 1200 bytes) with a fresh connection id, whose sender never goes on."""
    while True:
        quic = QuicConnection(configuration=client_configuration())
        quic.connect(target, now=0.0)
        yield quic.datagrams_to_send(now=0.0)[0][0]


@dataclass
class Flood:
    """Junk Initials from a plain UDP socket, one every ``interval``, until stopped."""

    source: str
    target: tuple[str, int]
    interval: float = 0.002
    sent: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.source, 0))
        sock.setblocking(False)
        try:
            datagrams = junk_initials(self.target)
            while not self.stop.is_set():
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(next(datagrams), self.target)
                self.sent += 1
                await asyncio.sleep(self.interval)
        finally:
            sock.close()


async def flood_while_dialling(
    server: Node, joiner: Node, flood: Flood, before: int
) -> tuple[Link, int]:
    """Dial ``server`` from ``joiner`` once ``flood`` sent ``before`` datagrams; the
    flood goes on until the link is up.  Returns the link and the flood's count then."""
    task = asyncio.get_running_loop().create_task(flood.run())
    try:
        await until(lambda: flood.sent >= before, f"{before} junk Initials sent", 60)
        link = await asyncio.wait_for(
            joiner.transport.dial(server.addr, expected_node_id=server.node_id), WAIT
        )
        assert not task.done(), "the flood must still run while the joiner links"
        return link, flood.sent
    finally:
        flood.stop.set()
        await task


async def test_transport_links_during_a_flood_of_junk_initials(make_node: Any) -> None:
    """A real node links while junk Initials (from its own address) arrive far faster
    than the hello slots would free by timing out: beyond a few slots, a new
    connection must echo a Retry token, which junk senders never do."""
    settings = TransportSettings()
    server, joiner = await make_node(settings), await make_node()
    retries: list[tuple[str, int]] = []
    send_retry = server.transport._send_retry

    def counted(header: Any, addr: tuple[str, int], now: float) -> None:
        retries.append(addr)
        send_retry(header, addr, now)

    server.transport._send_retry = counted  # type: ignore[method-assign]
    flood = Flood("127.0.0.1", ("127.0.0.1", server.port))
    # Twice the slots before the dial: with slots held for the whole hello timeout
    # and no Retry, none would be left for the joiner.
    link, sent = await flood_while_dialling(server, joiner, flood, 2 * settings.max_pending_hellos)
    assert link.node_id == server.node_id and sent >= 2 * settings.max_pending_hellos
    await until(lambda: server.handler.ups, "link_up on the flooded server")
    assert [up.node_id for up in server.handler.ups] == [joiner.node_id]
    assert len(server.transport._pending) <= settings.retry_after_pending
    # The joiner itself had to answer a Retry: the slots were past the threshold.
    assert ("127.0.0.1", joiner.port) in retries


async def test_transport_links_during_a_flood_without_retry(make_node: Any) -> None:
    """With Retry off, the per-source cap keeps a flood from one address to its share."""
    settings = TransportSettings(retry_after_pending=1 << 30, max_pending_per_source=8)
    server, joiner = await make_node(settings), await make_node()
    flood = Flood("127.0.0.2", ("127.0.0.1", server.port))
    link, _ = await flood_while_dialling(server, joiner, flood, 2 * settings.max_pending_hellos)
    assert link.node_id == server.node_id
    assert server.transport._pending.count("127.0.0.2") <= settings.max_pending_per_source
    await until(lambda: server.handler.ups, "link_up on the flooded server")


# pending hellos (pure)


def start_headless(link: Link, stream: QuicFrameStream) -> None:
    """Send the first two bytes of a frame's four-byte length, and nothing more."""
    conn = link._conn
    conn.quic.send_stream_data(stream.stream_id, b"\x00\x00")
    conn.transmit()


async def test_transport_resets_stream_without_head(make_node: Any) -> None:
    server = await make_node(TransportSettings(stream_head_timeout=0.3))
    client = await make_node()
    link = await client.transport.dial(server.addr)
    stream = await link.open_stream()
    start_headless(link, stream)
    with pytest.raises(PeerError, match="reset"):
        await asyncio.wait_for(stream.recv(), WAIT)
    conn = connection_to(server, client)
    await until(lambda: not conn._streams, "the server to drop the stream")
    assert not conn._awaiting_head and not server.handler.streams
    assert not conn.closed  # only the stream goes, not the link


async def test_transport_bounds_streams_awaiting_head(make_node: Any) -> None:
    settings = TransportSettings(stream_head_timeout=600.0, max_streams_awaiting_head=2)
    server, client = await make_node(settings), await make_node()
    link = await client.transport.dial(server.addr)
    streams = [await link.open_stream() for _ in range(3)]
    for stream in streams:
        start_headless(link, stream)
    readers = [asyncio.ensure_future(stream.recv()) for stream in streams]
    try:
        await until(lambda: any(r.done() for r in readers), "one stream reset")
        failed = [s for s, r in zip(streams, readers, strict=True) if r.done()]
        assert len(failed) == 1 and isinstance(
            readers[streams.index(failed[0])].exception(), PeerError
        )
        conn = connection_to(server, client)
        assert len(conn._awaiting_head) == 2
        # A waiting stream still gets through once its head is whole.
        waiting = next(s for s in streams if s not in failed)
        body = encode_frame(make_frame(FrameType.TUNNEL, path="/late"))
        link._conn.quic.send_stream_data(waiting.stream_id, body[2:])
        link._conn.transmit()
        await until(lambda: server.handler.streams, "the late head")
        assert server.handler.streams[0][1]["path"] == "/late"
        assert len(conn._awaiting_head) == 1
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def test_transport_closes_a_link_whose_peer_stops_reading(make_node: Any) -> None:
    a = await make_node(TransportSettings(max_control_backlog=1 << 20))
    b = await make_node()
    link = await a.transport.dial(b.addr, expected_node_id=b.node_id)
    await until(lambda: b.handler.ups, "link_up on the server")
    b.transport.datagram_received = lambda data, addr: None  # b stops reading (no acks)
    for _ in range(400):  # 400 frames of 8 KiB: 3 MiB, never acknowledged
        link.send(make_frame(FrameType.PING, pad=b"x" * 8192))
        await asyncio.sleep(0)
    await until(lambda: link.closed, "the link to a peer that does not read closes")


async def test_transport_dial_to_a_silent_address_is_no_refusal(make_node: Any) -> None:
    """Silence (a seed that is down) must not read as "not of this mesh": the dialler
    tries again later, where a refusal would end its attempts."""
    a = await make_node(TransportSettings(hello_timeout=0.3))
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        host, port = silent.getsockname()
        with pytest.raises(PeerError) as caught:
            await a.transport.dial(f"{host}:{port}")
        assert not isinstance(caught.value, HelloError)
    finally:
        silent.close()
