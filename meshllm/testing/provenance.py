"""What a benchmark's figures were measured on: the code's commit."""

from __future__ import annotations

import subprocess
from pathlib import Path


def commit_label() -> str:
    """The commit of the running meshllm, "+ uncommitted changes" when its tree differs;
    an exported tree (git archive) may carry its commit in a ``COMMIT`` file."""
    import meshllm

    where = Path(meshllm.__file__).resolve().parent.parent
    stamp = where / "COMMIT"
    if stamp.exists():
        return stamp.read_text().strip() + f" exported at {where}"
    got = subprocess.run(
        ["git", "-C", str(where), "log", "-1", "--format=%h"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(where), "status", "--porcelain", "meshllm"],
        capture_output=True,
        text=True,
    )
    return (got.stdout.strip() or "unknown") + (
        " + uncommitted changes" if dirty.stdout.strip() else ""
    )
