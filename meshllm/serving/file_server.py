"""FileServer: serves model files to peers holding a grant, over TLS on TCP.

The protocol is drawn in :mod:`meshllm.serving.transfer`.  One server per node,
listening on the TCP port with the number of the node's QUIC UDP port.  Grants
come from :meth:`FileServer.issue_grant` (or :meth:`FileServer.issue_grant_async`,
which hashes off the event loop) and travel to the peer over QUIC.  A bad
grant, a bad mac, garbage or a peer hanging up closes that one connection and
is logged; it never escapes the server.

The port is open to anyone who can reach it, so its budgets
(:class:`FileServerLimits`) apply from the TCP accept, before any TLS state exists:
at most ``max_connections`` at once (over it a new one replaces the oldest still without
a request after a second, else is closed at once: each TLS connection costs about 300 KB
under asyncio, and idle unauthenticated ones took a node from 221 to 1,111 MB for good
under uvloop); one deadline, ``handshake_timeout``, from the accept to a valid ``get``
frame, TLS handshake included; at most ``max_handshake_bytes`` read before it.
The server accepts on its own socket, so a connection over the cap is closed before
the event loop gives it a transport; an admitted one is handed to
``loop.connect_accepted_socket`` with TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshllm.errors import FrameError, TransferError
from meshllm.serving.digests import FileDigests
from meshllm.serving.transfer import (
    CHUNK_SIZE,
    DIGEST_SIZE,
    GRANT_TTL,
    MAX_HEADER_FRAME,
    NONCE_SIZE,
    TOKEN_SIZE,
    Grant,
    cert_sha256,
    make_proof,
    server_ssl_context,
)
from meshllm.wire import Frame, FrameDecoder, FrameType, encode_frame, make_frame

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # TCP accept to a valid request frame, TLS handshake included
CLOSE_TIMEOUT = 30.0  # after the last byte, how long the client may take to hang up
SEND_STALL_TIMEOUT = 60.0  # a client that reads nothing for this long loses its connection
MAX_CLIENTS = 32  # concurrent connections; more are closed at once
MAX_GRANTS = 256  # outstanding grants; the oldest go first
WRITE_HIGH_WATER = 4 * CHUNK_SIZE  # keep a few chunks in flight per connection
BACKLOG = 100  # connections the kernel queues before they are accepted
ACCEPT_RETRY_S = 0.1  # after a failed accept (out of fds)
EVICT_AFTER_S = 1.0  # at the cap, a connection this long without a request may be cut
REFUSAL_LOG_INTERVAL_S = 10.0  # at most one "busy" warning this often
READ_LIMIT = 64 * 1024  # a connection's read buffer, before TLS-level flow control pauses


@dataclass(frozen=True, slots=True)
class FileServerLimits:
    """Budgets of the model-file port, which anyone who can reach it may connect to."""

    max_connections: int = MAX_CLIENTS
    """Open connections, counted from the TCP accept, before TLS.  At the cap a new one
    takes the place of the one that has waited longest (over a second) without a valid
    request; if none, it is closed at once.  A copy needs one connection for its few
    minutes and a node rarely feeds more than a handful of peers at a time, while each
    TLS connection costs ~300 KB before a byte of it is authenticated."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    """Seconds from the TCP accept to a valid ``get`` frame (TLS handshake included);
    then the connection is closed.  A peer that means it sends its request right away;
    an idle or slow stranger otherwise holds a connection slot and its TLS state."""

    max_handshake_bytes: int = 2 * MAX_HEADER_FRAME
    """Bytes read after TLS before the ``get`` frame is whole (the frame is ~200 bytes,
    capped at ``MAX_HEADER_FRAME``); more closes the connection."""

    send_stall_timeout: float = SEND_STALL_TIMEOUT
    """Seconds a client may read nothing while a file is sent to it; then it is cut."""

    close_timeout: float = CLOSE_TIMEOUT
    """Seconds the client may take to hang up after its last byte (it closes first)."""


DEFAULT_FILE_LIMITS = FileServerLimits()
"""The defaults, for parameter defaults (a frozen dataclass: safe to share)."""


class _Refused(Exception):
    """A request the server turns down; the message goes back to the client."""


@dataclass(frozen=True, slots=True)
class _Issued:
    """A grant as the server remembers it: with the file it stands for."""

    grant: Grant
    path: Path
    mtime_ns: int


class FileServer:
    """Serves files named by ``resolve`` to clients that present a valid grant."""

    def __init__(
        self,
        resolve: Callable[[str], Path | None],
        cert_pem: bytes,
        key_pem: bytes,
        mesh_secret: bytes,
        *,
        grant_ttl: float = GRANT_TTL,
        clock: Callable[[], float] = time.time,
        digests: FileDigests | None = None,
        limits: FileServerLimits = DEFAULT_FILE_LIMITS,
    ) -> None:
        self._resolve = resolve
        self.limits = limits
        self._ssl = server_ssl_context(cert_pem, key_pem)
        self._cert_sha256 = cert_sha256(cert_pem)
        self._mesh_secret = mesh_secret
        self._grant_ttl = grant_ttl
        self._clock = clock  # wall clock: grants carry absolute expiry times
        self._lock = threading.Lock()  # grants and digests are touched from hashing threads
        self._grants: dict[bytes, _Issued] = {}
        self.digests = digests or FileDigests()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        # Every connection from its TCP accept: its task, and its transport once it has one.
        self._connections: dict[asyncio.Task[None], asyncio.WriteTransport | None] = {}
        # Those without a valid request yet: task -> loop time of the accept, oldest first.
        self._handshaking: dict[asyncio.Task[None], float] = {}
        self.refused = 0
        """Connections closed at the accept because ``max_connections`` were open."""
        self.evicted = 0
        """Connections without a request yet, cut to make room for a new one."""
        self._refusal_logged = -REFUSAL_LOG_INTERVAL_S

    @property
    def cert_sha256(self) -> bytes:
        """sha256 of this server's certificate DER: what clients pin."""
        return self._cert_sha256

    @property
    def port(self) -> int:
        """The TCP port bound by :meth:`start` (useful with port 0)."""
        if self._listener is None:
            raise TransferError("file server is not started")
        return int(self._listener.getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now, from their TCP accept (handshaking ones included)."""
        return len(self._connections)

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (TCP)."""
        if self._listener is not None:
            raise TransferError("file server already started")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            listener = socket.socket(family, kind, proto)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(address)
                listener.listen(BACKLOG)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                raise
        except OSError as exc:
            raise TransferError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._listener = listener
        self._accepting = loop.create_task(self._accept_loop(listener))

    async def stop(self) -> None:
        """Stop listening and cut every copy in flight (clients keep their ``.part``)."""
        listener, self._listener = self._listener, None
        accepting, self._accepting = self._accepting, None
        if accepting is not None:
            accepting.cancel()
            await asyncio.gather(accepting, return_exceptions=True)
        if listener is not None:
            listener.close()
        for task, transport in list(self._connections.items()):
            if transport is not None:
                transport.abort()
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    # Grants

    def issue_grant(self, name: str) -> Grant | None:
        """A one-time grant for model ``name``, or ``None`` if there is no such file.

        Hashes the file unless its digest is cached (per path, size and mtime): that
        blocks for ~1 s per 250 MB, so prefer :meth:`issue_grant_async` on the loop.
        """
        path = self._resolve(name)
        if path is None:
            return None
        try:
            st = path.stat()
            if not path.is_file():
                return None
            digest = self.digests.digest(path)
        except OSError as exc:
            logger.warning("cannot grant %s (%s): %s", name, path, exc)
            return None
        grant = Grant(
            name=name,
            size=st.st_size,
            sha256=digest,
            token=secrets.token_bytes(TOKEN_SIZE),
            expires=self._clock() + self._grant_ttl,
        )
        with self._lock:
            now = self._clock()
            for token in [t for t, i in self._grants.items() if i.grant.expires < now]:
                del self._grants[token]
            while len(self._grants) >= MAX_GRANTS:  # a peer asking in a loop: drop the oldest
                del self._grants[next(iter(self._grants))]
            self._grants[grant.token] = _Issued(grant, path, st.st_mtime_ns)
        return grant

    async def issue_grant_async(self, name: str) -> Grant | None:
        """:meth:`issue_grant` on a worker thread, so hashing does not stall the loop."""
        return await asyncio.to_thread(self.issue_grant, name)

    def _take_grant(self, token: bytes) -> _Issued | None:
        with self._lock:
            return self._grants.pop(token, None)  # one-time: gone at first presentation

    # Connections

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept TCP connections; over ``max_connections``, close each one at once."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of fds, or the like: let some close first
                logger.warning("file server cannot accept: %s", exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if len(self._connections) >= self.limits.max_connections and not self._evict(
                loop.time()
            ):
                self.refused += 1
                conn.close()
                now = loop.time()
                if now >= self._refusal_logged + REFUSAL_LOG_INTERVAL_S:  # no log flood
                    self._refusal_logged = now
                    logger.warning(
                        "file server busy (%d connections): closing connections, %d so far "
                        "(the last from %s)",
                        len(self._connections),
                        self.refused,
                        peer,
                    )
                continue
            task = loop.create_task(self._on_connection(conn, peer))
            self._connections[task] = None
            self._handshaking[task] = loop.time()

    def _evict(self, now: float) -> bool:
        """Make room by cutting the connection that has waited longest without a valid
        request, if it has waited over ``EVICT_AFTER_S``: a real client is through its
        handshake in milliseconds, a flood's idle connections are not."""
        wait = min(EVICT_AFTER_S, self.limits.handshake_timeout / 2)
        for task, since in self._handshaking.items():  # oldest first
            if now - since < wait:
                return False
            del self._handshaking[task]
            transport = self._connections.pop(task, None)
            if transport is not None:
                transport.abort()
            task.cancel()
            self.evicted += 1
            return True
        return False

    async def _on_connection(self, conn: socket.socket, peer: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        writer: asyncio.StreamWriter | None = None
        handed = False  # the loop owns conn once connect_accepted_socket has it
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                handed = True
                reader, writer = await self._open_tls(conn)
                self._connections[task] = writer.transport
                server_nonce = secrets.token_bytes(NONCE_SIZE)
                writer.write(
                    encode_frame(make_frame(FrameType.FILE, op="hello", nonce=server_nonce))
                )
                request = await _read_frame(reader, self.limits.max_handshake_bytes)
            self._handshaking.pop(task, None)  # a request: no longer evictable
            await self._serve(reader, writer, peer, request, server_nonce)
        except _Refused as exc:
            logger.warning("file copy to %s refused: %s", peer, exc)
            with contextlib.suppress(Exception):
                assert writer is not None
                writer.write(encode_frame(make_frame(FrameType.ERROR, message=str(exc))))
                await asyncio.wait_for(writer.drain(), self.limits.handshake_timeout)
        except (FrameError, TransferError, OSError, EOFError, TimeoutError) as exc:
            logger.info("file copy to %s failed: %s", peer, exc or type(exc).__name__)
            if writer is not None:  # no TLS goodbye for a failed or idle client
                writer.transport.abort()
        except asyncio.CancelledError:
            pass  # stop(): the client keeps its .part and resumes elsewhere or later
        except Exception:
            logger.exception("file copy to %s crashed", peer)
        finally:
            self._connections.pop(task, None)
            self._handshaking.pop(task, None)
            if writer is None:
                if not handed:
                    conn.close()
            elif task.cancelling():
                writer.transport.abort()
            else:
                writer.close()

    async def _open_tls(
        self, conn: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The TLS handshake on an accepted connection; a stream reader and writer over it."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            conn,
            ssl=self._ssl,
            ssl_handshake_timeout=self.limits.handshake_timeout,
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: Any,
        request: Frame,
        server_nonce: bytes,
    ) -> None:
        issued, offset = self._check_request(request, server_nonce)
        grant = issued.grant
        logger.info("sending %s to %s from offset %d of %d", grant.name, peer, offset, grant.size)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        writer.write(
            encode_frame(
                make_frame(
                    FrameType.FILE, op="accept", name=grant.name, size=grant.size, offset=offset
                )
            )
        )
        await _send_range(writer, issued.path, offset, grant.size, self.limits.send_stall_timeout)
        # Let the client hang up first (see the module docstring of transfer.py).
        async with asyncio.timeout(self.limits.close_timeout):
            while await reader.read(MAX_HEADER_FRAME):
                pass
        logger.info("sent %s to %s", grant.name, peer)

    def _check_request(self, request: Frame, server_nonce: bytes) -> tuple[_Issued, int]:
        token, offset = request.get("token"), request.get("offset")
        client_nonce, mac = request.get("nonce"), request.get("mac")
        if (
            request.get("t") != FrameType.FILE
            or request.get("op") != "get"
            or not _is_bytes(token, TOKEN_SIZE)
            or not _is_bytes(client_nonce, NONCE_SIZE)
            or not _is_bytes(mac, DIGEST_SIZE)
            or not isinstance(offset, int)
        ):
            raise _Refused("malformed request")
        issued = self._take_grant(token)
        if issued is None:
            raise _Refused("unknown or already used grant")
        if self._clock() > issued.grant.expires:
            raise _Refused("grant expired")
        expected = make_proof(
            self._mesh_secret, client_nonce, server_nonce, self._cert_sha256, token
        )
        if not hmac.compare_digest(mac, expected):
            raise _Refused("bad proof of the mesh secret")
        if not 0 <= offset <= issued.grant.size:
            raise _Refused(f"offset {offset} outside the file")
        try:
            st = issued.path.stat()
        except OSError:
            raise _Refused("file is gone") from None
        if (st.st_size, st.st_mtime_ns) != (issued.grant.size, issued.mtime_ns):
            raise _Refused("file changed since the grant")
        return issued, offset


def _is_bytes(value: object, size: int) -> bool:
    return isinstance(value, bytes) and len(value) == size


async def _read_frame(reader: asyncio.StreamReader, max_bytes: int) -> Frame:
    decoder = FrameDecoder(max_size=MAX_HEADER_FRAME)
    read = 0
    while True:
        data = await reader.read(MAX_HEADER_FRAME)
        if not data:
            raise EOFError("client hung up during the handshake")
        read += len(data)
        frames = decoder.feed(data)
        if frames:
            return frames[0]
        if read > max_bytes:
            raise FrameError(f"no request frame in the first {read} bytes")


async def _send_range(
    writer: asyncio.StreamWriter,
    path: Path,
    offset: int,
    size: int,
    stall_timeout: float = SEND_STALL_TIMEOUT,
) -> None:
    """Stream ``path[offset:size]``, reading the next chunk on a thread while this one is sent."""
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDONLY)
    remaining = size - offset
    position = offset
    pending: asyncio.Future[bytes] | None = None
    try:
        if remaining:
            pending = loop.run_in_executor(None, os.pread, fd, min(CHUNK_SIZE, remaining), position)
        while pending is not None:
            chunk = await pending
            pending = None
            if not chunk:
                raise TransferError(f"{path} shrank while being sent")
            remaining -= len(chunk)
            position += len(chunk)
            if remaining:
                pending = loop.run_in_executor(
                    None, os.pread, fd, min(CHUNK_SIZE, remaining), position
                )
            writer.write(chunk)
            async with asyncio.timeout(stall_timeout):
                await writer.drain()
    finally:
        if pending is not None:  # a read still runs on the fd: let it end before closing
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        os.close(fd)
