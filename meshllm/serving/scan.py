"""Catalog scans in a child process.

Reading GGUF headers needs the ``gguf`` package, which pulls in numpy (about
18 MiB the daemon would carry forever), and memory-maps files that may be
truncated under it (a SIGBUS kills the process that touches them).  A short-lived
``python -m meshllm.serving.catalog`` keeps both out of the daemon.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from meshllm.errors import ServingError
from meshllm.serving.model_file import ModelFile

SCAN_TIMEOUT = 120.0


async def scan_catalog(
    models_dir: Path, specs: Sequence[str] = ()
) -> tuple[dict[str, ModelFile], dict[str, ModelFile | None]]:
    """The models in ``models_dir`` by name, and each ``--model`` spec resolved."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshllm.serving.catalog", str(models_dir), *specs,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCAN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ServingError(f"scanning {models_dir} took over {SCAN_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise ServingError(f"scanning {models_dir} failed ({proc.returncode}): {tail[0]}")
    data = json.loads(out)
    models = {m["name"]: ModelFile.from_wire(m) for m in data["models"]}
    resolved = {spec: ModelFile.from_wire(m) if m else None for spec, m in data["resolved"].items()}
    return models, resolved
