"""The mesh owner key and the statements it signs: mesh-wide admin acts.

The node that seeds a mesh creates the owner key (Ed25519, ``<state-dir>/owner_key``, mode
0600); the join token carries its public key, so every member knows it.  An admin act that
reaches other nodes (today: drop a model on another node) is a *statement* signed by that key,
which each member verifies before it acts::

    {"kind": "drop", "mesh_id": "…", "iat": 1712345678.25, "nonce": <16 bytes>,
     "body": {"model": "…", "node_id": "…"}, "sig": <64 bytes>}

``sig`` is Ed25519 over :data:`DOMAIN` + msgpack ``[kind, mesh_id, iat, nonce, body]``, every
map of ``body`` in sorted key order.  A member refuses (:class:`AuthError`) a statement whose
signature does not check against its mesh's owner key, that names another mesh or kind, that
is older than ``max_age`` or from further ahead than :data:`FUTURE_SKEW`, or whose nonce it saw
before (:class:`SeenNonces`: no replay).  Nothing here reads a clock: ``now`` is passed in.
The key moves between admin machines as one base64url line (``meshllm owner export|import``).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshllm.errors import AuthError, ConfigError
from meshllm.identity import public_key_bytes
from meshllm.paths import StatePaths

DOMAIN = b"meshllm-owner-v1\x00"
PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 16
SIGNATURE_BYTES = 64
MAX_AGE = 60.0  # seconds a statement stays good: owner and members' clocks roughly agree
FUTURE_SKEW = 5.0  # seconds a statement may seem to come from the future (clock skew)
SEEN_CAPACITY = 4096  # nonces remembered; past that the oldest are forgotten, safely


@dataclass(frozen=True)
class OwnerKey:
    """The private key that commands a mesh."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> OwnerKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str) -> OwnerKey:
        """Parse the export form; raises :class:`ConfigError` with a one-line reason."""
        body = text.strip()
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise ConfigError("bad owner key: it is not base64url") from None
        if len(raw) != 32:
            raise ConfigError(f"bad owner key: {len(raw)} bytes, not 32")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @cached_property
    def text(self) -> str:
        """The export form: base64url of the raw 32-byte private key, one line.  A secret."""
        raw = self.private_key.private_bytes_raw()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @cached_property
    def public_key(self) -> bytes:
        """Raw 32-byte public key: what the join token carries."""
        return public_key_bytes(self.private_key.public_key())

    @classmethod
    def load(cls, state_dir: Path) -> OwnerKey | None:
        """The owner key in ``state_dir``, if this machine holds one."""
        path = StatePaths(state_dir).owner_key
        if not path.exists():
            return None
        try:
            return cls.from_text(path.read_text())
        except ConfigError as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None

    @classmethod
    def load_or_create(cls, state_dir: Path) -> OwnerKey:
        """The owner key in ``state_dir``, created (mode 0600) on first use."""
        key = cls.load(state_dir)
        if key is None:
            key = cls.generate()
            key.save(state_dir)
        return key

    def save(self, state_dir: Path) -> None:
        """Write to ``state_dir/owner_key`` (mode 0600), replacing any key there."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = StatePaths(state_dir).owner_key
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.text + "\n")
        tmp.replace(path)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def _canonical(value: Any) -> Any:
    """``value`` with every map in sorted key order; only msgpack's plain types."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise AuthError("statement body has a non-string key")
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, str | bytes | bool | int | float):
        return value
    raise AuthError(f"statement body holds a {type(value).__name__}")


def signed_bytes(kind: str, mesh_id: str, iat: float, nonce: bytes, body: dict) -> bytes:
    """What the owner key signs for a statement."""
    fields = [kind, mesh_id, float(iat), nonce, _canonical(body)]
    return DOMAIN + msgpack.packb(fields, use_bin_type=True)


