"""Benchmark a model file copy: FileServer -> fetch_file over TLS on 127.0.0.1.

Writes a random file (256 MB by default), serves it from a FileServer in a
child process (its own event loop and core, as between two nodes), fetches it
with fetch_file and prints MB/s.  The sha256 of the source is computed at the
grant, before the clock starts; the figure includes the receiver's hashing,
disk writes and the final fsync.

    python scripts/bench_transfer.py [--mb 256] [--runs 3] [--uvloop] [--same-process]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import secrets
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID

from meshllm.serving.file_client import fetch_file
from meshllm.serving.file_server import FileServer

MB = 1_000_000


def make_cert() -> tuple[bytes, bytes]:
    """A self-signed Ed25519 certificate and key, PEM, as nodes have."""
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return cert.public_bytes(Encoding.PEM), key_pem


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 24)
            f.write(os.urandom(n))
            left -= n


def _use_uvloop(enabled: bool) -> None:
    if enabled:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(src: Path, cert: bytes, key: bytes, secret: bytes, conn, uvloop: bool) -> None:
    """Child process: a FileServer that answers grant requests sent over ``conn``."""
    _use_uvloop(uvloop)

    async def main() -> None:
        server = FileServer(lambda n: src if n == "bench" else None, cert, key, secret)
        await server.start("127.0.0.1", 0)
        conn.send(server.port)
        loop = asyncio.get_running_loop()
        while (request := await loop.run_in_executor(None, conn.recv)) is not None:
            conn.send((await server.issue_grant_async(request)).to_wire())
        await server.stop()

    asyncio.run(main())


async def fetch_once(
    port: int, grant_wire: dict, pin: bytes, secret: bytes, dest: Path
) -> tuple[float, float]:
    from meshllm.serving.transfer import Grant

    grant = Grant.from_wire(grant_wire)
    start = time.perf_counter()
    path = await fetch_file(
        "127.0.0.1", port, grant=grant, pinned_cert_sha256=pin, mesh_secret=secret, dest_dir=dest
    )
    elapsed = time.perf_counter() - start
    assert path.stat().st_size == grant.size
    path.unlink()
    return grant.size / MB / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run both loops on uvloop")
    parser.add_argument(
        "--same-process", action="store_true", help="server and client on one event loop"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    _use_uvloop(args.uvloop)

    cert, key = make_cert()
    secret = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src, dest = Path(tmp, "src.gguf"), Path(tmp, "dest")
        write_random(src, args.mb * MB)
        if args.same_process:
            results = asyncio.run(_same_process(src, cert, key, secret, dest, args.runs))
        else:
            results = _two_processes(src, cert, key, secret, dest, args.runs, args.uvloop)
    loop_name = "uvloop" if args.uvloop else "asyncio"
    where = "one process" if args.same_process else "two processes"
    for i, (rate, elapsed) in enumerate(results, 1):
        print(f"run {i}: {args.mb} MB in {elapsed:.3f} s = {rate:.0f} MB/s")
    best = max(rate for rate, _ in results)
    print(f"best {best:.0f} MB/s ({loop_name}, {where}, TLS 1.3 on 127.0.0.1, incl. sha256+fsync)")


async def _same_process(
    src: Path, cert: bytes, key: bytes, secret: bytes, dest: Path, runs: int
) -> list[tuple[float, float]]:
    server = FileServer(lambda n: src if n == "bench" else None, cert, key, secret)
    await server.start("127.0.0.1", 0)
    try:
        results = []
        for _ in range(runs):
            grant = await server.issue_grant_async("bench")
            assert grant is not None
            results.append(
                await fetch_once(server.port, grant.to_wire(), server.cert_sha256, secret, dest)
            )
        return results
    finally:
        await server.stop()


def _two_processes(
    src: Path, cert: bytes, key: bytes, secret: bytes, dest: Path, runs: int, uvloop: bool
) -> list[tuple[float, float]]:
    from meshllm.serving.transfer import cert_sha256

    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=serve, args=(src, cert, key, secret, theirs, uvloop)
    )
    child.start()
    try:
        port = ours.recv()
        results = []
        for _ in range(runs):
            ours.send("bench")
            grant_wire = ours.recv()
            results.append(asyncio.run(fetch_once(port, grant_wire, cert_sha256(cert), secret, dest)))
        ours.send(None)
        return results
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()


if __name__ == "__main__":
    main()
