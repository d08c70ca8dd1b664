"""Node identity: an Ed25519 key, the node id derived from it, and a self-signed certificate.

The key persists in the state dir (mode 0600) so a node keeps its id across
restarts; a ``--client`` node uses an ephemeral key.  The certificate is what
the node presents in QUIC's TLS handshake and on the TLS/TCP file port; peers
check that its public key is the one the node proves in the hello.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from meshllm.errors import ConfigError
from meshllm.paths import StatePaths

NODE_ID_HEX_CHARS = 16  # 64 bits: collisions need ~4 billion nodes


def node_id_from_public_key(public_key: bytes) -> str:
    """The node id of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(b"meshllm-node" + public_key).hexdigest()[:NODE_ID_HEX_CHARS]


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    """Raw 32 bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Identity:
    """A node's key pair, id and certificate."""

    private_key: Ed25519PrivateKey
    ephemeral: bool = False

    @classmethod
    def generate(cls, ephemeral: bool = True) -> Identity:
        """A fresh identity, kept in memory only."""
        return cls(Ed25519PrivateKey.generate(), ephemeral=ephemeral)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Identity:
        """The identity persisted in ``state_dir``, created (mode 0600) on first use."""
        path = StatePaths(state_dir).node_key
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError as exc:
                raise ConfigError(f"cannot read node key {path}: {exc}") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"node key {path} is not an Ed25519 key")
            return cls(key)
        identity = cls(Ed25519PrivateKey.generate())
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.key_pem)
        return identity

    @cached_property
    def public_key(self) -> bytes:
        """Raw 32-byte public key."""
        return public_key_bytes(self.private_key.public_key())

    @cached_property
    def node_id(self) -> str:
        """Hex id derived from the public key."""
        return node_id_from_public_key(self.public_key)

    @cached_property
    def key_pem(self) -> bytes:
        """The private key in PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @cached_property
    def certificate(self) -> x509.Certificate:
        """Self-signed certificate over the node key, valid for ten years."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshllm-{self.node_id}")])
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(int(self.node_id, 16))
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.private_key, algorithm=None)
        )

    @cached_property
    def cert_pem(self) -> bytes:
        """The certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @cached_property
    def cert_sha256(self) -> bytes:
        """SHA-256 of the certificate's DER: what peers pin for file copies."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).digest()

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of ``message``."""
        return self.private_key.sign(message)
