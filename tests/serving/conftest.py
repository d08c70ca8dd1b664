"""Fixtures of the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.fake_llama import write_fake_llama


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    """A fake llama-server (``tests/serving/fake_llama.py``) in a ``bin`` dir of its own."""
    return write_fake_llama(tmp_path / "bin" / "llama-server")
