"""fetch_file: copy a model file from a peer's FileServer, resumably, over TLS on TCP.

The protocol is drawn in :mod:`meshllm.serving.transfer`.  Bytes land in
``NAME.gguf.part``; a later fetch continues from its size.  The receiver is an
:class:`asyncio.BufferedProtocol` that decrypts straight into 1 MiB buffers
(DESIGN.md §9: ~3x asyncio streams) while a thread of its own hashes and writes
the full ones, so decryption, hashing and disk writes overlap.  With TLS on
Python 3.11 ``get_buffer`` must hand out memoryviews: asyncio's sslproto reads
into ``buf[offset:]``, which for a bytearray is a copy, and the data is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from meshllm.errors import FrameError, TransferError
from meshllm.serving.transfer import (
    CHUNK_SIZE,
    GGUF_SUFFIX,
    MAX_HEADER_FRAME,
    NONCE_SIZE,
    PART_SUFFIX,
    Grant,
    client_ssl_context,
    is_safe_name,
    make_proof,
)
from meshllm.wire import Frame, FrameDecoder, FrameType, encode_frame, make_frame

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # TCP connect, TLS handshake and the header exchange, each
STALL_TIMEOUT = 30.0  # no byte for this long: give up (the .part stays for a resume)
BUFFERS = 4  # 1 MiB receive buffers per copy: enough to keep the disk thread busy

Progress = Callable[[int, int], None]


async def fetch_file(
    host: str,
    port: int,
    *,
    grant: Grant,
    pinned_cert_sha256: bytes,
    mesh_secret: bytes,
    dest_dir: Path,
    progress: Progress | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    stall_timeout: float = STALL_TIMEOUT,
) -> Path:
    """Copy ``grant``'s file from the FileServer at ``host:port`` to ``dest_dir/NAME.gguf``.

    Resumes from ``NAME.gguf.part`` if one exists, checks the sha256 of the whole
    file, then renames it into place and returns the path.  ``progress(done, total)``
    is called on the loop with increasing byte counts.  Raises :class:`TransferError`
    on a certificate that does not match the pin, a refused grant, a cut or stalled
    connection (the ``.part`` stays) or a wrong sha256 (the ``.part`` is deleted).
    """
    if not is_safe_name(grant.name):
        raise TransferError(f"unsafe model name {grant.name!r}")
    dest_dir = Path(dest_dir)
    final = dest_dir / f"{grant.name}{GGUF_SUFFIX}"
    part = final.with_name(final.name + PART_SUFFIX)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        offset, hasher = await asyncio.to_thread(_resume_state, part, grant.size)
    except OSError as exc:
        raise TransferError(f"cannot prepare {part}: {exc}") from exc

    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            transport, receiver = await loop.create_connection(
                lambda: _Receiver(loop),
                host,
                port,
                ssl=client_ssl_context(),
                ssl_handshake_timeout=connect_timeout,
            )
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        raise TransferError(f"cannot reach the file server at {host}:{port}: {exc}") from exc
    try:
        _check_pin(transport, pinned_cert_sha256)
        try:
            async with asyncio.timeout(connect_timeout):
                await _handshake(
                    receiver, transport, grant, offset, mesh_secret, pinned_cert_sha256
                )
        except TimeoutError:
            raise TransferError(f"no answer from the file server at {host}:{port}") from None
        await _receive(receiver, part, offset, hasher, grant.size, progress, stall_timeout)
    except BaseException:
        transport.abort()
        raise
    transport.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await receiver.closed

    if hasher.digest() != grant.sha256:
        part.unlink(missing_ok=True)
        raise TransferError(f"sha256 of {grant.name} does not match the grant: copy deleted")
    os.replace(part, final)
    return final


def _resume_state(part: Path, size: int) -> tuple[int, Any]:
    """The offset to resume from and a sha256 of the bytes already there."""
    hasher = hashlib.sha256()
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return 0, hasher
    if have > size:  # a leftover of some other file: start over
        part.unlink()
        return 0, hasher
    with open(part, "rb", buffering=0) as f:
        buffer = memoryview(bytearray(CHUNK_SIZE))
        left = have
        while left and (n := f.readinto(buffer[: min(CHUNK_SIZE, left)])):
            hasher.update(buffer[:n])
            left -= n
    return have - left, hasher


def _check_pin(transport: asyncio.BaseTransport, pinned: bytes) -> None:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der or not hmac.compare_digest(hashlib.sha256(der).digest(), pinned):
        raise TransferError("the file server's certificate does not match the pinned one")


async def _read_frame(receiver: _Receiver) -> Frame:
    """One handshake frame, read to its last byte and not one further (the body follows)."""
    decoder = FrameDecoder(max_size=MAX_HEADER_FRAME)
    try:
        head = await receiver.read_exactly(4)
        decoder.feed(head)  # raises on a length over the cap
        frames = decoder.feed(await receiver.read_exactly(int.from_bytes(head, "big")))
    except FrameError as exc:
        raise TransferError(f"bad handshake frame from the file server: {exc}") from exc
    if not frames:
        raise TransferError("empty handshake frame from the file server")
    frame = frames[0]
    if frame["t"] == FrameType.ERROR:
        raise TransferError(f"the file server refused the copy: {frame.get('message')}")
    if frame["t"] != FrameType.FILE:
        raise TransferError(f"unexpected {frame['t']!r} frame from the file server")
    return frame


async def _handshake(
    receiver: _Receiver,
    transport: asyncio.Transport,
    grant: Grant,
    offset: int,
    mesh_secret: bytes,
    cert_sha256: bytes,
) -> None:
    hello = await _read_frame(receiver)
    server_nonce = hello.get("nonce")
    if hello.get("op") != "hello" or not isinstance(server_nonce, bytes):
        raise TransferError("bad hello from the file server")
    if len(server_nonce) != NONCE_SIZE:
        raise TransferError("bad nonce from the file server")
    client_nonce = secrets.token_bytes(NONCE_SIZE)
    mac = make_proof(mesh_secret, client_nonce, server_nonce, cert_sha256, grant.token)
    request = make_frame(
        FrameType.FILE, op="get", token=grant.token, offset=offset, nonce=client_nonce, mac=mac
    )
    transport.write(encode_frame(request))
    accept = await _read_frame(receiver)
    if (
        accept.get("op") != "accept"
        or accept.get("name") != grant.name
        or accept.get("size") != grant.size
        or accept.get("offset") != offset
    ):
        raise TransferError(f"the file server answered with a bad accept: {accept}")


async def _receive(
    receiver: _Receiver,
    part: Path,
    offset: int,
    hasher: Any,
    size: int,
    progress: Progress | None,
    stall_timeout: float,
) -> None:
    """Receive ``[offset, size)`` into ``part``; the hash and the file are complete after."""
    loop = asyncio.get_running_loop()
    try:
        file = open(part, "r+b" if offset else "wb")  # noqa: SIM115 (the writer thread closes it)
        file.seek(offset)
        file.truncate()
    except OSError as exc:
        raise TransferError(f"cannot write {part}: {exc}") from exc
    done = offset

    def on_written(view: memoryview, n: int) -> None:
        nonlocal done
        receiver.release(view)
        done += n
        if progress is not None:
            try:
                progress(done, size)
            except Exception:
                logger.exception("progress callback failed")

    def on_error(exc: BaseException) -> None:
        receiver.fail(TransferError(f"cannot write {part}: {exc}"))

    writer = _DiskWriter(file, hasher, loop, on_written, on_error)
    try:
        if progress is not None:
            with contextlib.suppress(Exception):
                progress(offset, size)
        received = receiver.start_body(size - offset, writer.submit)
        while not received.done():
            before = receiver.received
            await asyncio.wait([received], timeout=stall_timeout)
            if not received.done() and receiver.received == before:
                raise TransferError(f"the copy stalled for {stall_timeout:.0f} s")
        received.result()
    finally:
        writer.close()
        await asyncio.shield(writer.finished)  # the .part is whole (and closed) once it ends


class _Receiver(asyncio.BufferedProtocol):
    """Reads handshake frames byte-exact, then the body into a ring of 1 MiB buffers."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self._error: TransferError | None = None
        # Handshake: one exact read at a time, reading paused in between.
        self._want: memoryview | None = None
        self._want_fill = 0
        self._want_future: asyncio.Future[bytes] | None = None
        # Body.
        self._sink: Callable[[memoryview, int], None] | None = None
        self._body_done: asyncio.Future[None] | None = None
        self._total = 0
        self.received = 0
        self._free: deque[memoryview] = deque()
        self._current: memoryview | None = None
        self._fill = 0
        self._scratch = memoryview(bytearray(MAX_HEADER_FRAME))  # for bytes nobody asked for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.pause_reading()  # nothing is read before the pin is checked and asked for

    async def read_exactly(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        if self._error is not None:
            raise self._error
        if n == 0:  # an empty buffer would read as the peer's close_notify
            return b""
        assert self._transport is not None and self._want is None
        self._want, self._want_fill = memoryview(bytearray(n)), 0
        self._want_future = self._new_future()
        self._transport.resume_reading()
        return await self._want_future

    def start_body(
        self, total: int, sink: Callable[[memoryview, int], None]
    ) -> asyncio.Future[None]:
        """Hand the next ``total`` bytes to ``sink`` by chunks; the future ends with them."""
        assert self._transport is not None
        self._sink, self._total = sink, total
        self._body_done = self._new_future()
        if self._error is not None:
            self._body_done.set_exception(self._error)
        elif total == 0:
            self._body_done.set_result(None)
        else:
            self._free.extend(memoryview(bytearray(CHUNK_SIZE)) for _ in range(BUFFERS))
            self._current, self._fill = self._free.popleft(), 0
            self._transport.resume_reading()
        return self._body_done

    def release(self, view: memoryview) -> None:
        """A buffer the sink is done with: read into it again."""
        if self._current is None and self.received < self._total and self._error is None:
            self._current, self._fill = view, 0
            assert self._transport is not None
            self._transport.resume_reading()
        else:
            self._free.append(view)

    def fail(self, error: TransferError) -> None:
        """Abort the connection; pending reads raise ``error``."""
        self._settle(error)
        if self._transport is not None:
            self._transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._want is not None:
            return self._want[self._want_fill :]
        if self._sink is not None and self.received < self._total:
            if self._current is None:  # reading is paused while no buffer is free; just in case
                self._current, self._fill = memoryview(bytearray(CHUNK_SIZE)), 0
            end = min(CHUNK_SIZE, self._fill + self._total - self.received)
            return self._current[self._fill : end]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        assert self._transport is not None
        if self._want is not None:
            self._want_fill += nbytes
            if self._want_fill == len(self._want):
                data, self._want = self._want.tobytes(), None
                self._transport.pause_reading()
                if self._want_future is not None and not self._want_future.done():
                    self._want_future.set_result(data)
        elif self._sink is not None and self.received < self._total:
            self._fill += nbytes
            self.received += nbytes
            if self._fill == CHUNK_SIZE or self.received == self._total:
                self._flush()
                if self.received == self._total:
                    assert self._body_done is not None
                    if not self._body_done.done():
                        self._body_done.set_result(None)
                elif self._current is None:
                    self._transport.pause_reading()  # backpressure: the disk is behind
        else:
            self.fail(TransferError("the file server sent more than it announced"))

    def eof_received(self) -> None:
        return None  # close; connection_lost tells the waiters

    def connection_lost(self, exc: Exception | None) -> None:
        if self._current is not None and self._fill:
            self._flush()  # keep every byte that arrived: the .part resumes after them
        reason = f": {exc}" if exc else ""
        self._settle(TransferError(f"the file server closed the connection{reason}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _flush(self) -> None:
        assert self._sink is not None and self._current is not None
        view, fill = self._current, self._fill
        self._current = self._free.popleft() if self._free else None
        self._fill = 0
        self._sink(view, fill)

    def _settle(self, error: TransferError) -> None:
        if self._error is None:
            self._error = error
        for future in (self._want_future, self._body_done):
            if future is not None and not future.done():
                future.set_exception(self._error)

    def _new_future(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        # Retrieve a failure nobody awaited any more (the caller gave up first): no log noise.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future


class _DiskWriter:
    """Hashes and writes received chunks, in order, on a thread of its own; then fsyncs."""

    def __init__(
        self,
        file: BinaryIO,
        hasher: Any,
        loop: asyncio.AbstractEventLoop,
        on_written: Callable[[memoryview, int], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._file = file
        self._hasher = hasher
        self._loop = loop
        self._on_written = on_written
        self._on_error = on_error
        self._queue: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.finished.add_done_callback(lambda f: f.cancelled() or f.exception())
        threading.Thread(target=self._run, name="meshllm-fetch-writer", daemon=True).start()

    def submit(self, view: memoryview, n: int) -> None:
        """Queue the first ``n`` bytes of ``view``; ``on_written`` hands the view back."""
        self._queue.put((view, n))

    def close(self) -> None:
        """No more chunks: finish the queued ones, fsync, close the file."""
        self._queue.put(None)

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while (item := self._queue.get()) is not None:
                if error is not None:
                    continue
                view, n = item
                try:
                    data = view[:n]
                    self._hasher.update(data)  # both release the GIL for large buffers
                    self._file.write(data)
                except Exception as exc:
                    error = exc
                    self._post(self._on_error, exc)
                    continue
                self._post(self._on_written, view, n)
            if error is None:
                self._file.flush()
                os.fsync(self._file.fileno())  # the copy survives a crash once renamed
        except Exception as exc:
            error = error or exc
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
            self._post(self._finish, error)

    def _finish(self, error: BaseException | None) -> None:
        if self.finished.done():
            return
        if error is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(TransferError(f"cannot write the copy: {error}"))

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)
