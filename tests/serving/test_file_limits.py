"""The model-file port's budgets (FileServerLimits), against the real FileServer.

The attack of the security review: unauthenticated idle TCP connections to the file
port took a node from 221 to 1,111 MB for good under uvloop.  The count is capped at
the TCP accept, before any TLS state, and each connection has one deadline from the
accept to a valid ``get`` frame.  Each flood test runs under asyncio and uvloop.
Budgets are shortened through ``FileServerLimits``; waits are on conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest

from meshllm.serving.file_server import FileServer, FileServerLimits
from meshllm.serving.transfer import client_ssl_context
from tests.serving.test_transfer import HOST, SECRET, add_model, fetch, make_cert, sha

MB = 1 << 20
CERT = make_cert()


def rss() -> int:
    return psutil.Process().memory_info().rss


def run(loop_kind: str, coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on a fresh event loop of ``loop_kind`` ("asyncio" or "uvloop")."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    else:
        with asyncio.Runner() as runner:
            runner.run(coro)


async def wait_for(cond: Callable[[], object], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def started(models: dict[str, Path] | None = None, **changes: Any) -> FileServer:
    models = models if models is not None else {}
    server = FileServer(models.get, CERT[0], CERT[1], SECRET, limits=FileServerLimits(**changes))
    await server.start(HOST, 0)
    return server


async def tcp_connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    return sock


async def closed_by_server(sock: socket.socket, timeout: float = 20.0) -> None:
    """Return once the server has closed ``sock`` (EOF or reset)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            while await loop.sock_recv(sock, 65536):
                pass


async def tls_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, ssl=client_ssl_context())


async def eof(reader: asyncio.StreamReader, timeout: float = 20.0) -> bytes:
    """What comes until the server closes the TLS connection."""
    data = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


LOOPS = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])


@LOOPS
def test_idle_tcp_connections_are_capped_then_closed_after_the_handshake_timeout(
    loop_kind: str,
) -> None:
    async def attack() -> None:
        server = await started(max_connections=16, handshake_timeout=1.5)
        try:
            gc.collect()
            before = rss()
            socks = [await tcp_connect(server.port) for _ in range(300)]
            # 16 held (TLS waiting for a ClientHello that never comes), the rest closed
            # at once: none of those ever had TLS state.
            await wait_for(lambda: server.refused + server.evicted >= 284)
            assert server.connections <= 16
            held = rss() - before
            await asyncio.gather(*(closed_by_server(s) for s in socks))  # all closed
            await wait_for(lambda: server.connections == 0)
            for sock in socks:
                sock.close()
            print(f"\n{loop_kind}: 300 idle connections: RSS +{held / MB:.1f} MB while held")
            # Before the cap (TLS per connection): asyncio +~90 MB for 300, +~300 for 1,000.
            assert held < 25 * MB
        finally:
            await server.stop()

    run(loop_kind, attack())


@LOOPS
def test_at_the_cap_a_real_copy_takes_the_place_of_an_idle_connection(
    loop_kind: str, tmp_path: Path
) -> None:
    async def attack() -> None:
        models: dict[str, Path] = {}
        src = add_model(models, tmp_path, "m", 3 * MB + 7)
        server = await started(models, max_connections=8, handshake_timeout=30.0)
        try:
            socks = [await tcp_connect(server.port) for _ in range(8)]  # the cap, idle
            await wait_for(lambda: server.connections == 8)
            await asyncio.sleep(1.1)  # they have waited over a second: evictable
            grant = server.issue_grant("m")
            assert grant is not None
            dest = tmp_path / "dest"
            dest.mkdir()
            got = await fetch(server, grant, dest)
            assert sha(got) == sha(src)
            assert server.evicted == 1
            await closed_by_server(socks[0], timeout=5)  # the oldest idle one made room
            for sock in socks:
                sock.close()
        finally:
            await server.stop()

    run(loop_kind, attack())


async def test_over_the_cap_without_an_idle_connection_to_cut_a_new_one_is_closed() -> None:
    server = await started(max_connections=4, handshake_timeout=30.0)
    try:
        socks = [await tcp_connect(server.port) for _ in range(4)]
        await wait_for(lambda: server.connections == 4)
        late = await tcp_connect(server.port)  # the others are all younger than a second
        await closed_by_server(late, timeout=5)
        assert server.refused == 1
        assert server.connections == 4
        for sock in [*socks, late]:
            sock.close()
    finally:
        await server.stop()


async def test_a_tls_handshake_that_never_finishes_is_cut() -> None:
    server = await started(handshake_timeout=0.5)
    try:
        sock = await tcp_connect(server.port)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's start
        await closed_by_server(sock)
        await wait_for(lambda: server.connections == 0)
        sock.close()
    finally:
        await server.stop()


async def test_a_client_through_tls_that_sends_no_request_is_cut() -> None:
    server = await started(handshake_timeout=1.0)
    try:
        reader, writer = await tls_connect(server.port)
        data = await eof(reader)  # the hello frame, then the close
        assert b"hello" in data
        await wait_for(lambda: server.connections == 0)
        writer.close()
    finally:
        await server.stop()


async def test_bytes_before_the_request_frame_are_capped() -> None:
    server = await started(handshake_timeout=30.0, max_handshake_bytes=100)
    try:
        reader, writer = await tls_connect(server.port)
        writer.write(struct.pack(">I", 4000) + b"\0" * 500)  # a frame that would be 4,000 bytes
        await writer.drain()
        await eof(reader, timeout=10)  # long before the 30 s deadline
        await wait_for(lambda: server.connections == 0)
        writer.close()
    finally:
        await server.stop()


async def test_stop_cuts_connections_still_handshaking() -> None:
    server = await started(handshake_timeout=30.0)
    sock = await tcp_connect(server.port)
    await wait_for(lambda: server.connections == 1)
    await server.stop()
    await closed_by_server(sock, timeout=5)
    sock.close()
    assert server.connections == 0
