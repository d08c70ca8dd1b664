"""Helpers of the Pilot-driven console tests: the app, waiting on it, reading its tables."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import DataTable

from meshllm.console import MeshConsole

TIMEOUT = 15.0


def free_port() -> int:
    """A port nothing listens on (for the node-not-running case)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(pilot: Pilot, condition: Callable[[], bool], what: str) -> None:
    """Let the app run until `condition` holds; fail after a generous timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def row_texts(table: DataTable) -> list[str]:
    """The plain text of each row."""
    return [
        " ".join(str(getattr(c, "plain", c)) for c in table.get_row_at(i))
        for i in range(table.row_count)
    ]


def vram_cells(table: DataTable) -> list[str]:
    """The VRAM column of the Nodes table, one plain text a row."""
    return [table.get_row_at(i)[-1].plain.strip() for i in range(table.row_count)]


def app_for(port: int, state_dir: Path) -> MeshConsole:
    """The console, polling fast, without animations (Pilot waits them out)."""
    app = MeshConsole(port=port, state_dir=state_dir, poll_interval=0.2)
    app.animation_level = "none"
    return app
