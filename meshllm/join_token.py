"""Join tokens and the mesh credentials they carry (DESIGN.md §5).

A token is ``mesh1-`` + base64url(msgpack ``{v: 1, mesh_id, secret, addrs, node_id}``).
Anyone holding it can join, as with a Tailscale auth key: treat it as a secret.
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

TOKEN_PREFIX = "mesh1-"
MESH_FILE = "mesh.json"
SECRET_BYTES = 32


@dataclass(frozen=True)
class MeshCredentials:
    """Which mesh a node belongs to, and the shared secret that proves it."""

    mesh_id: str
    secret: bytes

    @classmethod
    def create(cls) -> MeshCredentials:
        """A new mesh."""
        return cls(mesh_id=secrets.token_hex(8), secret=secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def load(cls, state_dir: Path) -> MeshCredentials | None:
        """The mesh persisted in ``state_dir``, if any."""
        path = state_dir / MESH_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(mesh_id=data["mesh_id"], secret=bytes.fromhex(data["secret"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None

    def save(self, state_dir: Path) -> None:
        """Persist (mode 0600) so a restart stays in the same mesh."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / MESH_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"mesh_id": self.mesh_id, "secret": self.secret.hex()}, f)
        tmp.replace(path)


@dataclass(frozen=True)
class JoinToken:
    """Everything a node needs to join a mesh: credentials and where to knock."""

    mesh_id: str
    secret: bytes
    addrs: list[str]
    node_id: str

    @property
    def credentials(self) -> MeshCredentials:
        """The mesh this token admits to."""
        return MeshCredentials(self.mesh_id, self.secret)

    def encode(self) -> str:
        """The ``mesh1-…`` text form."""
        payload = msgpack.packb(
            {
                "v": 1,
                "mesh_id": self.mesh_id,
                "secret": self.secret,
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
        return cls(mesh_id=mesh_id, secret=secret, addrs=addrs, node_id=node_id)