def sign_statement(
    owner: OwnerKey,
    kind: str,
    body: dict,
    now: float,
    *,
    mesh_id: str,
    nonce: bytes | None = None,
) -> dict:
    """A statement of ``kind`` about ``body`` in mesh ``mesh_id``, issued at ``now``."""
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    body = _canonical(body)
    sig = owner.sign(signed_bytes(kind, mesh_id, now, nonce, body))
    return {
        "kind": kind,
        "mesh_id": mesh_id,
        "iat": float(now),
        "nonce": nonce,
        "body": body,
        "sig": sig,
    }


class SeenNonces:
    """Nonces of statements accepted lately, to refuse replays, in bounded memory.

    A nonce is forgotten once its statement is too old to be accepted anyway.  Past
    ``capacity`` the oldest is forgotten early, and from then on a statement issued no later
    than it is refused: it can no longer be told from a replay.  The memory does not outlive
    the process, so a node passes its start time as ``issued_after``: a statement issued
    before this process began may have been accepted by the one before it."""

    def __init__(self, capacity: int = SEEN_CAPACITY, issued_after: float = -math.inf) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # nonce → iat, oldest first
        self._floor = issued_after

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, nonce: bytes, iat: float, now: float, max_age: float) -> None:
        """Remember ``nonce``; :class:`AuthError` if it was seen or cannot be told apart."""
        while self._seen:
            oldest, oldest_iat = next(iter(self._seen.items()))
            if now - oldest_iat <= max_age:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            raise AuthError("statement replayed: its nonce was seen before")
        if iat <= self._floor:
            raise AuthError("statement issued too early to tell from a replay")
        self._seen[nonce] = iat
        while len(self._seen) > self.capacity:
            _, forgotten = self._seen.popitem(last=False)
            self._floor = max(self._floor, forgotten)


def verify_statement(
    public_key: bytes,
    statement: object,
    now: float,
    max_age: float = MAX_AGE,
    *,
    mesh_id: str,
    kind: str,
    seen: SeenNonces | None = None,
) -> dict:
    """The body of ``statement`` if the owner whose key is ``public_key`` signed it, for mesh
    ``mesh_id`` and ``kind``, at most ``max_age`` s ago, and (with ``seen``) for the first time.
    Anything else, whatever its shape, raises :class:`AuthError`."""
    if statement is None:
        raise AuthError("no owner statement")
    if not isinstance(statement, dict):
        raise AuthError("malformed owner statement")
    s_kind, s_mesh, iat = statement.get("kind"), statement.get("mesh_id"), statement.get("iat")
    nonce, body, sig = statement.get("nonce"), statement.get("body"), statement.get("sig")
    if not (
        isinstance(s_kind, str)
        and isinstance(s_mesh, str)
        and isinstance(iat, int | float)
        and not isinstance(iat, bool)
        and math.isfinite(iat)
        and isinstance(nonce, bytes)
        and len(nonce) == NONCE_BYTES
        and isinstance(body, dict)
        and isinstance(sig, bytes)
        and len(sig) == SIGNATURE_BYTES
    ):
        raise AuthError("malformed owner statement")
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise AuthError("this mesh has no owner key")
    try:
        message = signed_bytes(s_kind, s_mesh, iat, nonce, body)
    except (ValueError, OverflowError, TypeError, RecursionError):  # msgpack: ints too big…
        raise AuthError("malformed owner statement") from None
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, message)
    except (InvalidSignature, ValueError):
        raise AuthError("not signed by the mesh owner") from None
    if s_mesh != mesh_id:
        raise AuthError(f"statement for mesh {s_mesh}, not this mesh {mesh_id}")
    if s_kind != kind:
        raise AuthError(f"statement of kind {s_kind!r}, not {kind!r}")
    if now - iat > max_age:
        raise AuthError(f"statement expired: issued {now - iat:.0f} s ago (max {max_age:.0f} s)")
    if iat - now > FUTURE_SKEW:
        raise AuthError(f"statement from the future: issued {iat - now:.0f} s ahead of this clock")
    if seen is not None:
        seen.check_and_add(nonce, float(iat), now, max_age)
    return body
