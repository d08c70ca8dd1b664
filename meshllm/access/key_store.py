"""The node's copy of the mesh's key statements on disk: one msgpack file, mode 0600.

The file holds ``{"v": 1, "statements": [...]}``.  What it holds is not trusted: a node feeds
each loaded statement to :meth:`meshllm.access.keys.KeyBook.add`, which verifies it.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack

from meshllm.errors import ConfigError

FORMAT_VERSION = 1
# A key statement takes ~350 bytes, so a full book (1024 keys) ~0.4 MiB; only one of long
# model allow-lists (up to ~13 KiB a key) could pass this, and then saving refuses.
MAX_FILE_BYTES = 4 * 1024 * 1024


def load_statements(path: Path) -> list[dict]:
    """The statements saved at ``path`` ([] if there is no file), unverified.  A file that
    cannot be read, is too big or is not what :func:`save_statements` writes raises
    :class:`ConfigError` with a one-line reason."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path} is over {MAX_FILE_BYTES} bytes: not a key file")
    try:
        content = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ConfigError(f"{path} is corrupt: {type(exc).__name__}") from None
    if not isinstance(content, dict) or content.get("v") != FORMAT_VERSION:
        raise ConfigError(f"{path} is not a version {FORMAT_VERSION} key file")
    statements = content.get("statements")
    if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
        raise ConfigError(f"{path} is corrupt: statements are not a list of maps")
    return statements


def save_statements(path: Path, statements: list[dict]) -> None:
    """Write ``statements`` to ``path`` (mode 0600), atomically: a reader sees the old file
    or the new one, never half of one."""
    data = msgpack.packb({"v": FORMAT_VERSION, "statements": statements}, use_bin_type=True)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"key statements take {len(data)} bytes, over {MAX_FILE_BYTES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
