"""The membership hello v2 (DESIGN.md §5): a sans-I/O handshake that binds a connection.

Frames go in, frames to send come out; no sockets, clock or asyncio.  The
transport runs one :class:`Handshake` on each connection's control stream::

    client                                   server
    hello  {mesh_id, node_id, public_key, nonce, incarnation, hello: 2}  ->
           <-  hello (the same fields, the server's)
    proof  {mac, sig, hello: 2}  ->
                                             verifies, then
           <-  proof
    verifies

Each proof covers :func:`proof_message` ``(mesh_id, prover's key, verifier's
key, prover's nonce, verifier's nonce)``: ``mac`` is its HMAC-SHA256 under the
mesh secret (membership), ``sig`` its Ed25519 signature by the prover's node
key (ownership of the key; the client has no TLS certificate).  The client
takes the verifier's key, the server's, from the server's TLS certificate of
this very connection, not from the hello: a relay that terminates the client's
TLS with its own certificate gets a proof made out to its own key, which the
real server refuses, and the client refuses the relayed server hello because
its key is not the certificate's.  Fresh nonces on both sides make a proof
worthless on any other connection.  The server speaks no mesh frame before the
client's proof checks, the client none before the server's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from enum import Enum, auto
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshllm.errors import HelloError
from meshllm.identity import Identity, node_id_from_public_key
from meshllm.join_token import MeshCredentials
from meshllm.wire import Frame, FrameType, make_frame

HELLO_VERSION = 2
"""Sent as ``hello`` in both frames; a peer without it speaks v1 (``"meshllm-hello"``)."""
HELLO_LABEL = b"meshllm-hello-v2"
NONCE_BYTES = 16
PUBLIC_KEY_BYTES = 32  # raw Ed25519
MAC_BYTES = 32  # HMAC-SHA256
SIGNATURE_BYTES = 64  # Ed25519
MAX_SHOWN = 40  # characters of a peer's string quoted in an error message
_FIELD_LENGTH = struct.Struct(">I")


def proof_message(
    mesh_id: str,
    prover_key: bytes,
    verifier_key: bytes,
    prover_nonce: bytes,
    verifier_nonce: bytes,
) -> bytes:
    """The bytes a proof covers: the label and each field, each after its 4-byte length.

    Length prefixes make the encoding unambiguous (v1 joined fields with ``|``,
    which can occur inside keys and nonces).
    """
    fields = (HELLO_LABEL, mesh_id.encode(), prover_key, verifier_key, prover_nonce, verifier_nonce)
    return b"".join(_FIELD_LENGTH.pack(len(field)) + field for field in fields)


def proof_mac(secret: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 of ``message`` under the mesh secret: the proof of membership."""
    return hmac.new(secret, message, hashlib.sha256).digest()


class _Phase(Enum):
    START = auto()  # the client has not sent its hello yet
    WAIT_HELLO = auto()
    WAIT_PROOF = auto()
    DONE = auto()
    FAILED = auto()


