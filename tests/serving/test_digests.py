"""FileDigests: sha256 of model files, remembered per size and mtime, across restarts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from meshllm.serving.digests import FileDigests


def test_digest_is_the_sha256_and_is_remembered_across_instances(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" * 300_000)
    store = tmp_path / "state" / "model_digests.json"

    first = FileDigests(store)
    assert first.cached(model) is None
    assert first.digest(model) == hashlib.sha256(model.read_bytes()).digest()

    # A restarted node knows it without reading the file again.
    again = FileDigests(store)
    assert again.cached(model) == first.digest(model)


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    digests = FileDigests(tmp_path / "d.json")
    old = digests.digest(model)
    model.write_bytes(b"two, longer")
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert digests.cached(model) is None
    assert digests.digest(model) == hashlib.sha256(b"two, longer").digest() != old


def test_a_broken_store_is_only_a_cold_cache(tmp_path: Path) -> None:
    store = tmp_path / "d.json"
    store.write_text("{broken")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    digests = FileDigests(store)
    assert digests.digest(model) == hashlib.sha256(b"x").digest()
    assert FileDigests(store).cached(model) is not None  # rewritten whole
    assert FileDigests(None).cached(model) is None  # in memory only
