"""How llama-server is launched: its options, its command line, a free port, its log.

Shared by the supervisor (:mod:`meshllm.serving.llama`) and the proof of a build
(:mod:`meshllm.serving.proof`), which runs llama-server the same way.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from meshllm.config import default
from meshllm.errors import ServingError
from meshllm.serving.chat_template import builtin_chat_template, chat_template_argv
from meshllm.serving.model_file import ModelFile

HOST = "127.0.0.1"
FAILURE_TAIL_LINES = 8  # log lines kept in a failure's cause


@dataclass(frozen=True, slots=True)
class LlamaOptions:
    """How llama-server is run and supervised."""

    ctx_size: int = 8192
    """Context (KV cache) in tokens, shared by all slots; capped at the model's own."""
    parallel: int = 4
    """Slots: requests decoded together in one batch."""
    threads: int | None = None
    """CPU threads; None: ``default_threads()``."""
    max_tokens: int | None = default("max_tokens_default") or None
    """Tokens generated for a request that sets no ``max_tokens`` (llama-server ``-n``);
    None: until the context is full.  A base model without an end token would
    otherwise ramble for minutes (DESIGN.md §9)."""
    extra_args: tuple[str, ...] = ()
    """Appended to the command line as is (e.g. ("-ngl", "99"))."""
    embeddings: bool = False
    """A generative model answers ``/v1/embeddings`` too (mean pooling); an embedding or
    rerank GGUF always answers its own kind (:func:`embedding_argv`)."""
    port_range: tuple[int, int] | None = None
    """Ports (inclusive) to take the server's from; None: any free one."""
    startup_timeout: float = 600.0
    """A launch not healthy by then is killed and retried (large models load slowly)."""
    backoff_initial: float = 1.0
    """First delay before a restart; doubled after each failure up to backoff_max."""
    backoff_max: float = 30.0
    stable_after: float = 60.0
    """A run that stayed ready this long resets the back-off."""
    max_start_failures: int = 3
    """Launches in a row that never get ready before the server is given up on."""
    health_interval: float = 5.0
    """While ready: seconds between /health checks."""
    health_failures: int = 3
    """Consecutive failed checks after which a live but stuck server is killed."""
    stop_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL on stop."""


def default_threads() -> int:
    """CPU threads for llama-server: the cores this process may run on, physical
    cores only where there are hyper-threads (they slow token generation down)."""
    allowed = len(os.sched_getaffinity(0))
    return max(1, min(allowed, psutil.cpu_count(logical=False) or allowed))


def context_size(model: ModelFile, options: LlamaOptions) -> int:
    """The context llama-server runs ``model`` with: ``ctx_size``, capped at the model's."""
    if model.context_length:
        return min(options.ctx_size, model.context_length)
    return options.ctx_size


def llama_argv(binary: Path, model: ModelFile, port: int, options: LlamaOptions) -> list[str]:
    """The llama-server command line for ``model`` on ``127.0.0.1:port``."""
    ctx = context_size(model, options)
    threads = options.threads or default_threads()
    generation = ["-n", str(options.max_tokens)] if options.max_tokens else []
    template = fallback_chat_template(model)
    return [
        str(binary),
        *("-m", str(model.path)),
        *("--host", HOST),
        *("--port", str(port)),
        *("--alias", model.name),
        *("--ctx-size", str(ctx)),
        *("--parallel", str(options.parallel)),
        # One KV pool for all slots, so a single long request may use all of ctx.
        "--kv-unified",
        *("--threads", str(threads)),
        "--metrics",
        "--no-webui",
        *generation,
        *(chat_template_argv(template) if template else []),
        *embedding_argv(model, options),
        *options.extra_args,
    ]


def embedding_argv(model: ModelFile, options: LlamaOptions) -> list[str]:
    """What a model answers besides completions: a rerank GGUF (pooling ``rank`` in its
    header) ``/v1/rerank``, an embedding GGUF (a pooling type) ``/v1/embeddings`` with
    its own pooling, and a generative one embeddings too with ``options.embeddings``
    (this llama-server build serves chat beside them, measured)."""
    if model.pooling == "rank":
        return ["--reranking"]
    if model.pooling is not None:
        return ["--embeddings"]
    return ["--embeddings", "--pooling", "mean"] if options.embeddings else []


def fallback_chat_template(model: ModelFile) -> str | None:
    """llama.cpp's built-in template for a GGUF that carries none, where its
    architecture names one (else llama-server falls back to ChatML)."""
    if model.has_chat_template:
        return None
    return builtin_chat_template(model.architecture, model.name)


def free_port(preferred: int | None, port_range: tuple[int, int] | None = None) -> int:
    """``preferred`` when it can still be bound (keeps base_url stable), else a new one:
    the first free one of ``port_range`` (ServingError when all are taken), or any."""
    candidates: list[int] = [preferred] if preferred else []
    if port_range is None:
        candidates.append(0)
    else:  # from a random point: two servers starting at once rarely pick the same
        ports = list(range(port_range[0], port_range[1] + 1))
        start = random.randrange(len(ports))
        candidates += ports[start:] + ports[:start]
    for port in candidates:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return s.getsockname()[1]
    where = f" in {port_range[0]}-{port_range[1]} (--model-ports)" if port_range else ""
    raise ServingError(f"no free TCP port on 127.0.0.1{where}")


def tail(path: Path, lines: int = FAILURE_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if unreadable)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded before any fork: the child must not import or allocate much


def die_with_parent(parent_pid: int) -> None:
    """preexec_fn: SIGKILL this child when its parent (the node, the installer) dies
    (prctl(2), Linux): no llama-server outlives what started it."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the node died between fork and prctl
        os._exit(1)
