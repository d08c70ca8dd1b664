"""Model file copies: Grant, FileServer and fetch_file over TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from meshllm.errors import FrameError, TransferError
from meshllm.serving import file_server
from meshllm.serving.file_client import fetch_file
from meshllm.serving.file_server import FileServer
from meshllm.serving.transfer import Grant, cert_sha256, client_ssl_context, server_ssl_context
from meshllm.wire import FrameType, encode_frame, make_frame

MB = 1 << 20
SECRET = b"s" * 32
HOST = "127.0.0.1"


def make_cert(name: str = "node") -> tuple[bytes, bytes]:
    """A self-signed Ed25519 certificate and key in PEM, as meshllm nodes have."""
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, None)
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return cert.public_bytes(Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def cert() -> tuple[bytes, bytes]:
    return make_cert()


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """Model name -> file; the source files of the server under test."""
    return {}


def add_model(models: dict[str, Path], directory: Path, name: str, size: int) -> Path:
    path = directory / f"src-{name}.gguf"
    path.write_bytes(os.urandom(size))
    models[name] = path
    return path


class Clock:
    """A settable wall clock for grant expiry."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def server(
    cert: tuple[bytes, bytes], models: dict[str, Path], clock: Clock
) -> AsyncIterator[FileServer]:
    file_server = FileServer(models.get, cert[0], cert[1], SECRET, clock=clock)
    await file_server.start(HOST, 0)
    yield file_server
    await file_server.stop()


@pytest.fixture
def src(models: dict[str, Path], tmp_path: Path) -> Path:
    """A random ~20 MB model named 'm' (not a multiple of the chunk size)."""
    return add_model(models, tmp_path, "m", 20 * MB + 12345)


async def fetch(
    server: FileServer,
    grant: Grant,
    dest: Path,
    *,
    port: int | None = None,
    secret: bytes = SECRET,
    pin: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: float,
) -> Path:
    return await fetch_file(
        HOST,
        port or server.port,
        grant=grant,
        pinned_cert_sha256=pin or server.cert_sha256,
        mesh_secret=secret,
        dest_dir=dest,
        progress=progress,
        **kwargs,
    )


