"""The membership hello's proofs (DESIGN.md §5), as pure functions.

Each side sends ``{mesh_id, node_id, public_key, nonce}``, then proves both
mesh membership and key ownership over the *peer's* nonce:
``HMAC-SHA256(secret, "meshllm-hello" | mesh_id | own public key | peer nonce)``
and an Ed25519 signature of the same message.  Fresh nonces on both sides stop
replays; the signature stops a member from posing as another node.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HELLO_LABEL = b"meshllm-hello"
NONCE_BYTES = 16


def hello_message(mesh_id: str, public_key: bytes, peer_nonce: bytes) -> bytes:
    """The bytes a side's proof covers."""
    return b"|".join([HELLO_LABEL, mesh_id.encode(), public_key, peer_nonce])


def hello_mac(secret: bytes, mesh_id: str, public_key: bytes, peer_nonce: bytes) -> bytes:
    """HMAC proof of mesh membership."""
    return hmac.new(secret, hello_message(mesh_id, public_key, peer_nonce), hashlib.sha256).digest()


def verify_hello(
    secret: bytes,
    mesh_id: str,
    public_key: bytes,
    peer_nonce: bytes,
    mac: object,
    signature: object,
) -> bool:
    """Whether ``mac`` and ``signature`` prove membership and ownership of ``public_key``."""
    if not isinstance(mac, bytes) or not isinstance(signature, bytes):
        return False
    if not hmac.compare_digest(mac, hello_mac(secret, mesh_id, public_key, peer_nonce)):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, hello_message(mesh_id, public_key, peer_nonce)
        )
    except (InvalidSignature, ValueError):
        return False
    return True
