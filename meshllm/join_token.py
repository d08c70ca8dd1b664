"""Join tokens and the mesh credentials they carry (DESIGN.md §5).

A token is ``mesh1-`` + base64url(msgpack ``{v: 1, mesh_id, secret, owner, addrs, node_id}``),
``owner`` the mesh owner's 32-byte public key (:mod:`meshllm.owner`): members obey only
statements it signs.  Anyone holding a token can join, as with a Tailscale auth key: treat it
as a secret.  Joining gives no command of the mesh; only the owner key does.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgpack

from meshllm.errors import ConfigError
from meshllm.paths import StatePaths

TOKEN_PREFIX = "mesh1-"
SECRET_BYTES = 32
OWNER_KEY_BYTES = 32


@dataclass(frozen=True)
class MeshCredentials:
    """Which mesh a node belongs to, the shared secret that proves it, and the public key
    of the mesh owner, whose signed statements alone command the mesh."""

    mesh_id: str
    secret: bytes
    owner: bytes

    @classmethod
    def create(cls, owner: bytes) -> MeshCredentials:
        """A new mesh owned by the holder of the private key of ``owner``."""
        return cls(
            mesh_id=secrets.token_hex(8), secret=secrets.token_bytes(SECRET_BYTES), owner=owner
        )

    @classmethod
    def load(cls, state_dir: Path) -> MeshCredentials | None:
        """The mesh persisted in ``state_dir``, if any."""
        path = StatePaths(state_dir).mesh
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            mesh_id, secret = data["mesh_id"], bytes.fromhex(data["secret"])
            owner = bytes.fromhex(data["owner"]) if "owner" in data else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if owner is None:
            raise ConfigError(
                f"{path} names no mesh owner key (made by an older meshllm): remove it and "
                "join with a new token, or start a new mesh"
            )
        if len(owner) != OWNER_KEY_BYTES:
            raise ConfigError(f"cannot read {path}: the owner key is not {OWNER_KEY_BYTES} bytes")
        return cls(mesh_id=mesh_id, secret=secret, owner=owner)

    def save(self, state_dir: Path) -> None:
        """Persist (mode 0600) so a restart stays in the same mesh."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = StatePaths(state_dir).mesh
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"mesh_id": self.mesh_id, "secret": self.secret.hex(), "owner": self.owner.hex()},
                f,
            )
        tmp.replace(path)


@dataclass(frozen=True)
class JoinToken:
    """Everything a node needs to join a mesh: credentials and where to knock."""

    mesh_id: str
    secret: bytes
    owner: bytes
    addrs: list[str]
    node_id: str

    @property
    def credentials(self) -> MeshCredentials:
        """The mesh this token admits to."""
        return MeshCredentials(self.mesh_id, self.secret, self.owner)

    def encode(self) -> str:
        """The ``mesh1-…`` text form."""
        payload = msgpack.packb(
            {
                "v": 1,
                "mesh_id": self.mesh_id,
                "secret": self.secret,
                "owner": self.owner,
                "addrs": list(self.addrs),
                "node_id": self.node_id,
            },
            use_bin_type=True,
        )
        return TOKEN_PREFIX + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        """Parse a token; raises :class:`ConfigError` with a one-line reason."""
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            raise ConfigError(f"bad join token: it must start with {TOKEN_PREFIX!r}")
        body = text[len(TOKEN_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            data = msgpack.unpackb(raw, raw=False)
        except Exception:
            raise ConfigError("bad join token: it is truncated or corrupted") from None
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ConfigError("bad join token: unknown token version")
        mesh_id, secret = data.get("mesh_id"), data.get("secret")
        addrs, node_id = data.get("addrs"), data.get("node_id")
        if not (
            isinstance(mesh_id, str)
            and isinstance(secret, bytes)
            and len(secret) == SECRET_BYTES
            and isinstance(addrs, list)
            and addrs
            and all(isinstance(a, str) for a in addrs)
            and isinstance(node_id, str)
        ):
            raise ConfigError("bad join token: missing or malformed fields")
        owner = data.get("owner")
        if owner is None:
            raise ConfigError(
                "bad join token: it names no mesh owner key (made by an older meshllm); "
                "get a new one with `meshllm token` on a current node of the mesh"
            )
        if not (isinstance(owner, bytes) and len(owner) == OWNER_KEY_BYTES):
            raise ConfigError(f"bad join token: the owner key is not {OWNER_KEY_BYTES} bytes")
        return cls(mesh_id=mesh_id, secret=secret, owner=owner, addrs=addrs, node_id=node_id)
