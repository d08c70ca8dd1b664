"""Helpers for model-pool tests and benchmarks over real nodes (``tests/test_e2e_pool.py``,
``scripts/bench_pool.py``): models dirs of linked GGUFs, pool states as a node sees them,
and the llama-servers nodes run."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from meshllm.testing.cluster import NodeProcess


def linked_models_dir(root: Path, source: Path, *names: str) -> Path:
    """A models dir holding ``source`` hard-linked under each of ``names``: each is a model
    of its own to the pool, placement and llama-server."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.link(source, root / f"{name}.gguf")
    return root


def pool_state(seen_by: NodeProcess, node: NodeProcess, model: str) -> str | None:
    """``model``'s state on ``node`` as ``seen_by``'s ``/api/status`` has it ("cold": on
    disk, not loaded; None: not there, or ``node`` not known)."""
    status = seen_by.status()
    if node.node_id == status["node_id"]:
        ann = status
    else:
        ann = next((p for p in status["peers"] if p["node_id"] == node.node_id), None)
    if ann is None:
        return None
    entry = ann.get("pool", {}).get(model)
    if entry is not None:
        return entry["state"]
    return "cold" if model in ann.get("available_models", {}) else None


def llama_aliases(node: NodeProcess) -> list[str]:
    """The ``--alias`` (model name) of every llama-server ``node`` runs."""
    try:
        kids = psutil.Process(node.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    aliases = []
    for kid in kids:
        try:
            argv = kid.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--alias" in argv and "llama-server" in kid.name():
            aliases.append(argv[argv.index("--alias") + 1])
    return aliases


def llama_servers_under(root: Path) -> list[psutil.Process]:
    """Every llama-server whose command line names a path under ``root`` (strays)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        argv = " ".join(proc.info["cmdline"] or [])
        if "llama-server" in (proc.info["name"] or "") and str(root) in argv:
            found.append(proc)
    return found


def chat_stream_request(
    node: NodeProcess, model: str, max_tokens: int = 8, **extra: Any
) -> urllib.request.Request:
    """A streamed chat for ``model`` on ``node``'s proxy, to read raw (SSE comments and
    all); ``extra`` fields go in the body (``ignore_eos=True``: llama-server generates
    all ``max_tokens``, so the request stays busy that long)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count to ten."}],
        "max_tokens": max_tokens,
        "stream": True,
        **extra,
    }
    return urllib.request.Request(
        f"{node.url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
