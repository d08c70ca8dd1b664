"""Model file copies between peers: the grant, the TLS setup and the handshake.

A node B that wants model M from node A asks over their authenticated QUIC link
with a ``file`` frame; A answers with a :class:`Grant` (name, size, sha256, a
one-time random token, an expiry).  The bytes then go over TLS 1.3 on TCP, at the
same port number as A's QUIC UDP port (DESIGN.md §5, §9: aioquic moves ~10 MB/s,
TLS/TCP hundreds).  :class:`~meshllm.serving.file_server.FileServer` is A's side,
:func:`~meshllm.serving.file_client.fetch_file` is B's.

Handshake, after the TLS handshake; every message is one frame of
:mod:`meshllm.wire` (``t`` is ``file`` or ``error``), capped at
:data:`MAX_HEADER_FRAME` bytes::

    B checks sha256(DER of A's certificate) == the pinned hash, else hangs up
    A -> B  {op: "hello",  nonce: Ns}                         32 random bytes
    B -> A  {op: "get",    token, offset, nonce: Nc, mac}
    A -> B  {op: "accept", name, size, offset}   or   {t: "error", message}
    A -> B  the raw file bytes [offset, size)
    B closes once it has them all; A waits for that close.

    mac = HMAC-SHA256(mesh_secret, b"meshllm-file" | Nc | Ns | sha256(A's cert DER) | token)

The pin authenticates A to B.  B is authenticated by the token (random, known
only to the two over the authenticated QUIC link, consumed at its first
presentation, dead after :data:`GRANT_TTL`) plus the mac, which proves the mesh
secret, is fresh (both nonces) and is bound to A's certificate (no relaying to
another server).  All fields in the mac have fixed sizes, so the concatenation
is unambiguous.  A grant may start at any offset: B resumes a cut copy with a
new grant and the size of its ``.part`` file.  B checks the sha256 of the whole
file before use.  B closes first because a TLS peer that closes right after its
last bytes can race the receiver's EOF handling (asyncio's sslproto flushes one
buffer at EOF, then drops the rest).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshllm.errors import FrameError

GRANT_TTL = 60.0  # seconds: long enough to dial back over TCP, short enough to be useless if leaked
NONCE_SIZE = 32
TOKEN_SIZE = 32
DIGEST_SIZE = 32  # sha256 and HMAC-SHA256
MAX_HEADER_FRAME = 4096  # handshake frames are ~200 bytes; anything bigger is garbage
CHUNK_SIZE = 1 << 20  # 1 MiB reads and writes: DESIGN.md §9 measured the best throughput there
PROOF_LABEL = b"meshllm-file"
GGUF_SUFFIX = ".gguf"
PART_SUFFIX = ".part"


@dataclass(frozen=True, slots=True)
class Grant:
    """A one-time permission to copy one model file, issued by the node that has it."""

    name: str  # model name; the copy lands as NAME.gguf
    size: int  # bytes
    sha256: bytes  # digest of the whole file
    token: bytes = field(repr=False)  # one-time secret, TOKEN_SIZE random bytes
    expires: float  # unix time after which the server refuses it

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for a msgpack frame."""
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "token": self.token,
            "expires": self.expires,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Grant:
        """Parse :meth:`to_wire` output from a peer.  Raises :class:`FrameError`."""
        try:
            name, size, digest = data["name"], data["size"], data["sha256"]
            token, expires = data["token"], data["expires"]
        except (KeyError, TypeError):
            raise FrameError("grant lacks a field") from None
        if not isinstance(name, str) or not name:
            raise FrameError("grant name is not a string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FrameError("grant size is not a non-negative integer")
        if not isinstance(digest, bytes) or len(digest) != DIGEST_SIZE:
            raise FrameError("grant sha256 is not 32 bytes")
        if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
            raise FrameError("grant token is not 32 bytes")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise FrameError("grant expiry is not a number")
        return cls(name=name, size=size, sha256=digest, token=token, expires=float(expires))


def is_safe_name(name: str) -> bool:
    """Whether ``name`` can name a file in a models dir without escaping it."""
    return (
        0 < len(name) <= 200
        and name not in (".", "..")
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
    )


def make_proof(
    mesh_secret: bytes, client_nonce: bytes, server_nonce: bytes, cert_sha256: bytes, token: bytes
) -> bytes:
    """The client's mac: HMAC-SHA256 over the label, both nonces, the cert hash and the token."""
    message = PROOF_LABEL + client_nonce + server_nonce + cert_sha256 + token
    return hmac.new(mesh_secret, message, hashlib.sha256).digest()


def cert_sha256(cert_pem: bytes) -> bytes:
    """sha256 of the DER of the first certificate in ``cert_pem``: what peers pin."""
    return hashlib.sha256(
        x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    ).digest()


def server_ssl_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.3 server context for a node certificate (Ed25519 works with OpenSSL 3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.num_tickets = 0  # no resumption: every copy is a fresh connection
    # ssl loads keys only from files: a private temporary dir, gone right after.
    with tempfile.TemporaryDirectory(prefix="meshllm-tls-") as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


def client_ssl_context() -> ssl.SSLContext:
    """A TLS 1.3 client context without CA checks: the caller pins the server certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