class Handshake:
    """One side of the hello v2 on one connection.

    ``peer_certificate_key`` is the raw public key of the server's TLS
    certificate, required on the client (aioquic has no client certificates, so
    the server has none to give).  ``expected_node_id`` is the node a join token
    or a known peer names at the dialled address.  Call :meth:`start`, send what
    it returns, then feed each control frame to :meth:`receive` and send what it
    returns, until :attr:`done`.  Any failure raises :class:`HelloError`, after
    which the handshake refuses everything.
    """

    def __init__(
        self,
        *,
        is_client: bool,
        credentials: MeshCredentials,
        identity: Identity,
        incarnation: int,
        peer_certificate_key: bytes | None = None,
        expected_node_id: str | None = None,
        nonce: bytes | None = None,
    ) -> None:
        if is_client and peer_certificate_key is None:
            raise HelloError("the server presented no usable certificate")
        self.is_client = is_client
        self._credentials = credentials
        self._identity = identity
        self._incarnation = incarnation
        self._certificate_key = peer_certificate_key
        self._expected = expected_node_id
        self._nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        self._phase = _Phase.START if is_client else _Phase.WAIT_HELLO
        self._peer_nonce = b""
        self.peer_node_id: str | None = None
        """The peer's node id, once its hello passed every check."""
        self.peer_public_key: bytes | None = None
        """The peer's raw Ed25519 public key, once its hello passed every check."""
        self.peer_incarnation = 0
        """The incarnation the peer's hello carried (0 until then)."""

    @property
    def done(self) -> bool:
        """Whether the peer's proof checked (and, on the server, ours went out)."""
        return self._phase is _Phase.DONE

    def start(self) -> list[Frame]:
        """The frames to send first: the client's hello; nothing on the server."""
        if self._phase is not _Phase.START:
            return []
        self._phase = _Phase.WAIT_HELLO
        return [self._hello()]

    def receive(self, frame: Frame) -> list[Frame]:
        """Take one frame from the peer; returns the frames to send in answer.

        Raises :class:`HelloError` on anything but the next step of a good hello.
        """
        try:
            return self._receive(frame)
        except HelloError:
            self._phase = _Phase.FAILED
            raise

    def _receive(self, frame: Frame) -> list[Frame]:
        kind = frame.get("t")
        if self._phase is _Phase.FAILED:
            raise HelloError("the hello already failed")
        if kind == FrameType.HELLO and self._phase is _Phase.WAIT_HELLO:
            self._accept_hello(frame)
            self._phase = _Phase.WAIT_PROOF
            return [self._proof()] if self.is_client else [self._hello()]
        if kind == FrameType.PROOF and self._phase is _Phase.WAIT_PROOF:
            self._check_proof(frame)
            self._phase = _Phase.DONE
            return [] if self.is_client else [self._proof()]
        if self._phase is _Phase.DONE:
            raise HelloError(f"{_shown(kind)} frame after the hello ended")
        raise HelloError(f"unexpected {_shown(kind)} frame during the hello")

    # frames out

    def _hello(self) -> Frame:
        return make_frame(
            FrameType.HELLO,
            hello=HELLO_VERSION,
            mesh_id=self._credentials.mesh_id,
            node_id=self._identity.node_id,
            public_key=self._identity.public_key,
            nonce=self._nonce,
            incarnation=self._incarnation,
        )

    def _proof(self) -> Frame:
        # The client proves to the key of the TLS certificate it saw on this connection
        # (equal to the hello's, checked), so its proof is worthless past a relay.
        verifier_key = self._certificate_key if self.is_client else self.peer_public_key
        assert verifier_key is not None
        message = proof_message(
            self._credentials.mesh_id,
            self._identity.public_key,
            verifier_key,
            self._nonce,
            self._peer_nonce,
        )
        return make_frame(
            FrameType.PROOF,
            hello=HELLO_VERSION,
            mac=proof_mac(self._credentials.secret, message),
            sig=self._identity.sign(message),
        )

    # frames in

    def _accept_hello(self, frame: Frame) -> None:
        _check_version(frame)
        mesh_id = frame.get("mesh_id")
        if mesh_id != self._credentials.mesh_id:
            raise HelloError(f"wrong mesh: the peer is in mesh {_shown(mesh_id)}, not this one")
        key, nonce, node_id = frame.get("public_key"), frame.get("nonce"), frame.get("node_id")
        incarnation = frame.get("incarnation")
        if not (
            _is_bytes(key, PUBLIC_KEY_BYTES)
            and _is_bytes(nonce, NONCE_BYTES)
            and isinstance(node_id, str)
            and isinstance(incarnation, int)
            and not isinstance(incarnation, bool)
            and incarnation >= 0
        ):
            raise HelloError("malformed hello")
        if node_id != node_id_from_public_key(key):
            raise HelloError(f"node id {_shown(node_id)} does not match its public key")
        if node_id == self._identity.node_id:
            raise HelloError("the peer has this node's own id (a dial to itself?)")
        if self._expected is not None and node_id != self._expected:
            raise HelloError(
                f"unexpected node at that address: expected {self._expected}, found {node_id}"
            )
        if self.is_client and key != self._certificate_key:
            raise HelloError(
                f"node {node_id}'s hello key is not the key of its TLS certificate "
                "(a relay or an impostor)"
            )
        self.peer_node_id, self.peer_public_key = node_id, key
        self._peer_nonce, self.peer_incarnation = nonce, incarnation

    def _check_proof(self, frame: Frame) -> None:
        _check_version(frame)
        mac, sig = frame.get("mac"), frame.get("sig")
        if not (_is_bytes(mac, MAC_BYTES) and _is_bytes(sig, SIGNATURE_BYTES)):
            raise HelloError("malformed proof")
        assert self.peer_public_key is not None
        # The peer proves over its own key and ours: the key of *this* connection.
        message = proof_message(
            self._credentials.mesh_id,
            self.peer_public_key,
            self._identity.public_key,
            self._peer_nonce,
            self._nonce,
        )
        if not hmac.compare_digest(mac, proof_mac(self._credentials.secret, message)):
            raise HelloError("bad proof: not a member of this mesh (wrong secret?)")
        try:
            Ed25519PublicKey.from_public_bytes(self.peer_public_key).verify(sig, message)
        except (InvalidSignature, ValueError):
            raise HelloError("bad proof: the signature is not by the peer's key") from None


def _check_version(frame: Frame) -> None:
    version = frame.get("hello")
    if version == HELLO_VERSION:
        return
    if version is None:
        version = 1  # v1 frames carry no version field
    if not isinstance(version, int) or isinstance(version, bool):
        raise HelloError(f"malformed hello version {_shown(version)}")
    if version < HELLO_VERSION:
        raise HelloError(
            f"hello version mismatch: peer speaks hello v{version}; "
            f"this node needs v{HELLO_VERSION}: upgrade it"
        )
    raise HelloError(
        f"hello version mismatch: peer speaks hello v{version}; "
        f"this node speaks v{HELLO_VERSION}: upgrade this node"
    )


def _is_bytes(value: Any, length: int) -> bool:
    return isinstance(value, bytes) and len(value) == length


def _shown(value: Any) -> str:
    """A peer-chosen value, quoted and cut short for an error message."""
    return repr(value)[:MAX_SHOWN]