def sha(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def part_of(dest: Path, name: str = "m") -> Path:
    return dest / f"{name}.gguf.part"


class CutProxy:
    """A TCP relay that passes ``limit`` bytes from the server, then cuts (or hangs)."""

    def __init__(self, target_port: int, limit: int, hang: bool = False) -> None:
        self.target_port, self.limit, self.hang = target_port, limit, hang
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._relay, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        s_reader, s_writer = await asyncio.open_connection(HOST, self.target_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            while data := await r.read(65536):
                if limit is not None and sent + len(data) > limit:
                    w.write(data[: limit - sent])
                    await w.drain()
                    if self.hang:
                        await asyncio.sleep(3600)
                    return
                sent += len(data)
                w.write(data)
                await w.drain()

        up = asyncio.ensure_future(pipe(c_reader, s_writer, None))
        try:
            await pipe(s_reader, c_writer, self.limit)
        except (asyncio.CancelledError, OSError):
            pass  # asyncio's stream callback logs an error for a cancelled handler task
        finally:
            up.cancel()
            for w in (c_writer, s_writer):
                w.transport.abort()


# Grant


def test_grant_wire_roundtrip() -> None:
    grant = Grant("m", 5, b"h" * 32, b"t" * 32, 12.5)
    assert Grant.from_wire(grant.to_wire()) == grant
    assert "token" not in repr(grant)


@pytest.mark.parametrize(
    "change",
    [
        {"name": 3},
        {"size": -1},
        {"size": True},
        {"sha256": b"short"},
        {"token": "t" * 32},
        {"expires": "soon"},
        {"name": None},
    ],
)
def test_grant_from_wire_rejects_bad_fields(change: dict[str, object]) -> None:
    wire = Grant("m", 5, b"h" * 32, b"t" * 32, 12.5).to_wire() | change
    with pytest.raises(FrameError):
        Grant.from_wire(wire)


def test_grant_from_wire_rejects_missing_field() -> None:
    wire = Grant("m", 5, b"h" * 32, b"t" * 32, 12.5).to_wire()
    del wire["token"]
    with pytest.raises(FrameError):
        Grant.from_wire(wire)


async def test_issue_grant_unknown_name_is_none(server: FileServer) -> None:
    assert server.issue_grant("nope") is None
    assert await server.issue_grant_async("nope") is None


async def test_issue_grant_caches_digest_per_size_and_mtime(server: FileServer, src: Path) -> None:
    first = server.issue_grant("m")
    assert first is not None and first.sha256 == sha(src)
    st = src.stat()
    with open(src, "r+b") as f:  # same size, same mtime: the cached digest stands
        f.write(b"X" * 10)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = server.issue_grant("m")
    assert again is not None and again.sha256 == first.sha256 and again.token != first.token
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    fresh = await server.issue_grant_async("m")
    assert fresh is not None and fresh.sha256 == sha(src) != first.sha256


# Copies


async def test_fetch_copies_file_with_sha_and_progress(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    seen: list[tuple[int, int]] = []
    path = await fetch(server, grant, tmp_path / "dest", progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "dest" / "m.gguf"
    assert path.read_bytes() == src.read_bytes()
    assert not part_of(tmp_path / "dest").exists()
    done = [d for d, _ in seen]
    assert done[0] == 0 and done[-1] == grant.size
    assert all(a < b for a, b in itertools.pairwise(done))
    assert {t for _, t in seen} == {grant.size}


async def test_fetch_resumes_from_existing_part(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    part_of(dest).write_bytes(src.read_bytes()[: 7 * MB + 3])
    grant = server.issue_grant("m")
    assert grant is not None
    seen: list[int] = []
    path = await fetch(server, grant, dest, progress=lambda d, t: seen.append(d))
    assert seen[0] == 7 * MB + 3  # only the rest came over the wire
    assert path.read_bytes() == src.read_bytes()


async def test_fetch_with_complete_part_just_verifies(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    part_of(dest).write_bytes(src.read_bytes())
    grant = server.issue_grant("m")
    assert grant is not None
    assert sha(await fetch(server, grant, dest)) == grant.sha256


async def test_fetch_restarts_when_part_is_longer_than_file(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    part_of(dest).write_bytes(b"\0" * (src.stat().st_size + 1))
    grant = server.issue_grant("m")
    assert grant is not None
    assert sha(await fetch(server, grant, dest)) == grant.sha256


async def test_fetch_resumes_after_server_stops_mid_copy(
    server: FileServer, models: dict[str, Path], tmp_path: Path
) -> None:
    # Larger than everything the kernel and TLS buffers hold in flight on loopback.
    src = add_model(models, tmp_path, "m", 48 * MB)
    dest = tmp_path / "dest"
    grant = server.issue_grant("m")
    assert grant is not None
    stopping: list[asyncio.Task[None]] = []

    def stop_early(done: int, total: int) -> None:
        if done > 0 and not stopping:
            stopping.append(asyncio.get_running_loop().create_task(server.stop()))

    with pytest.raises(TransferError, match="closed"):
        await fetch(server, grant, dest, progress=stop_early)
    await stopping[0]
    kept = part_of(dest).stat().st_size
    assert 0 < kept < src.stat().st_size
    assert part_of(dest).read_bytes() == src.read_bytes()[:kept]

    await server.start(HOST, 0)
    grant = server.issue_grant("m")
    assert grant is not None
    seen: list[int] = []
    path = await fetch(server, grant, dest, progress=lambda d, t: seen.append(d))
    assert seen[0] == kept
    assert path.read_bytes() == src.read_bytes()


async def test_fetch_resumes_after_connection_cut(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    grant = server.issue_grant("m")
    assert grant is not None
    async with CutProxy(server.port, limit=5 * MB) as port:
        with pytest.raises(TransferError):
            await fetch(server, grant, dest, port=port)
    kept = part_of(dest).stat().st_size
    assert 0 < kept < 5 * MB
    assert part_of(dest).read_bytes() == src.read_bytes()[:kept]
    grant = server.issue_grant("m")
    assert grant is not None
    assert (await fetch(server, grant, dest)).read_bytes() == src.read_bytes()


async def test_fetch_stalled_connection_raises(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    async with CutProxy(server.port, limit=3 * MB, hang=True) as port:
        with pytest.raises(TransferError, match="stalled"):
            await fetch(server, grant, tmp_path / "dest", port=port, stall_timeout=0.5)
    assert part_of(tmp_path / "dest").exists()


async def test_concurrent_fetches(
    server: FileServer, models: dict[str, Path], tmp_path: Path
) -> None:
    sources = [add_model(models, tmp_path, f"m{i}", 3 * MB + i) for i in range(4)]
    grants = [server.issue_grant(f"m{i}") for i in range(4)] + [server.issue_grant("m0")]
    assert all(grants)
    paths = await asyncio.gather(
        *(fetch(server, g, tmp_path / f"dest{i}") for i, g in enumerate(grants) if g)
    )
    for path, source in zip(paths, [*sources, sources[0]], strict=True):
        assert path.read_bytes() == source.read_bytes()


async def test_fetch_cancelled_keeps_part_and_server_lives(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    grant = server.issue_grant("m")
    assert grant is not None
    started = asyncio.Event()
    task = asyncio.create_task(fetch(server, grant, dest, progress=lambda d, t: started.set()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert part_of(dest).exists()
    grant = server.issue_grant("m")
    assert grant is not None
    assert (await fetch(server, grant, dest)).read_bytes() == src.read_bytes()


# Refusals


async def test_wrong_pin_raises_before_the_token_leaves(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    with pytest.raises(TransferError, match="pinned"):
        await fetch(server, grant, tmp_path / "dest", pin=cert_sha256(make_cert("other")[0]))
    # The token never went out, so the grant is still good.
    assert sha(await fetch(server, grant, tmp_path / "dest")) == grant.sha256


async def test_expired_grant_refused(
    server: FileServer, src: Path, tmp_path: Path, clock: Clock
) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    clock.now = grant.expires + 1
    with pytest.raises(TransferError, match="expired"):
        await fetch(server, grant, tmp_path / "dest")


async def test_unknown_grant_refused(server: FileServer, src: Path, tmp_path: Path) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    forged = dataclasses.replace(grant, token=secrets.token_bytes(32))
    with pytest.raises(TransferError, match="unknown"):
        await fetch(server, forged, tmp_path / "dest")


async def test_reused_grant_refused(server: FileServer, src: Path, tmp_path: Path) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    await fetch(server, grant, tmp_path / "dest")
    with pytest.raises(TransferError, match="already used"):
        await fetch(server, grant, tmp_path / "again")


async def test_wrong_mesh_secret_refused(server: FileServer, src: Path, tmp_path: Path) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    with pytest.raises(TransferError, match="proof"):
        await fetch(server, grant, tmp_path / "dest", secret=b"x" * 32)
    with pytest.raises(TransferError, match="already used"):  # one try per grant
        await fetch(server, grant, tmp_path / "dest")


async def test_file_changed_since_grant_refused(
    server: FileServer, src: Path, tmp_path: Path
) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(TransferError, match="changed"):
        await fetch(server, grant, tmp_path / "dest")


async def test_sha_mismatch_deletes_part(server: FileServer, src: Path, tmp_path: Path) -> None:
    grant = server.issue_grant("m")
    assert grant is not None
    corrupt = dataclasses.replace(grant, sha256=b"\0" * 32)  # the file is not what was promised
    with pytest.raises(TransferError, match="sha256"):
        await fetch(server, corrupt, tmp_path / "dest")
    assert not part_of(tmp_path / "dest").exists()
    assert not (tmp_path / "dest" / "m.gguf").exists()


async def test_unsafe_name_rejected(server: FileServer, tmp_path: Path) -> None:
    grant = Grant("../evil", 1, b"h" * 32, b"t" * 32, 0.0)
    with pytest.raises(TransferError, match="unsafe"):
        await fetch(server, grant, tmp_path / "dest")


async def test_unreachable_server_raises(server: FileServer, tmp_path: Path) -> None:
    grant = Grant("m", 1, b"h" * 32, b"t" * 32, 0.0)
    port = server.port
    await server.stop()
    with pytest.raises(TransferError, match="cannot reach"):
        await fetch_file(
            HOST,
            port,
            grant=grant,
            pinned_cert_sha256=b"p" * 32,
            mesh_secret=SECRET,
            dest_dir=tmp_path,
        )


# Robustness


async def _tls_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, ssl=client_ssl_context())


async def _until_closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(65536):
                pass


async def test_garbage_does_not_kill_server(
    server: FileServer, src: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshllm.serving.file_server")
    # Not TLS at all.
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(os.urandom(5000))
    await _until_closed(reader)
    writer.close()
    # TLS, then a frame length over the cap.
    reader, writer = await _tls_connect(server.port)
    writer.write(b"\xff" * 64)
    await _until_closed(reader)
    writer.close()
    # TLS, then a well-formed frame of the wrong shape.
    reader, writer = await _tls_connect(server.port)
    writer.write(encode_frame(make_frame(FrameType.FILE, op="get", token="x", offset=-1)))
    await _until_closed(reader)
    writer.close()
    # TLS, then hanging up at once.
    reader, writer = await _tls_connect(server.port)
    writer.transport.abort()
    # Connect and hang up before the TLS handshake.
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.transport.abort()

    grant = server.issue_grant("m")
    assert grant is not None
    assert sha(await fetch(server, grant, tmp_path / "dest")) == grant.sha256
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_silent_server_times_out(cert: tuple[bytes, bytes], tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # says nothing, waits for the client to give up
        writer.close()

    silent_server = await asyncio.start_server(
        silent, HOST, 0, ssl=server_ssl_context(cert[0], cert[1])
    )
    port = silent_server.sockets[0].getsockname()[1]
    grant = Grant("m", 1, b"h" * 32, b"t" * 32, 0.0)
    try:
        with pytest.raises(TransferError, match="no answer"):
            await fetch_file(
                HOST,
                port,
                grant=grant,
                pinned_cert_sha256=cert_sha256(cert[0]),
                mesh_secret=SECRET,
                dest_dir=tmp_path,
                connect_timeout=0.3,
            )
    finally:
        silent_server.close()
        await silent_server.wait_closed()


async def test_oldest_grants_dropped_past_the_cap(
    server: FileServer, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_server, "MAX_GRANTS", 2)
    first, second, third = (server.issue_grant("m") for _ in range(3))
    assert first and second and third
    with pytest.raises(TransferError, match="unknown"):
        await fetch(server, first, tmp_path / "dest")
    assert sha(await fetch(server, third, tmp_path / "dest")) == third.sha256
