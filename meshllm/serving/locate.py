"""Find the llama-server binary (flag, environment, our build cache, then PATH) and
the setting its proof on this machine chose."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from meshllm.errors import ServingError
from meshllm.serving.proof import load_proof

ENV_VAR = "MESHLLM_LLAMA_SERVER"
INSTALL_HINT = "python -m meshllm.serving.install llama-server"


def _executable(value: str, origin: str) -> Path:
    # A bare name ("llama-server") is looked up on PATH, as a shell would.
    found = shutil.which(value) if os.sep not in value else None
    path = Path(found or value).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ServingError(f"llama-server from {origin} is not an executable file: {path}")
    return path


def find_llama_server(explicit: str | None = None) -> Path:
    """The llama-server to run: ``explicit`` (--llama-server), $MESHLLM_LLAMA_SERVER,
    the binary built by ``meshllm.serving.install``, then ``llama-server`` on PATH.

    A flag or variable that names no executable is an error, not a reason to
    fall back silently to another binary.
    """
    if explicit:
        return _executable(explicit, "--llama-server")
    if env := os.environ.get(ENV_VAR):
        return _executable(env, f"${ENV_VAR}")
    # Imported here: `python -m meshllm.serving.install` must not find itself already
    # imported by this package (runpy warns).
    from meshllm.serving.install import cached_llama_server

    if cached := cached_llama_server():
        return cached
    if on_path := shutil.which("llama-server"):
        return Path(on_path)
    raise ServingError(f"llama-server not found: run `{INSTALL_HINT}` (or pass --llama-server)")


def proven_args(binary: Path) -> tuple[str, ...]:
    """The extra arguments the proof of ``binary`` on this machine chose (e.g.
    ``--no-repack``); none when it has no valid proof here (the supervisor still
    falls back by itself when llama-server dies of SIGILL while loading)."""
    proof = load_proof(binary)
    return proof.extra_args if proof is not None else ()
