"""The state dir's files: one place that names them (DESIGN.md §2).

<state-dir>/node.key            this node's Ed25519 key (0600)
<state-dir>/mesh.json           the mesh's id, secret and owner public key (0600)
<state-dir>/owner_key           the mesh owner's key, on admin machines only (0600)
<state-dir>/admin_token         the secret of the local admin routes (0600)
<state-dir>/model_digests.json  sha256 of model files, by path, size and mtime
<state-dir>/keys.msgpack        the mesh's API keys: owner-signed statements, hashes only (0600)
<state-dir>/history.sqlite      this node's request history (SQLite, WAL)
<state-dir>/logs/               one llama-server log per model
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StatePaths:
    """The files of one state dir."""

    root: Path

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

    @property
    def mesh(self) -> Path:
        return self.root / "mesh.json"

    @property
    def owner_key(self) -> Path:
        return self.root / "owner_key"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin_token"

    @property
    def model_digests(self) -> Path:
        return self.root / "model_digests.json"

    @property
    def keys(self) -> Path:
        return self.root / "keys.msgpack"

    @property
    def history(self) -> Path:
        return self.root / "history.sqlite"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def load_admin_token(state_dir: Path) -> str:
    """The node's admin token, created (random, mode 0600) on first use."""
    path = StatePaths(state_dir).admin_token
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token
