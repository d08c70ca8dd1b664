"""Fixtures of the console tests: a state dir with the admin token, the fake node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .fake_node import ADMIN_TOKEN, FakeNode


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state dir holding the admin token, as the node writes it."""
    (tmp_path / "admin_token").write_text(ADMIN_TOKEN + "\n")
    return tmp_path


@pytest.fixture
async def fake() -> AsyncIterator[FakeNode]:
    """The fake node, served on a free port."""
    node = FakeNode()
    await node.start()
    yield node
    await node.stop()
