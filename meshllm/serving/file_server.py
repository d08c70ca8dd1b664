"""FileServer: serves model files to peers holding a grant, over TLS on TCP.

The protocol is drawn in :mod:`meshllm.serving.transfer`.  One server per node,
listening on the TCP port with the number of the node's QUIC UDP port.  Grants
come from :meth:`FileServer.issue_grant` (or :meth:`FileServer.issue_grant_async`,
which hashes off the event loop) and travel to the peer over QUIC.  A bad
grant, a bad mac, garbage or a peer hanging up closes that one connection and
is logged; it never escapes the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshllm.errors import FrameError, TransferError
from meshllm.gossip.frames import Frame, FrameDecoder, FrameType, encode_frame, make_frame
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

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # TLS handshake and the request frame
CLOSE_TIMEOUT = 30.0  # after the last byte, how long the client may take to hang up
SEND_STALL_TIMEOUT = 60.0  # a client that reads nothing for this long loses its connection
MAX_CLIENTS = 32  # concurrent connections; more are closed at once
MAX_GRANTS = 256  # outstanding grants; the oldest go first
WRITE_HIGH_WATER = 4 * CHUNK_SIZE  # keep a few chunks in flight per connection


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
    ) -> None:
        self._resolve = resolve
        self._ssl = server_ssl_context(cert_pem, key_pem)
        self._cert_sha256 = cert_sha256(cert_pem)
        self._mesh_secret = mesh_secret
        self._grant_ttl = grant_ttl
        self._clock = clock  # wall clock: grants carry absolute expiry times
        self._lock = threading.Lock()  # grants and digests are touched from hashing threads
        self._grants: dict[bytes, _Issued] = {}
        self.digests = digests or FileDigests()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def cert_sha256(self) -> bytes:
        """sha256 of this server's certificate DER: what clients pin."""
        return self._cert_sha256

    @property
    def port(self) -> int:
        """The TCP port bound by :meth:`start` (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise TransferError("file server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (TCP)."""
        if self._server is not None:
            raise TransferError("file server already started")
        try:
            self._server = await asyncio.start_server(
                self._on_connection,
                host,
                port,
                ssl=self._ssl,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except OSError as exc:
            raise TransferError(f"cannot listen on {host}:{port}: {exc}") from exc

    async def stop(self) -> None:
        """Stop listening and cut every copy in flight (clients keep their ``.part``)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

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

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        if self._server is None:  # its TLS handshake ended after stop()
            writer.transport.abort()
            return
        if len(self._connections) >= MAX_CLIENTS:
            logger.warning("file server busy: closing connection from %s", peer)
            writer.transport.abort()
            return
        self._connections[task] = writer
        try:
            await self._serve(reader, writer, peer)
        except _Refused as exc:
            logger.warning("file copy to %s refused: %s", peer, exc)
            with contextlib.suppress(Exception):
                writer.write(encode_frame(make_frame(FrameType.ERROR, message=str(exc))))
                await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT)
        except (FrameError, TransferError, OSError, EOFError, TimeoutError) as exc:
            logger.info("file copy to %s failed: %s", peer, exc or type(exc).__name__)
        except asyncio.CancelledError:
            pass  # stop(): the client keeps its .part and resumes elsewhere or later
        except Exception:
            logger.exception("file copy to %s crashed", peer)
        finally:
            self._connections.pop(task, None)
            if task.cancelling():
                writer.transport.abort()
            else:
                writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any
    ) -> None:
        server_nonce = secrets.token_bytes(NONCE_SIZE)
        writer.write(encode_frame(make_frame(FrameType.FILE, op="hello", nonce=server_nonce)))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            request = await _read_frame(reader)
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
        await _send_range(writer, issued.path, offset, grant.size)
        # Let the client hang up first (see the module docstring of transfer.py).
        async with asyncio.timeout(CLOSE_TIMEOUT):
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


async def _read_frame(reader: asyncio.StreamReader) -> Frame:
    decoder = FrameDecoder(max_size=MAX_HEADER_FRAME)
    while True:
        data = await reader.read(MAX_HEADER_FRAME)
        if not data:
            raise EOFError("client hung up during the handshake")
        frames = decoder.feed(data)
        if frames:
            return frames[0]


async def _send_range(writer: asyncio.StreamWriter, path: Path, offset: int, size: int) -> None:
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
            async with asyncio.timeout(SEND_STALL_TIMEOUT):
                await writer.drain()
    finally:
        if pending is not None:  # a read still runs on the fd: let it end before closing
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        os.close(fd)
