"""Benchmark a model file copy: FileServer -> fetch_file over TLS on 127.0.0.1.

Writes a random file (256 MB by default), serves it from a FileServer in a
child process (its own event loop and core, as between two nodes), fetches it
with fetch_file and prints MB/s.  The sha256 of the source is computed at the
grant, before the clock starts; the figure includes the receiver's hashing,
disk writes and the final fsync.  CPU seconds of both ends are printed too:
on a shared machine they are steadier than wall-clock rates.

    python scripts/bench_transfer.py [--mb 256] [--runs 3] [--uvloop] [--same-process]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import resource
import secrets
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from meshllm.serving.file_client import fetch_file
from meshllm.serving.file_server import FileServer
from meshllm.serving.transfer import Grant, cert_sha256

MB = 1_000_000
HOST = "127.0.0.1"


@dataclass
class Run:
    """One copy's figures."""

    size: int
    seconds: float
    client_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.size / MB / self.seconds


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


def cpu_seconds() -> float:
    """User plus system CPU time of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def use_uvloop(enabled: bool) -> None:
    if enabled:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(src: Path, cert: bytes, key: bytes, secret: bytes, conn: Connection, uv: bool) -> None:
    """Child process: a FileServer; the parent asks it for grants and CPU time."""
    use_uvloop(uv)

    async def main() -> None:
        server = FileServer(lambda n: src if n == "bench" else None, cert, key, secret)
        await server.start(HOST, 0)
        conn.send(server.port)
        loop = asyncio.get_running_loop()
        while (request := await loop.run_in_executor(None, conn.recv)) is not None:
            if request == "cpu":
                conn.send(cpu_seconds())
            else:
                grant = await server.issue_grant_async(request)
                assert grant is not None
                conn.send(grant.to_wire())
        await server.stop()

    asyncio.run(main())


async def fetch_once(port: int, grant: Grant, pin: bytes, secret: bytes, dest: Path) -> Run:
    start, cpu = time.perf_counter(), cpu_seconds()
    path = await fetch_file(
        HOST, port, grant=grant, pinned_cert_sha256=pin, mesh_secret=secret, dest_dir=dest
    )
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert path.stat().st_size == grant.size
    path.unlink()
    return Run(grant.size, seconds, cpu, 0.0)


async def same_process(
    src: Path, cert: bytes, key: bytes, secret: bytes, dest: Path, runs: int
) -> list[Run]:
    """Server and client on one loop: their CPU is all counted as the client's."""
    server = FileServer(lambda n: src if n == "bench" else None, cert, key, secret)
    await server.start(HOST, 0)
    try:
        results = []
        for _ in range(runs):
            grant = await server.issue_grant_async("bench")
            assert grant is not None
            results.append(await fetch_once(server.port, grant, server.cert_sha256, secret, dest))
        return results
    finally:
        await server.stop()


def two_processes(
    src: Path, cert: bytes, key: bytes, secret: bytes, dest: Path, runs: int, uv: bool
) -> list[Run]:
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=serve, args=(src, cert, key, secret, theirs, uv)
    )
    child.start()
    try:
        port = ours.recv()
        results = []
        for _ in range(runs):
            ours.send("bench")
            grant = Grant.from_wire(ours.recv())
            ours.send("cpu")
            server_cpu = ours.recv()
            run = asyncio.run(fetch_once(port, grant, cert_sha256(cert), secret, dest))
            ours.send("cpu")
            run.server_cpu = ours.recv() - server_cpu
            results.append(run)
        ours.send(None)
        return results
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run both loops on uvloop")
    parser.add_argument("--same-process", action="store_true", help="one event loop for both")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    use_uvloop(args.uvloop)

    cert, key = make_cert()
    secret = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src, dest = Path(tmp, "src.gguf"), Path(tmp, "dest")
        write_random(src, args.mb * MB)
        if args.same_process:
            results = asyncio.run(same_process(src, cert, key, secret, dest, args.runs))
        else:
            results = two_processes(src, cert, key, secret, dest, args.runs, args.uvloop)

    for i, run in enumerate(results, 1):
        print(
            f"run {i}: {args.mb} MB in {run.seconds:.3f} s = {run.rate:.0f} MB/s"
            f"  (CPU s: client {run.client_cpu:.2f}, server {run.server_cpu:.2f})"
        )
    loop_name = "uvloop" if args.uvloop else "asyncio"
    where = "one process" if args.same_process else "two processes"
    best = max(run.rate for run in results)
    cpu = min((run.client_cpu + run.server_cpu) / (run.size / 1e9) for run in results)
    print(f"best {best:.0f} MB/s ({loop_name}, {where}, TLS 1.3 on {HOST}, incl. sha256 + fsync)")
    print(f"CPU per GB copied, both ends: {cpu:.2f} s  (cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
