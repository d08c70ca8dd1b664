"""The local node's HTTP API as the ``meshllm`` subcommands call it: one request at a
time, errors turned into the exit message a user reads."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshllm.paths import StatePaths


def local_request(
    port: int,
    path: str,
    body: dict | None = None,
    token: str | None = None,
    method: str | None = None,
    *,
    raw: bool = False,
) -> Any:
    """``path``'s answer from the node on ``port``: its JSON, or its bytes with ``raw``.
    Raises SystemExit with the node's error message, or saying no node answers."""
    url = f"http://127.0.0.1:{port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read() if raw else json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(exc)
        raise SystemExit(f"meshllm: {message}") from None
    except (urllib.error.URLError, ConnectionError) as exc:
        raise SystemExit(
            f"meshllm: no node answers on 127.0.0.1:{port} ({getattr(exc, 'reason', exc)}); "
            "start one with `meshllm --model NAME` or `meshllm --join TOKEN`"
        ) from None


def admin_token(state_dir: Path) -> str:
    """The node's admin token, from ``<state_dir>/admin_token`` (written by the node)."""
    token_file = StatePaths(state_dir.expanduser()).admin_token
    if not token_file.exists():
        raise SystemExit(f"meshllm: no admin token at {token_file}; is --state-dir right?")
    return token_file.read_text().strip()


def node_answers(port: int) -> bool:
    """Whether a node answers ``/health`` on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
