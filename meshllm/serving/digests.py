"""sha256 digests of model files, remembered by path, size and mtime.

Hashing a GGUF takes about a second per 250 MB, minutes for a large model, so a
digest is computed once per file version and kept in a small JSON file in the
state dir: a restarted node announces its models' digests without reading them
again.  Thread-safe: hashing runs on worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20


class FileDigests:
    """sha256 of files, cached per ``(size, mtime_ns)``; persisted to ``store`` if given."""

    def __init__(self, store: Path | None = None) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, hex)
        if store is not None:
            with contextlib.suppress(OSError, ValueError, TypeError):
                for path, (size, mtime, hexdigest) in json.loads(store.read_text()).items():
                    self._known[path] = (int(size), int(mtime), str(hexdigest))

    def cached(self, path: Path) -> bytes | None:
        """The digest of ``path`` if known for its current size and mtime (no hashing)."""
        try:
            st = path.stat()
        except OSError:
            return None
        with self._lock:
            entry = self._known.get(str(path))
        if entry is not None and entry[:2] == (st.st_size, st.st_mtime_ns):
            return bytes.fromhex(entry[2])
        return None

    def digest(self, path: Path) -> bytes:
        """The sha256 of ``path``, hashing it unless cached.  Blocks; raises OSError."""
        if (known := self.cached(path)) is not None:
            return known
        st = path.stat()
        hasher = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            buffer = memoryview(bytearray(CHUNK_SIZE))
            while n := f.readinto(buffer):
                hasher.update(buffer[:n])
        digest = hasher.digest()
        with self._lock:
            self._known[str(path)] = (st.st_size, st.st_mtime_ns, digest.hex())
            snapshot = dict(self._known)
        self._save(snapshot)
        return digest

    def _save(self, snapshot: dict[str, tuple[int, int, str]]) -> None:
        if self._store is None:
            return
        tmp = self._store.with_name(f"{self._store.name}.{os.getpid()}.tmp")
        try:
            self._store.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(snapshot))
            tmp.replace(self._store)
        except OSError as exc:  # a cache: losing it costs time, not correctness
            log.warning("cannot save model digests to %s: %s", self._store, exc)
